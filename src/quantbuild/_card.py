"""The card stage: a model card per variant from the records the earlier stages wrote.

Everything on the card is read from those records (fetch.json, stats.json, quantize.json, the evaluate
metrics and lm-eval results, dvc.lock), so a card never claims a number the pipeline did not measure.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._change import change_of
from ._gate import unsettled
from ._io import atomic_outputs
from ._progress import fmt_seconds, log
from .config import Params
from .errors import CardError

STAGE = "card"
METHOD_TITLES = {"gptq": "GPTQ", "awq": "AWQ", "autoround": "AutoRound", "fp8": "FP8", "int8": "INT8", "auto": "Mixed precision (auto)"}
# Figures that are re-measured on every run (speed, timings) or set by policy rather than by the weights
# (gate thresholds, the recommendation) sit between these markers; publish compares a release without them,
# so a re-measured throughput or a tuned threshold never forces a new version.
VOLATILE_START, VOLATILE_END = "<!-- quantbuild:volatile -->", "<!-- /quantbuild:volatile -->"
# lm-eval tasks we know the dataset of, for the card's model-index (others use the task name).
TASK_DATASETS = {"gsm8k_local": ("openai/gsm8k", "GSM8K", "test"), "gsm8k": ("openai/gsm8k", "GSM8K", "test")}
METRIC_LABELS = {"top1_agreement": "top-1 agreement with the base (held-out text)"}
SOURCE_DIRS = ("src", "stages", "envs", "modelcards", "dvc.yaml", "params.yaml", "pyproject.toml")


@dataclass
class CardInputs:
    """Where the card's facts come from; the defaults are the pipeline's layout in dvc.yaml."""

    variant: str
    root: Path = Path(".")

    def path(self, rel: str) -> Path:
        return self.root / rel.format(v=self.variant)

    def json(self, rel: str, *, required: bool = True) -> Any:
        path = self.path(rel)
        if not path.is_file():
            if required:
                raise CardError(f"card@{self.variant}: {path} is missing (run `dvc repro evaluate@{self.variant}` first)")
            return None
        return json.loads(path.read_text())


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _size(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:.2f} GB" if n_bytes >= 1e9 else f"{n_bytes / 1e6:.1f} MB"


def _seconds(seconds: float | None) -> str:
    return "n/a" if seconds is None else fmt_seconds(seconds)


def strip_credentials(url: str) -> str:
    """A remote URL without user:password@ (CI remotes often carry a token there)."""
    return re.sub(r"^(\w+://)[^/@]+@", r"\1", url)


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def base_repo_name(params: Params, fetch: dict[str, Any]) -> str:
    """The base model's short name, for repo names: Hub id's name, else the GGUF or folder stem."""
    if params.card.base_model:
        return params.card.base_model.split("/")[-1]
    if fetch.get("repo_id"):
        return fetch["repo_id"].split("/")[-1]
    if fetch.get("gguf"):  # SmolLM2-135M-Instruct.Q4_1.gguf -> SmolLM2-135M-Instruct
        return re.sub(r"[.-](?:[QqFf]\d\w*|BF16|bf16|IQ\w+)$", "", Path(fetch["gguf"]["file"]).stem)
    return Path(str(fetch.get("source", "model")).removeprefix("file://")).name or "model"


def base_model_id(params: Params, fetch: dict[str, Any]) -> str | None:
    return params.card.base_model or fetch.get("repo_id")


def repo_target(params: Params, name: str, fetch: dict[str, Any]) -> tuple[str, str, str | None]:
    """(repo_id, branch, tag) of a variant's release under publish's layout."""
    cfg = params.publish
    base = base_repo_name(params, fetch)
    namespace = cfg.namespace or "YOUR_NAMESPACE"
    if cfg.layout == "branch-per-variant":
        return f"{namespace}/{cfg.repo_template.format(base=base, variant='').rstrip('-_.')}", name, f"{name}-{cfg.version}"
    return f"{namespace}/{cfg.repo_template.format(base=base, variant=name)}", "main", cfg.version


def _method(record: dict[str, Any]) -> dict[str, Any]:
    s = record["settings"]
    bits = s.get("bits")
    title = METHOD_TITLES.get(record["method"], record["method"].upper())
    if record["method"] in ("gptq", "awq", "autoround"):
        title += f" W{bits}A16" + (f", group size {s['group_size']}" if s.get("group_size", -1) > 0 else ", per-channel")
        title += "" if s.get("sym", True) else ", asymmetric"
    elif record["method"] == "auto":
        title += f" at {record.get('bits_per_weight')} bits per weight"
    elif record["method"] == "fp8":
        title += f" ({s.get('scheme')} activations)"
    elif record["method"] == "int8":
        rounding = "round to nearest" if s.get("rounding") == "rtn" else "GPTQ"
        title += f" W8A8 (SmoothQuant + {rounding})" if s.get("scheme") == "w8a8" else f" {s.get('scheme')} ({rounding})"
    labels = {"bits": "Bits", "group_size": "Group size", "sym": "Symmetric", "damp_percent": "Damping",
              "iters": "AutoRound steps per layer",
              "desc_act": "Act-order (desc_act)", "batch_size": "Calibration batch size", "scheme": "Scheme",
              "kv_cache_dtype": "KV cache dtype", "observer": "Observer (range search)", "transforms": "Transforms",
              "smoothing_strength": "SmoothQuant strength", "smooth_down_proj": "SmoothQuant up_proj -> down_proj",
              "rounding": "Weight rounding",
              "max_bits_per_weight": "Bits-per-weight budget",
              "distill_steps": "Distillation steps after GPTQ (group scales and norms tuned towards the base's "
                               "next-token distributions on the calibration samples)",
              "distill_lr": "Distillation rate"}
    settings = [(label, _fmt(s[key])) for key, label in labels.items() if key in s]
    kept = ", ".join(f"`{m}`" for m in record.get("keep_modules") or []) or "none"
    formats = record.get("module_formats") or {}
    counts: dict[str, int] = {}
    for fmt in formats.values():
        counts[fmt] = counts.get(fmt, 0) + 1
    return {"title": title, "backend": record["backend"], "settings": settings,
            "bits_per_weight": record.get("bits_per_weight"),
            "formats": ", ".join(f"{fmt} × {n}" for fmt, n in sorted(counts.items())) if len(counts) > 1 else None,
            "compute_dtype": f"{record.get('compute_dtype', 'n/a')} ({record.get('compute_dtype_reason', '')}); "
                             f"weights saved as {record.get('weights_dtype', 'n/a')}",
            "backend_version": (record.get("versions") or {}).get(record["backend"]),
            "kept": f"{kept}; `lm_head` {record.get('lm_head', 'kept in the base dtype')}",
            "seconds": _seconds(record.get("seconds")),
            "peak_rss": f"{record['peak_rss_mb']:.0f} MB" if record.get("peak_rss_mb") else "n/a"}


def _sensitivity(sens: dict | None, record: dict) -> dict[str, Any] | None:
    """The per-layer story: which modules quantization hurts most (and, for auto, which got more bits)."""
    if not sens:
        return None
    ref = sens["reference_format"]
    units = sens["units"]
    worst = sorted(units, key=lambda u: -units[u]["score"][ref])[:6]
    auto = record.get("auto") or {}
    upgraded = auto.get("upgraded_units") or {}
    from ._formats import unit_of

    kept = {unit_of(m) for m in record.get("keep_modules") or []}  # left in the base dtype by `keep:`
    return {"reference": ref, "tokens": sens.get("tokens"), "spearman": sens.get("proxy_vs_layer_kl_spearman"),
            "worst": [{"unit": u, "score": f"{units[u]['score'][ref]:.3g}",
                       "format": "bf16 (kept)" if u in kept else upgraded.get(u, "")} for u in worst],
            "auto": {"budget": auto.get("budget"), "bits": auto.get("bits_per_weight"),
                     "predicted": auto.get("predicted_kl"), "all_cheapest": auto.get("predicted_kl_all_cheapest"),
                     "upgraded": [f"`{u}` → {f}" for u, f in upgraded.items()]} if auto else None}


def _evaluation(base: dict, metrics: dict, gate: dict | None) -> list[dict[str, str]]:
    thresholds = (gate or {}).get("thresholds", {})
    recoveries = (gate or {}).get("recoveries", {})
    rows = []
    for key in sorted(k for k in metrics if k.startswith("quality.")):
        metric = key[len("quality."):]
        row = recoveries.get(metric, {})
        rows.append({"metric": metric, "base": _fmt(row.get("base", base.get(key))), "value": _fmt(metrics[key]),
                     "change": _change(metrics, metric), "recovery": _fmt(row.get("recovery"), 4),
                     "gate": f"≥ {thresholds[metric]}" if metric in thresholds else "not gated"})
    rows.append({"metric": METRIC_LABELS["top1_agreement"], "base": "1", "value": _fmt(metrics.get("closeness.top1_agreement"), 3),
                 "change": "", "recovery": _fmt(recoveries.get("top1_agreement", {}).get("recovery"), 3),
                 "gate": f"≥ {thresholds['top1_agreement']}" if "top1_agreement" in thresholds else "not gated"})
    rows.append({"metric": "mean KL divergence from the base (nats/token)", "base": "0",
                 "value": _fmt(metrics.get("closeness.kl_mean"), 3), "change": "", "recovery": "", "gate": ""})
    return rows


def _change(metrics: dict, metric: str) -> str:
    """'+1.44 % (+0.61 to +2.28)': the evaluate stage's change against the base and its 95 % interval."""
    change = change_of(metrics, metric)
    if change is None:
        return ""
    interval = change.interval
    return f"{change.pct:+.2f} %" + (f" ({interval[0]:+.2f} to {interval[1]:+.2f})" if interval else "")


def _unsettled(gate: dict | None) -> list[str]:
    """The gated verdicts whose 95 % interval spans the limit (_gate.resolution)."""
    return [f"`{row['metric']}` {'passes' if row['passed'] else 'fails'} at {row['change_pct']:+.2f} % against "
            f"+{row['limit_pct']:.2f} %, interval {row['ci95_pct'][0]:+.2f} to {row['ci95_pct'][1]:+.2f} %"
            for row in unsettled(gate)]


def _summary(metrics: dict, gate: dict | None) -> str:
    parts = []
    for metric in ((gate or {}).get("thresholds") or {}):
        value = ((gate or {}).get("recoveries") or {}).get(metric, {}).get("recovery")
        if value is not None:
            label = "top-1 agreement" if metric == "top1_agreement" else f"{metric} recovery"
            parts.append(f"{label} {value:.1%}")
    size = metrics.get("size.ratio_to_base")
    tail = f"at {size:.2f}× the base model's size on disk" if size else ""
    verdict = "Quality gate passed" if (gate or {}).get("passed") else "Quality gate FAILED"
    return f"{verdict}: {', '.join(parts) or 'no gated metrics'}" + (f", {tail}." if tail else ".")


def _performance(base_eval: dict | None, eval_raw: dict) -> dict[str, Any]:
    q = eval_raw.get("quantbuild", {})
    rows, base_rows = q.get("throughput") or [], {r["concurrency"]: r for r in ((base_eval or {}).get("quantbuild", {}).get("throughput") or [])}
    out_rows = []
    for row in rows:
        b = base_rows.get(row["concurrency"], {})
        tps, base_tps = row.get("output_tokens_per_s"), b.get("output_tokens_per_s")
        speedup = f"{tps / base_tps:.2f}×" if tps and base_tps else "n/a"
        out_rows.append({"concurrency": row["concurrency"], "tps": _fmt(tps), "ttft": _fmt(row.get("batch_ttft_s"), 3),
                         "base_tps": _fmt(base_tps), "base_ttft": _fmt(b.get("batch_ttft_s"), 3), "speedup": speedup})
    hw = q.get("hardware", {})
    isa = ", ".join(f for f in hw.get("cpu_isa", []) if f.startswith(("avx512_bf16", "amx", "avx512f", "avx2")))
    hardware = (f"{hw['gpus']} × {hw['gpu']}" if hw.get("gpu") else
                f"{hw.get('cpus', '?')} cores of {hw.get('cpu', hw.get('machine', '?'))} ({isa or 'no AVX2'})")
    versions = q.get("versions", {})
    first = rows[0] if rows else {}
    return {"rows": out_rows, "hardware": hardware, "vllm_version": versions.get("vllm", "n/a"),
            "dtype": q.get("dtype") or q.get("engine_args", {}).get("dtype", "n/a"),
            "fallback": q.get("fallback"), "prompt_tokens": first.get("prompt_tokens"),
            "output_tokens": first.get("output_tokens")}


def _memory(base_config: dict, record: dict, fetch: dict) -> dict[str, Any]:
    from .evaluate.planner import plan

    out: dict[str, Any] = {"base_disk": _size(record["base"]["size_bytes"]), "disk": _size(record["size_bytes"]),
                           "disk_ratio": f"{record['size_ratio']:.2f}×", "plan": None}
    bits, method = record["settings"].get("bits"), record["method"]
    precision = {4: "w4 (g128)", 8: "int8" if method in ("int8", "gptq") else "fp8"}.get(bits)
    if method == "auto":
        precision = "w4 (g128)"
    if precision is None:
        return out
    context = min(int(fetch.get("max_position_embeddings") or 4096), 8192)
    _, rows = plan(base_config, context=context, batch=1, gpu_memory_gb=80.0)
    by = {r.precision: r for r in rows}
    b, v = by["bf16"], by[precision]
    out["plan"] = {"base_weights": f"{b.weights_gb:.2f} GB", "weights": f"{v.weights_gb:.2f} GB",
                   "ratio": f"{v.weights_gb / b.weights_gb:.2f}×" if b.weights_gb else "n/a", "gpu_gb": 80,
                   "context": context, "batch": 1, "base_gpus": b.gpus or "more than 64", "gpus": v.gpus or "more than 64",
                   "note": f"{precision} weights with bf16 embeddings, bf16 KV cache, vLLM's activations, CUDA "
                           "context and graphs per GPU, GPUs used to 90%, a tensor-parallel size that divides "
                           "the attention heads"}
    return out


def _deployment(record: dict) -> dict[str, Any]:
    flags, kwargs = [], []
    if record["settings"].get("kv_cache_dtype") == "fp8":
        flags.append("--kv-cache-dtype fp8")
        kwargs.append(("kv_cache_dtype", '"fp8"'))
    return {"flags": " ".join(flags), "python_kwargs": kwargs}


def _dvc_hashes(root: Path, name: str) -> list[tuple[str, str]]:
    lock = root / "dvc.lock"
    if not lock.is_file():
        return []
    import yaml

    stage = (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).get(f"quantize@{name}", {})
    return [(o["path"], o.get("md5", "?")) for o in stage.get("outs", [])]


def _reproduction(params: Params, inp: CardInputs, fetch: dict, record: dict, eval_versions: dict) -> dict[str, Any]:
    root = inp.root
    commit = _git(root, "rev-parse", "HEAD") or "unknown"
    dirty = bool(_git(root, "status", "--porcelain", "--", *SOURCE_DIRS))
    remote = params.card.source_url or _git(root, "remote", "get-url", "origin")
    source = strip_credentials(remote) if remote else "this pipeline's repository"
    versions = {**(record.get("versions") or {}), **{f"{k} (evaluate)": v for k, v in eval_versions.items()
                                                       if k in ("vllm", "lm-eval", "transformers", "torch")}}
    base_revision = fetch.get("resolved_revision") or (fetch.get("gguf") or {}).get("sha256")
    return {"source": source, "clone_url": source if remote else "<repository>",
            "clone_dir": Path(source).stem if remote else "<folder>", "git_commit": commit, "git_dirty": dirty,
            "base_source": fetch.get("source"), "base_revision": base_revision,
            "dvc_hashes": _dvc_hashes(root, inp.variant),
            "versions": ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))}


def card_data(params: Params, name: str, fetch: dict, record: dict, metrics: dict, heldout_sources: str):
    from huggingface_hub import EvalResult, ModelCardData

    fmt = record.get("quantization_config", {}).get("quant_method", record["method"])
    bits = record["settings"].get("bits")
    tags = ["quantized", record["method"], f"{bits}-bit" if bits else None, fmt, "vllm", *params.card.tags]
    license_ = params.card.license or fetch.get("license")
    meta = fetch.get("card_metadata") or {}
    results = []
    for key in sorted(k for k in metrics if k.startswith("quality.") and metrics[k] is not None):
        task, metric = key[len("quality."):].split(".", 1)
        dataset_type, dataset_name, split = TASK_DATASETS.get(task, (task, task, None))
        if task == "heldout_perplexity":  # calibrate's held-out split of the calibration sources
            dataset_type, dataset_name, split = "heldout", f"held-out text ({heldout_sources})", "heldout"
        elif task == "ppl":  # token perplexity over fixed windows of one held-out domain
            domain, metric = metric.split(".", 1)
            task, dataset_type, dataset_name, split = "token_perplexity", f"heldout-{domain}", f"held-out {domain}", "heldout"
        results.append(EvalResult(task_type="text-generation", dataset_type=dataset_type, dataset_name=dataset_name,
                                  dataset_split=split, task_name=task, metric_type=metric, metric_name=metric,
                                  metric_value=metrics[key]))
    base_id = base_model_id(params, fetch)
    return ModelCardData(
        base_model=base_id, base_model_relation="quantized" if base_id else None, license=license_,
        license_name=params.card.license_name or meta.get("license_name"),
        license_link=params.card.license_link or meta.get("license_link"),
        language=params.card.language or None, library_name="transformers", pipeline_tag="text-generation",
        tags=[t for t in dict.fromkeys(tags) if t], model_name=repo_target(params, name, fetch)[0].split("/")[-1],
        eval_results=results or None)


def render_card(params: Params, name: str, root: Path = Path(".")):
    """The ModelCard for one variant, rendered from the project's records (not written)."""
    from huggingface_hub import ModelCard

    inp = CardInputs(name, root)
    fetch = inp.json("build/base/fetch.json")
    base_config = inp.json("build/base/model/config.json")
    stats = inp.json("build/calibration/stats.json")
    record = inp.json("build/variants/{v}/quantize.json")
    metrics = inp.json("build/eval/{v}/metrics.json")
    base_metrics = inp.json("build/eval/base/metrics.json")
    eval_raw = inp.json("build/eval/{v}/results/lm_eval.json")
    base_raw = inp.json("build/eval/base/results/lm_eval.json", required=False)
    gate = inp.json("build/gate/{v}/gate.json", required=False)
    sens = inp.json("build/sensitivity/sensitivity.json", required=False)
    selection = inp.json("build/selection/selection.json", required=False)
    q = eval_raw.get("quantbuild", {})
    eval_versions = q.get("versions", {})
    repo_id, _, tag = repo_target(params, name, fetch)
    base_id = base_model_id(params, fetch)
    sources = ", ".join(s.get("uri", "?") for s in stats.get("sources") or [] if not s.get("heldout_only")) or "n/a"
    scored_only = [s.get("uri", "?") for s in stats.get("sources") or [] if s.get("heldout_only")]
    if scored_only:
        sources += f" (held-out scoring also on {', '.join(scored_only)}, never calibrated on)"
    context = {
        "repo_id": repo_id, "repo_name": repo_id.split("/")[-1], "variant": name,
        "version": tag,  # the revision consumers pin: v1.2.3, or <variant>-v1.2.3 in one repo with branches
        "base": {"display": base_id or base_repo_name(params, fetch), "display_short": "Base",
                 "url": f"https://huggingface.co/{base_id}" if base_id else None},
        "summary": _summary(metrics, gate),
        "gate": {"evaluated": gate is not None, "passed": bool((gate or {}).get("passed")),
                 "policy": (gate or {}).get("policy"),
                 "failures": [f"{f['metric']} {f.get('recovery') if f.get('recovery') is not None else f.get('reason', 'n/a')}"
                              f" (gate {f['minimum']})" for f in (gate or {}).get("failures", [])],
                 "provenance": (gate or {}).get("provenance") or {}},
        "selection": {"recommended": (selection or {}).get("recommended"), "reason": (selection or {}).get("reason"),
                      "is_this": (selection or {}).get("recommended") == name} if selection else None,
        "volatile": {"start": VOLATILE_START, "end": VOLATILE_END},
        "method": _method(record),
        "calibration": ({"sources": sources, "samples": record["calibration"]["samples_used"],
                         "seq_len": record["calibration"]["seq_len"], "sha256": record["calibration"]["sha256"],
                         "chat_template": stats.get("chat_template"), "used": True}
                        if isinstance(record.get("calibration"), dict) else
                        {"used": False, "note": "no calibration (data-free method)", "sha256": "none"}),
        "sensitivity": _sensitivity(sens, record),
        "deployment": _deployment(record),
        "memory": _memory(base_config, record, fetch),
        "evaluation": {"rows": _evaluation(base_metrics, metrics, gate), "unsettled": _unsettled(gate), "engine": q.get("engine", "?"),
                       "lm_eval_version": eval_versions.get("lm-eval", "?"), "commands": q.get("commands", [])},
        "performance": _performance(base_raw, eval_raw),
        "repro": _reproduction(params, inp, fetch, record, eval_versions),
    }
    template = Path(params.card.template)
    template = template if template.is_absolute() else root / template
    if not template.is_file():
        raise CardError(f"card.template: {template} does not exist (the default is modelcards/quantized_model.md.j2)")
    data = card_data(params, name, fetch, record, metrics, sources)
    return ModelCard(render_template(template, data.to_yaml(), context))


def render_template(template: Path, card_yaml: str, context: dict[str, Any]) -> str:
    """A template is user input: it renders in Jinja's sandbox (no access to Python internals such as
    `''.__class__.__mro__`), with the variables huggingface_hub's ModelCard.from_template would pass."""
    from jinja2.sandbox import SandboxedEnvironment

    try:
        text = template.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CardError(f"card.template: {template} cannot be read as UTF-8 text ({type(exc).__name__})") from None
    try:
        return SandboxedEnvironment().from_string(text).render(card_data=card_yaml, **context)
    except Exception as exc:  # jinja2 errors name the template line; SecurityError names the refused access
        first = (str(exc).splitlines() or [""])[0][:160]
        raise CardError(f"card.template: {template} failed to render ({type(exc).__name__}: {first})") from None


def validate_card_text(text: str, where: str) -> dict[str, Any]:
    """Local checks, the same the Hub's validate-yaml makes, plus ours: a quantized card names its base."""
    from huggingface_hub import ModelCard

    from ._cardcheck import front_matter, validate_card

    errors = validate_card(text)
    meta, _ = front_matter(text)
    meta = meta or {}
    if meta.get("base_model_relation") == "quantized" and not meta.get("base_model"):
        errors.append('"base_model_relation: quantized" needs "base_model"')
    if not meta.get("license"):
        errors.append('"license" is missing: set card.license (the base model\'s card did not name one)')
    if errors:
        raise CardError(f"{where}: the card's metadata is invalid: {'; '.join(errors)}")
    ModelCard(text)  # huggingface_hub's own parser must read it back
    return meta


def write_card(params: Params, name: str, out_path: Path, root: Path = Path(".")) -> dict[str, Any]:
    card = render_card(params, name, root)
    text = str(card)
    meta = validate_card_text(text, f"card@{name}")
    with atomic_outputs(out_path, field=f"card@{name} output") as (tmp,):
        tmp.write_text(text if text.endswith("\n") else text + "\n")
    log(STAGE, f"{name}: {out_path} ({len(text.splitlines())} lines; {', '.join(meta.get('tags', []))})")
    return meta
