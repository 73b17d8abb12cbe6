"""The quantize stage: validate, pick the backend, run it into a temporary folder, record, rename."""

from __future__ import annotations

import importlib.metadata
import json
import resource
import shutil
import time
from pathlib import Path
from typing import Any

from .. import __version__
from .._io import atomic_outputs, folder_size, sha256_file, write_json
from .._hardware import compute_dtype, hardware_record
from .._progress import fmt_seconds, log
from .._methods import needs_calibration, resolve_settings
from ..config import Params
from ..errors import ConfigError, EnvironmentSetupError
from . import load_backend
from ._common import STAGE, QuantJob, linear_modules, load_samples, resolve_keep

_warned: set[str] = set()
VERSIONED = ("torch", "transformers", "llmcompressor", "compressed-tensors", "gptqmodel", "autoawq", "optimum",
             "accelerate")
CARRY_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
               "chat_template.jinja", "generation_config.json", "LICENSE", "LICENSE.txt", "NOTICE")


def versions() -> dict[str, str]:
    out = {"quantbuild": __version__}
    for dist in VERSIONED:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def _architecture_problem(backend: str, model_type: str) -> str | None:
    if backend == "gptqmodel":
        from gptqmodel.models.auto import MODEL_MAP

        known = MODEL_MAP
    elif backend == "autoawq":
        from awq.models.auto import AWQ_CAUSAL_LM_MODEL_MAP

        known = AWQ_CAUSAL_LM_MODEL_MAP
    else:
        return None  # llm-compressor infers layer mappings for any decoder
    return None if model_type in known else f"{backend} does not support architecture {model_type!r}"




def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux reports KiB


def _gpu_peak() -> dict[str, float]:
    """The GPU memory the stage's process held at its peak (torch's allocator), when it used a GPU."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    return {"gpu_peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "gpu_peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2)}


def _stored_dtype(model_config: dict[str, Any]) -> str:
    return str(model_config.get("torch_dtype") or model_config.get("dtype") or "auto")


def quantize_variant(params: Params, name: str, base_dir: str | Path, calib_path: str | Path,
                     out_model: str | Path, out_record: str | Path,
                     sensitivity_path: str | Path | None = None) -> dict[str, Any]:
    base_dir, calib_path = Path(base_dir), Path(calib_path)
    if name not in params.variants:
        raise ConfigError([f"variants.{name}: no such variant in params.yaml (variants: {', '.join(params.variants)})"])
    variant = params.variants[name]
    where = f"variants.{name}"
    settings = resolve_settings(variant)
    uses_calibration = needs_calibration(variant.method, settings)
    required = [(base_dir / "config.json", "dvc repro fetch")]
    if uses_calibration:
        required.append((calib_path, "dvc repro inputs"))
    for path, hint in required:
        if not path.is_file():
            raise EnvironmentSetupError(f"quantize@{name}: {path} is missing (run {hint} first)")
    backend = settings["backend"]
    run, spec = load_backend(variant.method, backend, where)
    if spec.deprecated and backend not in _warned:
        _warned.add(backend)
        log(STAGE, f"warning: {spec.deprecated}")
    model_config = json.loads((base_dir / "config.json").read_text())
    problem = _architecture_problem(backend, str(model_config.get("model_type")))
    if problem:
        raise ConfigError([f"{where}.backend: {problem} (try backend: llmcompressor)"])
    modules = linear_modules(base_dir)
    keep = resolve_keep(variant, modules, where)
    from .._formats import measured_bits_per_weight
    from ._common import safetensors_shapes

    base_shapes = safetensors_shapes(base_dir)
    extras: dict[str, Any] = {}
    if variant.method == "auto":  # the assignment is made (and refused) before any weights load
        from ._auto import assign_from_file

        extras["auto"] = assign_from_file(sensitivity_path, settings, base_shapes, keep, where)
        extras["assignment"] = extras["auto"]["assignment"]
    stored = _stored_dtype(model_config)
    compute, why = compute_dtype(stored if variant.compute_dtype == "auto" else variant.compute_dtype)
    if backend in ("gptqmodel", "autoawq"):  # they pick their own compute dtype and pack with fp16 scales
        compute, why = stored, f"{backend} computes in the checkpoint's dtype"
    extras.update(compute_dtype=compute, stored_dtype=stored)
    log(STAGE, f"{name}: computing in {compute} ({why}); weights saved as {stored}")
    samples = load_samples(calib_path, variant.n_samples) if uses_calibration else []
    if settings.get("batch_size") == "auto":
        from .._hardware import calibration_batch_size

        settings["batch_size"], batch_why = calibration_batch_size([len(s) for s in samples])
        if samples:
            log(STAGE, f"{name}: calibration batches of {settings['batch_size']} ({batch_why})")
    seed = params.calibration.seed
    start = time.monotonic()
    with atomic_outputs(out_model, out_record, field=f"quantize@{name} output") as (staging, record_tmp):
        staging.mkdir()
        job = QuantJob(name=name, variant=variant, settings=settings, model_dir=base_dir, out_dir=staging,
                       samples=samples, seed=seed, keep_modules=keep, linear_modules=modules,
                       model_config=model_config, trust_remote_code=params.base.trust_remote_code, extras=extras)
        run(job)
        for item in CARRY_FILES:  # what vLLM and users need beside the weights, when a backend skips it
            if (base_dir / item).is_file() and not (staging / item).exists():
                shutil.copy2(base_dir / item, staging / item)
        config = json.loads((staging / "config.json").read_text())
        if "quantization_config" not in config:
            raise EnvironmentSetupError(f"quantize@{name}: {backend} wrote no quantization_config; not a quantized model")
        seconds = time.monotonic() - start
        size, base_size = folder_size(staging), folder_size(base_dir)
        bits = measured_bits_per_weight(staging, base_shapes)
        calibration = ({"file": Path(calib_path).as_posix(), "sha256": sha256_file(calib_path),
                        "samples_used": len(samples), "seq_len": max(len(s) for s in samples), "seed": seed}
                       if samples else "no calibration (data-free method)")
        record = {
            "variant": name, "method": variant.method, "backend": backend, "settings": settings,
            "quantization_config": config["quantization_config"],
            "keep_modules": keep, "lm_head": "kept in the base dtype",
            "calibration": calibration,
            "compute_dtype": compute, "compute_dtype_reason": why, "weights_dtype": stored,
            "bits_per_weight": bits["bits_per_weight"], "linear_parameters": bits["linear_parameters"],
            "linear_stored_bytes": bits["linear_stored_bytes"],
            "module_formats": job.extras.get("module_formats"), "auto": job.extras.get("auto"),
            "hardware": hardware_record(),
            "base": {"path": Path(base_dir).as_posix(), "size_bytes": base_size,
                     "config_sha256": sha256_file(base_dir / "config.json")},
            "size_bytes": size, "size_ratio": round(size / base_size, 4),
            "seconds": round(seconds, 1), "phases_s": job.extras.get("phases_s"), "peak_rss_mb": _peak_rss_mb(), **_gpu_peak(),
            "distill": job.extras.get("distill"), "module_loss": job.extras.get("module_loss"), "recipe_file": job.extras.get("recipe_file"),
            "versions": versions(),
        }
        write_json(record_tmp, record)
    calib_note = "" if samples else ", no calibration"
    log(STAGE, f"{name}: {size / 1e6:.1f} MB ({record['size_ratio']:.2f}x the base, {bits['bits_per_weight']} bits "
        f"per weight) in {fmt_seconds(seconds)}, peak RSS {record['peak_rss_mb']:.0f} MB{calib_note}")
    return record
