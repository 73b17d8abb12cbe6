"""llm-compressor adapter: GPTQ, AWQ, FP8 and INT8 (SmoothQuant + GPTQ) as compressed-tensors checkpoints."""

from __future__ import annotations

import re
from typing import Any

from .._progress import log
from ._common import STAGE, LayerProgress, QuantJob, decoder_layers, no_accelerator

_KV_FP8 = {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False, "symmetric": True}


def _allow_cpu_only() -> None:
    """llmcompressor 0.14's IntermediatesCache pins CPU tensors unconditionally (for faster host-to-GPU
    copies); without an accelerator `pin_memory()` raises "Cannot access accelerator device when none
    is available". Pinning is pointless with no GPU, so make it a no-op only in that case."""
    if not no_accelerator():
        return
    from llmcompressor.pipelines.cache import IntermediatesCache

    IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None


def _weight_scheme(bits: int, group_size: int, sym: bool) -> dict[str, Any]:
    strategy = "channel" if group_size == -1 else "group"
    args = {"num_bits": bits, "type": "int", "symmetric": sym, "strategy": strategy}
    if strategy == "group":
        args["group_size"] = group_size
    return args


def build_recipe(job: QuantJob) -> list[Any]:
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    method, s = job.variant.method, job.settings
    ignore = ["lm_head", *job.keep_modules]
    if method == "gptq":
        scheme = {"group_0": {"targets": ["Linear"], "weights": _weight_scheme(s["bits"], s["group_size"], s["sym"])}}
        if s["desc_act"]:
            scheme["group_0"]["weights"]["actorder"] = "group"
        return [GPTQModifier(config_groups=scheme, ignore=ignore, dampening_frac=s["damp_percent"])]
    if method == "awq":
        from llmcompressor.modifiers.transform.awq import AWQModifier

        scheme = {"group_0": {"targets": ["Linear"], "weights": _weight_scheme(s["bits"], s["group_size"], s["sym"])}}
        return [AWQModifier(), QuantizationModifier(config_groups=scheme, ignore=ignore)]
    if method == "fp8":
        kv = _KV_FP8 if s.get("kv_cache_dtype") == "fp8" else None
        preset = "FP8_DYNAMIC" if s["scheme"] == "dynamic" else "FP8"
        return [QuantizationModifier(targets="Linear", scheme=preset, ignore=ignore, kv_cache_scheme=kv)]
    if method == "int8":
        preset = "W8A8" if s["scheme"] == "w8a8" else "W8A16"
        recipe: list[Any] = []
        if s["scheme"] == "w8a8":
            from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier

            recipe.append(SmoothQuantModifier(smoothing_strength=s["smoothing_strength"]))
        recipe.append(GPTQModifier(targets="Linear", scheme=preset, ignore=ignore, dampening_frac=s["damp_percent"]))
        return recipe
    raise ValueError(method)


def needs_calibration(job: QuantJob) -> bool:
    s = job.settings
    return not (job.variant.method == "fp8" and s["scheme"] == "dynamic" and s.get("kv_cache_dtype") != "fp8")


class _LossLog:
    """Collects the per-module quantization error llmcompressor's GPTQ logs through loguru."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.current: str | None = None
        self.handle = None

    def __enter__(self) -> "_LossLog":
        from loguru import logger

        self.handle = logger.add(self._sink, level="DEBUG", format="{level} {message}")
        return self

    def _sink(self, message) -> None:
        text = str(message).strip()
        quantizing = re.search(r"Quantizing \d+ module\(s\): \['([^']+)'", text)
        if quantizing:
            self.current = quantizing.group(1)
        error = re.search(r"error ([0-9.eE+-]+)", text)
        if error and "METRIC" in text:
            self.rows.append({"module": self.current, "loss": float(error.group(1))})

    def __exit__(self, *exc: Any) -> None:
        from loguru import logger

        logger.remove(self.handle)


def run(job: QuantJob) -> None:
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _allow_cpu_only()
    torch.manual_seed(job.seed)
    model = AutoModelForCausalLM.from_pretrained(job.model_dir, dtype="auto")
    tokenizer = AutoTokenizer.from_pretrained(job.model_dir)
    recipe = build_recipe(job)
    kwargs: dict[str, Any] = {}
    if needs_calibration(job):
        seq_len = max(len(s) for s in job.samples)
        data = Dataset.from_dict({"input_ids": job.samples, "attention_mask": [[1] * len(s) for s in job.samples]})
        kwargs = {"dataset": data, "num_calibration_samples": len(job.samples), "max_seq_length": seq_len,
                  "batch_size": job.settings.get("batch_size", 1), "shuffle_calibration_samples": False}
        if torch.cuda.is_available():
            # Activations stay on the GPU between layers and the fp32 Hessians use TF32 tensor cores:
            # GPTQ of an 8B model, 512 x 2048 tokens, 3.94 min on one H100 instead of ~12
            # (benchmarks/gpu_gptq_8b.py). `activations_device: cpu` is the switch when memory runs out.
            device = job.variant.activations_device
            kwargs["sequential_offload_device"] = "cpu" if device == "cpu" else "cuda"
            torch.backends.cuda.matmul.allow_tf32 = True
    log(STAGE, f"{job.name}: llmcompressor {job.variant.method} on {len(job.samples) if kwargs else 0} samples")
    progress = LayerProgress(decoder_layers(model), job.name)
    try:
        with _LossLog() as losses:
            oneshot(model=model, recipe=recipe, **kwargs)
    finally:
        progress.close()
    model.save_pretrained(job.out_dir, save_compressed=True)
    tokenizer.save_pretrained(job.out_dir)
    job.extras["module_loss"] = [r for r in losses.rows if r["module"]] or None
    job.extras["recipe_file"] = "recipe.yaml"
