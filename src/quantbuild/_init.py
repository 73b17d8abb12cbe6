"""`quantbuild init`: scaffold a working pipeline into an existing git repository.

The project's files are package data under `templates/project/`: the top-level `*.j2` files are rendered
with what init learns about the model (dvc.yaml, params.yaml, the README section); every other file is
copied as it is (the model card template is itself Jinja, rendered later by the card stage). Names that
start with a dot are stored as `dot-<name>` (package data tools skip hidden files). Nothing is written
until every check has passed; an existing file is never replaced without `--force`; `--diff` only shows
what would change.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from . import __version__
from ._methods import METHODS
from .config import REPO_ID_RE as _REPO_ID
from .errors import ConfigError, SourceError

TEMPLATES = Path(__file__).resolve().parent / "templates" / "project"
README_BEGIN = "<!-- quantbuild:begin (written by quantbuild init; edits here are replaced) -->"
README_END = "<!-- quantbuild:end -->"
EXECUTABLE = ("envs/setup", "envs/lock", ".ci/")
# Architectures whose module names the recipes target (q/k/v/o_proj, gate/up/down_proj): SpinQuant's
# rotations, AWQ's and SmoothQuant's mappings, the fused units vLLM builds.
LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3")
DEFAULT_METHODS = ("gptq", "auto", "fp8", "int8")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")


@dataclass
class ModelInfo:
    source: str
    revision: str | None
    config: dict[str, Any]
    name: str                     # display name, e.g. SmolLM2-135M-Instruct
    card_base_model: str | None   # the Hub id the card links as the base
    notes: list[str] = field(default_factory=list)


# --- the model -------------------------------------------------------------------------------------------

_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def _gguf_value(f: BinaryIO, kind: int) -> Any:
    if kind in _GGUF_SCALARS:
        fmt = _GGUF_SCALARS[kind]
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]
    if kind == 8:
        (n,) = struct.unpack("<Q", f.read(8))
        return f.read(n).decode("utf-8", "replace")
    if kind == 9:
        (item, n) = struct.unpack("<IQ", f.read(12))
        if item == 8:  # long string arrays (the vocabulary): keep only their length
            for _ in range(n):
                (m,) = struct.unpack("<Q", f.read(8))
                f.seek(m, 1)
            return n
        return [_gguf_value(f, item) for _ in range(n)]
    raise SourceError(f"GGUF: unknown metadata type {kind}")


def gguf_metadata(path: Path) -> dict[str, Any]:
    """The key-value header of a GGUF file (v2/v3), read without the gguf package."""
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise SourceError(f"--model: {path.name} is not a GGUF file")
        (version,) = struct.unpack("<I", f.read(4))
        if version < 2:
            raise SourceError(f"--model: GGUF version {version} is too old (2 or 3 expected)")
        _tensors, count = struct.unpack("<QQ", f.read(16))
        meta = {}
        for _ in range(count):
            (n,) = struct.unpack("<Q", f.read(8))
            key = f.read(n).decode("utf-8", "replace")
            (kind,) = struct.unpack("<I", f.read(4))
            meta[key] = _gguf_value(f, kind)
    return meta


def _config_from_gguf(meta: dict[str, Any]) -> dict[str, Any]:
    arch = str(meta.get("general.architecture", ""))
    get = lambda key: meta.get(f"{arch}.{key}")  # noqa: E731
    hidden, heads = get("embedding_length"), get("attention.head_count")
    if not hidden or not heads:
        raise SourceError(f"--model: the GGUF file describes no {arch or 'known'} transformer shape")
    return {"model_type": arch, "hidden_size": hidden, "intermediate_size": get("feed_forward_length"),
            "num_hidden_layers": get("block_count"), "num_attention_heads": heads,
            "num_key_value_heads": get("attention.head_count_kv") or heads,
            "max_position_embeddings": get("context_length"), "vocab_size": meta.get("tokenizer.ggml.tokens"),
            "tie_word_embeddings": True}


def probe_model(source: str, revision: str | None) -> ModelInfo:
    """The model's config.json (or a GGUF file's equivalent), read before anything is written."""
    if source.startswith("hf://"):
        repo = source[len("hf://"):]
        if not _REPO_ID.match(repo):
            raise ConfigError([f"--model: {repo!r} is not a Hub repo id (org/name)"])
        if not revision:
            raise ConfigError(["--revision: required for hf:// models (a 40-hex commit sha, a tag or a branch)"])
        if not _REVISION.match(revision) or ".." in revision:
            raise ConfigError([f"--revision: {revision!r} is not a git revision"])
        from huggingface_hub import HfApi, hf_hub_download

        from ._fetch import _hub_error

        try:  # one request each, no retries: init is interactive and says at once when the Hub is not there
            sha = HfApi().model_info(repo, revision=revision).sha
            path = hf_hub_download(repo, "config.json", revision=sha)
        except Exception as exc:  # every client error becomes one line naming the flag
            raise _hub_error(exc, repo, revision, "--model", "--revision") from None
        config = json.loads(Path(path).read_text())
        # params pin the commit the name resolved to: what the pipeline fetches is what init sized
        return ModelInfo(source, sha, config, repo.split("/")[1], repo)
    if revision:
        raise ConfigError(["--revision: only hf:// models have revisions (remove it)"])
    if source.startswith("pkg://"):
        from ._fetch import resolve_package_file

        path, _ = resolve_package_file(source)
    else:
        path = Path(source.removeprefix("file://")).expanduser()
        if not path.exists():
            raise SourceError(f"--model: {source} does not exist (give hf://org/name, a folder, a .gguf file "
                              "or pkg://package/file)")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SourceError(f"--model: {path.name}/ has no config.json")
        return ModelInfo(source, None, json.loads((path / "config.json").read_text()), path.name, None)
    if path.suffix == ".gguf":
        meta = gguf_metadata(path)
        name = re.sub(r"\.(Q\d\w*|F16|F32|BF16)$", "", path.stem, flags=re.I)
        return ModelInfo(source, None, _config_from_gguf(meta), name, None)
    raise SourceError(f"--model: {path.name} is neither a model folder nor a .gguf file")


# --- the params ------------------------------------------------------------------------------------------

def _group_size(config: dict[str, Any]) -> tuple[int, str]:
    from ._model_shapes import linear_in_features

    widths = sorted(set(linear_in_features(config).values()))
    for group in (128, 64, 32):
        if all(w % group == 0 for w in widths):
            why = "" if group == 128 else f"   # {', '.join(map(str, widths))} (input widths): 128 does not divide them all"
            return group, why
    raise ConfigError([f"--model: no group size of 128, 64 or 32 divides the model's input widths "
                       f"({', '.join(map(str, widths))}); quantbuild's 4-bit formats cannot be used"])


# GPTQ's Hessian dampening: 0.1 of the mean diagonal instead of the libraries' 0.01 generalizes better to
# text unlike the calibration set (the demo's pydoc domain: +19.0 % -> +15.9 %, benchmarks/quality_trials.py).
DAMP = "    damp_percent: 0.1       # Hessian dampening: generalizes better to unseen domains than 0.01\n"


# After GPTQ, the group scales and norms distilled towards the base (quantize/_distill.py; README "Measured here").
DISTILL = ("    # Then the group scales and norms tuned towards the base's next-token distributions, one calibration\n"
           "    # sample a step (~3 s a step on 2 cores): on the demo -3 to -5 points on every held-out text, same bits.\n")


def _variant_blocks(methods: list[str], group: int, why: str, layers: int) -> list[dict[str, Any]]:
    blocks = []
    last = layers - 1
    for method in methods:
        if method == "gptq":
            name = f"gptq-w4g{group}"
            text = (f"  # SpinQuant rotations, then GPTQ W4 asymmetric g{group} with the importance-weighted MSE range\n"
                    f"  # search (llm-compressor): the best fixed recipe measured on quantbuild's demo (its README).\n"
                    f"  {name}:\n    method: gptq\n    backend: llmcompressor\n    bits: 4\n"
                    f"    group_size: {group}{why}\n    sym: false\n    observer: imatrix_mse\n"
                    f"    transforms: [spinquant]\n{DAMP}"
                    "    n_samples: 64           # 128: +6.44 % on the worst text against +6.70 %, 2m20s more on 2 cores\n"
                    f"{DISTILL}    distill_steps: 64\n")
            desc = (f"SpinQuant rotation + GPTQ W4A16 asymmetric, group size {group}, imatrix MSE observer, dampening 0.1, "
                    "then 64 distillation steps (llmcompressor)")
            labels = ["quantized", "gptq", "w4a16"]
        elif method == "awq":
            name = f"awq-w4g{group}"
            text = (f"  # AWQ smoothing, then round-to-nearest W4 asymmetric g{group} with the MSE range search.\n"
                    f"  {name}:\n    method: awq\n    group_size: {group}{why}\n    sym: false\n"
                    f"    observer: mse\n    n_samples: 32\n")
            desc = f"AWQ W4A16 asymmetric, group size {group}, MSE observer (llmcompressor)"
            labels = ["quantized", "awq", "w4a16"]
        elif method == "autoround":
            name = f"autoround-w4g{group}"
            text = (f"  # AutoRound (through llm-compressor): tuned rounding and clipping, W4 asymmetric g{group}. Its 200\n"
                    f"  # steps per layer take minutes on a GPU runner and hours on 2 CPU cores.\n"
                    f"  {name}:\n    method: autoround\n    group_size: {group}{why}\n    sym: false\n"
                    "    iters: 200\n    n_samples: 128\n")
            desc = f"AutoRound W4A16 asymmetric, group size {group}, 200 steps per layer (llmcompressor)"
            labels = ["quantized", "autoround", "w4a16"]
        elif method == "auto":
            name = "auto-4b5"
            cand = "" if group == 64 else f"    candidates: [w4a16-g{group}-asym, w8a8]\n"
            text = ("  # Per-module formats from the sensitivity stage under a 4.5 bits-per-weight budget: W4A16 for most,\n"
                    "  # W8A8 int8 where 8 bits pay most (vLLM CPU has no 8-bit weight-only kernel).\n"
                    f"  {name}:\n    method: auto\n    max_bits_per_weight: 4.5\n{cand}{DAMP}"
                    "    n_samples: 64           # 32 missed the unseen domain; 128 costs 3 more minutes on 2 cores\n"
                    "    distill_steps: 64       # as the gptq variant's\n")
            desc = ("Mixed precision from the sensitivity stage, at most 4.5 bits per weight (W4A16 + W8A8, llmcompressor), "
                    "then 64 distillation steps")
            labels = ["quantized", "auto", "mixed-precision"]
        elif method == "fp8":
            name = "fp8-dynamic"
            text = (f"  {name}:\n    method: fp8\n"
                    "    scheme: dynamic         # data-free: weights per channel, activations per token at run time\n"
                    "    # The first and last layers' MLPs stay bf16 (~5 % of the Linear weights, 8.42 bits per weight on\n"
                    "    # the demo): per-token FP8 activations hurt them most (benchmarks/quality_trials.py).\n"
                    f"    keep: ['layers\\.(0|{last})\\.mlp\\.']\n")
            desc = f"FP8 weights, dynamic per-token FP8 activations, layers 0 and {last} MLPs bf16 (llmcompressor, data-free)"
            labels = ["quantized", "fp8"]
        else:
            name = "int8-w8a8"
            text = (f"  {name}:\n"
                    "    method: int8            # SmoothQuant (+ the up_proj -> down_proj pair), then round to nearest\n"
                    "    scheme: w8a8\n    smooth_down_proj: true\n"
                    "    # Per-channel round to nearest, as the SmoothQuant paper: GPTQ's second pass over the samples took\n"
                    "    # 4m15s of the stage's 7m55s on 2 cores and measured no better on the texts' worst (README).\n"
                    "    rounding: rtn\n"
                    "    # The first and last layers' MLPs stay bf16 (8.42 bits per weight on the demo): the sensitivity stage\n"
                    "    # ranks them first at W8A8 (build/sensitivity; benchmarks/quality_trials_gpu_8bit.yaml).\n"
                    f"    keep: ['layers\\.(0|{last})\\.mlp\\.']\n"
                    "    n_samples: 128          # with the man pages in calibration, 64 samples measured +0.3 points worse\n")
            desc = (f"INT8 W8A8, SmoothQuant (with up_proj -> down_proj) + round to nearest, layers 0 and {last} MLPs bf16 "
                    "(llmcompressor)")
            labels = ["quantized", "int8", "w8a8"]
        blocks.append({"name": name, "method": method, "yaml": text, "desc": desc, "labels": labels})
    return blocks


def parse_methods(methods: str | None) -> list[str]:
    names = [m.strip() for m in (methods or ",".join(DEFAULT_METHODS)).split(",") if m.strip()]
    for m in names:
        if m not in METHODS:
            raise ConfigError([f"--methods: unknown method {m!r}; choose from {', '.join(METHODS)}"])
    if not names or len(set(names)) != len(names):
        raise ConfigError(["--methods: list each method once (e.g. gptq,auto,fp8,int8)"])
    return names


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "model"


def _plan_rows(config: dict[str, Any]) -> str:
    from .evaluate.planner import format_table, plan

    try:
        shape, rows = plan(config, context=8192, batch=1, gpu_memory_gb=80.0)
    except Exception as exc:  # a shape the planner cannot size: say so in the README instead of failing init
        return f"(quantbuild plan could not size this model: {exc})"
    return format_table(shape, rows, context=8192, batch=1, gpu_memory_gb=80.0)


def context_for(info: ModelInfo, methods: list[str], card_base_model: str | None) -> dict[str, Any]:
    from ._model_shapes import model_type

    arch = model_type(info.config)
    if arch not in LLAMA_LIKE:
        raise ConfigError([f"--model: architecture {arch!r} is not supported by quantbuild's recipes "
                           f"(supported: {', '.join(LLAMA_LIKE)})"])
    group, why = _group_size(info.config)
    variants = _variant_blocks(methods, group, why, int(info.config.get("num_hidden_layers") or 1))
    base_id = card_base_model or info.card_base_model
    if base_id and not _REPO_ID.match(base_id):
        raise ConfigError([f"--card-base-model: {base_id!r} is not a Hub repo id (org/name)"])
    return {"version": __version__, "model_name": info.name, "slug": _slug(info.name), "architecture": arch,
            "source": info.source, "revision": info.revision or "null", "methods": methods,
            "variants": variants, "group_size": group, "card_base_model": base_id or "null",
            "sensitivity_formats": [f"w4a16-g{group}-asym", "w8a8"],
            "plan": _plan_rows(info.config)}


# --- the files -------------------------------------------------------------------------------------------

def _dest_name(rel: Path) -> str:
    parts = [p.replace("dot-", ".", 1) if p.startswith("dot-") else p for p in rel.parts]
    return "/".join(parts)


def _jinja():
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), keep_trailing_newline=True,
                              undefined=jinja2.StrictUndefined, autoescape=False)


def render_files(context: dict[str, Any]) -> dict[str, str]:
    """{project-relative path: content} of every scaffolded file except the README section."""
    env = _jinja()
    out = {}
    for path in sorted(TEMPLATES.rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts:
            continue
        rel = path.relative_to(TEMPLATES)
        if len(rel.parts) == 1 and rel.suffix == ".j2":
            if rel.name == "README-section.md.j2":
                continue
            out[_dest_name(rel.with_suffix(""))] = env.get_template(rel.as_posix()).render(**context)
        else:
            out[_dest_name(rel)] = path.read_text()
    return out


def readme_section(context: dict[str, Any]) -> str:
    text = _jinja().get_template("README-section.md.j2").render(**context).strip()
    return f"{README_BEGIN}\n{text}\n{README_END}\n"


def _with_section(current: str | None, section: str) -> str:
    if current is None:
        return section
    if README_BEGIN in current and README_END in current:
        head, _, rest = current.partition(README_BEGIN)
        _, _, tail = rest.partition(README_END + "\n") if README_END + "\n" in rest else rest.partition(README_END)
        return head + section + tail
    return current.rstrip("\n") + "\n\n" + section


@dataclass
class InitResult:
    written: list[str]
    unchanged: list[str]
    diff: str


def init_project(directory: str | Path, model: str, revision: str | None = None, methods: str | None = None,
                 card_base_model: str | None = None, force: bool = False, diff: bool = False) -> InitResult:
    root = Path(directory).resolve()
    if not root.is_dir():
        raise ConfigError([f"DIR: {directory} is not a folder (create it and run git init there)"])
    inside = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True)
    if inside.returncode != 0:
        raise ConfigError([f"DIR: {directory} is not inside a git repository (run git init there first)"])
    names = parse_methods(methods)
    info = probe_model(model, revision)
    if not info.source.startswith(("hf://", "pkg://")):
        # params.yaml is committed: a local model is named relative to the project, never by an absolute path
        local = Path(info.source.removeprefix("file://")).expanduser().resolve()
        info.source = os.path.relpath(local, root)
    context = context_for(info, names, card_base_model)
    files = render_files(context)
    readme_path = root / "README.md"
    current_readme = readme_path.read_text() if readme_path.is_file() else None
    files["README.md"] = _with_section(current_readme, readme_section(context))
    from ._codeid import CODE_FILE, render_code_file

    files[CODE_FILE.as_posix()] = render_code_file()
    changed, unchanged, patches = [], [], []
    for rel, text in files.items():
        target = root / rel
        old = target.read_text() if target.is_file() else None
        if old == text:
            unchanged.append(rel)
            continue
        changed.append(rel)
        patches.append("".join(difflib.unified_diff((old or "").splitlines(True), text.splitlines(True),
                                                    f"a/{rel}" if old is not None else "/dev/null", f"b/{rel}")))
    if diff:
        return InitResult([], unchanged, "".join(patches))
    clashes = [rel for rel in changed if (root / rel).exists() and rel != "README.md"]
    if clashes and not force:
        raise ConfigError([f"init: {clashes[0]} exists and differs (and {len(clashes) - 1} more); nothing written. "
                           "See `quantbuild init --diff`, then --force to replace them"])
    dvc_needed = not (root / ".dvc").is_dir()
    if dvc_needed and not shutil.which("dvc"):
        raise ConfigError(["init: dvc is not installed (pip install dvc), and this repository has no .dvc/ yet"])
    if dvc_needed:
        result = subprocess.run(["dvc", "init", "-q"], cwd=root, capture_output=True, text=True)
        if result.returncode:
            raise ConfigError([f"init: dvc init failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}"])
    for rel in changed:
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.quantbuild-tmp")
        tmp.write_text(files[rel])
        if rel.startswith(EXECUTABLE) or rel in EXECUTABLE:
            tmp.chmod(0o755)
        tmp.replace(target)
    return InitResult(changed, unchanged, "")
