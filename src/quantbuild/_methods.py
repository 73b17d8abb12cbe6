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
    "fp8": ((8,), ("llmcompressor",)),
    "int8": ((8,), ("llmcompressor",)),
}
GROUP_SIZES = (32, 64, 128, -1)
RESERVED_NAMES = ("base", "sensitivity", "selection", "calibration", "variants", "cards", "publish", "eval")
OBSERVERS = ("minmax", "mse", "imatrix_mse")
TRANSFORMS = ("awq", "spinquant")
COMPUTE_DTYPES = ("auto", "bfloat16", "float32")

DEFAULTS: dict[str, dict[str, Any]] = {
    "gptq": {"bits": 4, "group_size": 128, "sym": True, "desc_act": False, "damp_percent": 0.01, "batch_size": 1},
    "awq": {"bits": 4, "group_size": 128, "sym": False, "batch_size": 1},
    "fp8": {"bits": 8, "scheme": "dynamic", "kv_cache_dtype": "auto"},
    "int8": {"bits": 8, "scheme": "w8a8", "sym": True, "damp_percent": 0.01, "batch_size": 1,
             "smoothing_strength": 0.8},
    # SpinQuant rotations, then GPTQ W4 asym g64 with imatrix_mse, the most sensitive units at W8A8 (the
    # only 8-bit format vLLM CPU runs) within the budget: the best measured here (README "Measured here");
    # AWQ in place of the rotation costs ~30 min on 2 cores (transforms: [awq] on a GPU runner).
    "auto": {"bits": 4, "group_size": 64, "sym": False, "damp_percent": 0.01, "batch_size": 1,
             "observer": "imatrix_mse", "transforms": ["spinquant"],
             "candidates": ["w4a16-g64-asym", "w8a8"]},
}
LEVERS = ("observer", "transforms", "smoothing_strength", "smooth_down_proj", "formats", "max_bits_per_weight",
          "candidates", "max_predicted_kl")
