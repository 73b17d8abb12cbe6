"""The quantization methods, declared once: bits, backends, default settings and the quality levers.

config.py validates params against this table, the quantize stage resolves a variant's settings from it,
and `quantbuild check` sizes group sizes with it.
"""

from __future__ import annotations

from typing import Any

# method -> (allowed bits, allowed backends (first is the default))
METHODS: dict[str, tuple[tuple[int, ...], tuple[str, ...]]] = {
    "gptq": ((2, 3, 4, 8), ("gptqmodel", "llmcompressor")),
    "auto": ((4,), ("llmcompressor",)),   # per-module formats from the sensitivity stage under a bit budget
    "awq": ((4,), ("llmcompressor", "autoawq")),
    "autoround": ((4,), ("llmcompressor",)),  # AutoRound's tuned rounding and clipping (a GPU runner's method)
    "fp8": ((8,), ("llmcompressor",)),
    "int8": ((8,), ("llmcompressor",)),
}
GROUP_SIZES = (32, 64, 128, -1)
RESERVED_NAMES = ("base", "sensitivity", "selection", "calibration", "variants", "cards", "publish", "eval")
OBSERVERS = ("minmax", "mse", "imatrix_mse")
ROUNDINGS = ("gptq", "rtn")  # int8's weight rounding
TRANSFORMS = ("awq", "spinquant")
COMPUTE_DTYPES = ("auto", "bfloat16", "float32")

DEFAULTS: dict[str, dict[str, Any]] = {
    # batch_size "auto": the quantize stage picks it (_hardware.calibration_batch_size: 1 on a CPU, 32768 tokens a
    # batch on a GPU) and records the number it used.
    "gptq": {"bits": 4, "group_size": 128, "sym": True, "desc_act": False, "damp_percent": 0.01, "batch_size": "auto"},
    "awq": {"bits": 4, "group_size": 128, "sym": False, "batch_size": "auto"},
    # AutoRound (Intel, through llm-compressor's AutoRoundModifier): per layer, signed-gradient descent on the
    # rounding offsets and clipping ranges against the layer's bf16 output; its own defaults (200 steps, 8
    # samples a step). About 2 layer forwards and backwards per step: minutes on a GPU, hours on 2 CPU cores.
    "autoround": {"bits": 4, "group_size": 128, "sym": True, "batch_size": 8, "iters": 200},
    "fp8": {"bits": 8, "scheme": "dynamic", "kv_cache_dtype": "auto"},
    "int8": {"bits": 8, "scheme": "w8a8", "sym": True, "damp_percent": 0.01, "batch_size": "auto",
             "smoothing_strength": 0.8, "rounding": "gptq"},
    # SpinQuant rotations, then GPTQ W4 asym g64 with imatrix_mse, the most sensitive units at W8A8 (the
    # only 8-bit format vLLM CPU runs) within the budget: the best measured here (README "Measured here");
    # AWQ in place of the rotation costs ~30 min on 2 cores (transforms: [awq] on a GPU runner).
    "auto": {"bits": 4, "group_size": 64, "sym": False, "damp_percent": 0.01, "batch_size": "auto",
             "observer": "imatrix_mse", "transforms": ["spinquant"],
             "candidates": ["w4a16-g64-asym", "w8a8"]},
}
LEVERS = ("iters", "observer", "transforms", "smoothing_strength", "smooth_down_proj", "rounding", "formats",
          "max_bits_per_weight", "candidates", "max_predicted_kl", "distill_steps", "distill_lr")


def resolve_settings(variant: Any) -> dict[str, Any]:
    """The method's defaults with the variant's own values on top (what the record and card show)."""
    settings = dict(DEFAULTS[variant.method])
    for key in ("bits", "group_size", "sym", "desc_act", "damp_percent", "batch_size", "scheme", "kv_cache_dtype",
                *LEVERS):
        value = getattr(variant, key)
        if value is not None and value != {} and not (key == "smooth_down_proj" and not value):
            settings[key] = value
    if settings.get("rounding") == "rtn":
        del settings["damp_percent"]  # GPTQ's; round-to-nearest has no Hessian to dampen
    settings["backend"] = variant.resolved_backend
    return settings


def needs_calibration(method: str, settings: dict[str, Any]) -> bool:
    """FP8 dynamic (weights per channel, activations per token at run time, no FP8 KV cache) needs no data."""
    return not (method == "fp8" and settings.get("scheme") == "dynamic" and settings.get("kv_cache_dtype") != "fp8")


def needs_sensitivity(method: str) -> bool:
    """Only method auto reads the sensitivity record (its per-module formats come from it)."""
    return method == "auto"
