"""autoawq adapter (legacy, deprecated upstream): AWQ GEMM checkpoints."""

from __future__ import annotations

import json
import re

from .._progress import log
from ..errors import ConfigError
from ._common import STAGE, LayerProgress, QuantJob, decoder_layers


def _module_kinds(job: QuantJob) -> list[str]:
    """autoawq skips modules by name inside each layer: a kept kind must be kept in every layer."""
    kinds = sorted({re.sub(r"^.*\blayers\.\d+\.", "", m) for m in job.keep_modules})
    for kind in kinds:
        everywhere = [m for m in job.linear_modules if m.endswith("." + kind)]
        if not set(everywhere) <= set(job.keep_modules):
            raise ConfigError([f"{job.where}.keep: autoawq can keep a module kind only in every layer "
                               f"({kind}); use backend: llmcompressor to keep single layers"])
    return kinds


def run(job: QuantJob) -> None:
    import torch
    from awq import AutoAWQForCausalLM
    from transformers import AutoTokenizer

    s = job.settings
    quant_config = {"zero_point": not s["sym"], "q_group_size": s["group_size"], "w_bit": s["bits"],
                    "version": "GEMM", "modules_to_not_convert": _module_kinds(job) or None}
    torch.manual_seed(job.seed)
    tokenizer = AutoTokenizer.from_pretrained(job.model_dir, trust_remote_code=job.trust_remote_code)
    model = AutoAWQForCausalLM.from_pretrained(str(job.model_dir), trust_remote_code=job.trust_remote_code)
    log(STAGE, f"{job.name}: autoawq AWQ {s['bits']}-bit g{s['group_size']} on {len(job.samples)} samples")
    progress = LayerProgress(decoder_layers(model.model), job.name)
    seq_len = max(len(x) for x in job.samples)
    try:
        # autoawq drops samples longer than max_calib_seq_len, so pass the exact length.
        model.quantize(tokenizer, quant_config=quant_config, calib_data=job.samples,
                       max_calib_samples=len(job.samples), max_calib_seq_len=seq_len, n_parallel_calib_samples=None)
    finally:
        progress.close()
    model.save_quantized(str(job.out_dir))
    tokenizer.save_pretrained(job.out_dir)
    (job.out_dir / "quant_config.json").write_text(json.dumps(quant_config, indent=2, sort_keys=True) + "\n")
    job.extras["recipe_file"] = "quant_config.json"
