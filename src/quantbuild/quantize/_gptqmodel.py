"""gptqmodel adapter: GPTQ in the `gptq` checkpoint format (vLLM loads it with no flags)."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .._progress import log
from ._common import STAGE, LayerProgress, QuantJob, decoder_layers, no_accelerator


def _cpu_workers() -> None:
    """gptqmodel 7.6 sizes a 'model_loader:cpu' worker pool at 2 and fails on a 2-core machine ("requests
    2 workers but parent 'cpu' only has 1") unless GPTQMODEL_CPU_WORKERS says how many CPU workers
    exist. Only needed when there is no accelerator; must be set before gptqmodel is imported."""
    if no_accelerator():
        os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, os.cpu_count() or 2)))


def dynamic_rules(job: QuantJob) -> dict[str, dict[str, Any]] | None:
    """gptqmodel's per-module rules: '-:' skips a module (kept in bf16), '+:' overrides bits/group size."""
    rules: dict[str, dict[str, Any]] = {f"-:^{re.escape(m)}$": {} for m in job.keep_modules}
    for pattern, override in job.variant.overrides.items():
        rules[f"+:{pattern}"] = dict(override)
    return rules or None


@contextlib.contextmanager
def _outside_the_project() -> Iterator[None]:
    """gptqmodel 7.6 writes a log file under a hard-coded relative `logs/` folder. Run it from a
    temporary working directory so nothing lands in the user's DVC project (the per-module losses in
    that log are read from `model.quant_log` instead)."""
    previous = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="quantbuild-gptqmodel-") as scratch:
        os.chdir(scratch)
        try:
            yield
        finally:
            os.chdir(previous)


def _scrub_local_paths(folder: Path) -> None:
    """gptqmodel 7.6 writes its random temporary offload folder (offload_to_disk_path) into config.json and
    quantize_config.json: every run would give different bytes, and a builder's local path would be published.
    The value only matters while quantizing, so it is dropped from the saved files."""
    import json

    def scrub(obj):
        if isinstance(obj, dict):
            return {k: (None if k == "offload_to_disk_path" else scrub(v)) for k, v in obj.items()}
        if isinstance(obj, list):
            return [scrub(v) for v in obj]
        return obj

    for name in ("config.json", "quantize_config.json"):
        path = folder / name
        if path.is_file():
            data = json.loads(path.read_text())
            path.write_text(json.dumps(scrub(data), indent=2, sort_keys=True) + "\n")


def run(job: QuantJob) -> None:
    job.model_dir, job.out_dir = Path(job.model_dir).resolve(), Path(job.out_dir).resolve()
    with _outside_the_project():
        _run(job)


def _run(job: QuantJob) -> None:
    _cpu_workers()
    import torch
    from gptqmodel import GPTQModel, QuantizeConfig

    torch.manual_seed(job.seed)
    s = job.settings
    config = QuantizeConfig(bits=s["bits"], group_size=s["group_size"], desc_act=s["desc_act"], sym=s["sym"],
                            damp_percent=s["damp_percent"], dynamic=dynamic_rules(job))
    log(STAGE, f"{job.name}: gptqmodel GPTQ {s['bits']}-bit g{s['group_size']} on {len(job.samples)} samples")
    model = GPTQModel.load(str(job.model_dir), config, trust_remote_code=job.trust_remote_code)
    progress = LayerProgress(decoder_layers(model.model), job.name)
    try:
        model.quantize([{"input_ids": ids, "attention_mask": [1] * len(ids)} for ids in job.samples],
                       batch_size=s["batch_size"])
    finally:
        progress.close()
    model.save(str(job.out_dir))
    _scrub_local_paths(Path(job.out_dir))
    # gptqmodel also saves quant_log.csv, its per-module losses with wall times: the times differ on every
    # run, so the checkpoint would too. The losses are kept in quantize.json (module_loss, below).
    (Path(job.out_dir) / "quant_log.csv").unlink(missing_ok=True)
    job.extras["module_loss"] = [
        {"module": f"model.layers.{row['layer']}.{row['module']}", "loss": float(row["loss"]),
         "samples": int(row.get("samples") or 0)}
        for row in (getattr(model, "quant_log", None) or []) if "loss" in row and "layer" in row
    ] or None
    job.extras["recipe_file"] = "quantize_config.json"
