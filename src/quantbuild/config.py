"""params.yaml as typed dataclasses, one per section, validated before any heavy work.

Each pipeline stage reads only its own section; `load_params` validates the whole file so that a
mistake anywhere stops `dvc repro` before minutes of quantization are spent.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from ._schema import Problems, did_you_mean, load_dataclass, show
from .errors import ConfigError

SHA_RE = re.compile(r"^[0-9a-f]{40}$")
VARIANT_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
MODEL_SCHEMES = ("hf://", "pkg://", "file://")
BUILTIN_TEXTS = ("lee-news", "wikipedia", "linux-man-pages", "pydoc-topics")

from ._methods import (COMPUTE_DTYPES, DEFAULTS, GROUP_SIZES, METHODS, OBSERVERS, RESERVED_NAMES, ROUNDINGS,  # noqa: E402,F401
                       TRANSFORMS)


def model_source_kind(source: str) -> str:
    """'hf', 'pkg', 'gguf' or 'folder' for a base.source string; ValueError for an unknown scheme."""
    if source.startswith("hf://"):
        return "hf"
    if source.startswith("pkg://"):
        return "pkg"
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", source) and not source.startswith("file://"):
        raise ValueError(source.split("://")[0] + "://")
    path = source[len("file://"):] if source.startswith("file://") else source
    return "gguf" if path.endswith(".gguf") else "folder"


@dataclass
class BaseConfig:
    source: str = field(metadata={"help": "e.g. hf://HuggingFaceTB/SmolLM2-135M-Instruct"})
    revision: Optional[str] = None
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    allow_pickle: bool = False
    trust_remote_code: bool = False

    def check(self, path: str, problems: Problems) -> None:
        try:
            kind = model_source_kind(self.source)
        except ValueError as exc:
            problems.add(f"{path}.source", f"unknown scheme {str(exc)!r} in {show(self.source)} "
                         "(use hf://org/name, pkg://package/file.gguf, a local folder or a .gguf path)")
            return
        if kind == "hf":
            repo = self.source[len("hf://"):]
            if not REPO_ID_RE.match(repo):
                problems.add(f"{path}.source", f"{show(self.source)} is not a Hub repo id (write hf://org/name)")
            if not self.revision:
                problems.add(f"{path}.revision", "is required for hf:// sources (a branch, a tag or a 40-hex "
                             "commit sha; a sha pins the model for good)")
        elif kind == "pkg" and self.source.count("/") < 3:
            problems.add(f"{path}.source", f"{show(self.source)} must name a file inside a package "
                         "(pkg://package/file.gguf)")


@dataclass
class CalibrationSource:
    uri: str = field(metadata={"help": "builtin://lee-news, hf://org/dataset or a local file/glob"})
    config: Optional[str] = None
    split: str = "train"
    revision: Optional[str] = None
    text_field: Optional[str] = None
    max_docs: Optional[int] = None
    name: Optional[str] = None       # the text's domain in held-out reports (default: from the uri)

    def check(self, path: str, problems: Problems) -> None:
        if self.uri.startswith("builtin://"):
            name = self.uri[len("builtin://"):]
            if name not in BUILTIN_TEXTS:
                problems.add(f"{path}.uri", f"unknown built-in text {name!r}{did_you_mean(name, BUILTIN_TEXTS)}; "
                             f"built-ins: {', '.join(BUILTIN_TEXTS)}")
        elif self.uri.startswith("hf://"):
            repo = self.uri[len("hf://"):].removeprefix("datasets/")
            if not REPO_ID_RE.match(repo):
                problems.add(f"{path}.uri", f"{show(self.uri)} is not a Hub dataset id (write hf://org/name)")
        elif re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", self.uri) and not self.uri.startswith("file://"):
            problems.add(f"{path}.uri", f"unknown scheme in {show(self.uri)} "
                         "(use builtin://NAME, hf://org/dataset or a local path)")
        if self.max_docs is not None and self.max_docs <= 0:
            problems.add(f"{path}.max_docs", f"{self.max_docs} must be positive (or remove it for no limit)")


def domain_name(src: CalibrationSource) -> str:
    """A short name for a source's text domain (held-out perplexity is reported per domain)."""
    if src.name:
        return src.name
    uri = src.uri
    if uri.startswith("builtin://"):
        return uri[len("builtin://"):]
    tail = uri.rstrip("/").rsplit("/", 1)[-1]
    return Path(tail).stem or tail


@dataclass
class CalibrationConfig:
    sources: list[CalibrationSource] = field(default_factory=lambda: [CalibrationSource("builtin://lee-news")])
    # Scored, never calibrated on: a domain absent from calibration (quality must hold outside it too).
    heldout_sources: list[CalibrationSource] = field(default_factory=list)
    n_samples: int = 128
    seq_len: int = 512
    seed: int = 0
    chat_template: bool = False
    text_field: str = "text"
    heldout_share: float = 0.1
    heldout_max_docs: Optional[int] = 64       # per source
    heldout_max_chars: Optional[int] = 40000   # per source (~10k tokens of English)
    packing: Literal["pack", "truncate"] = "pack"
    dedupe: bool = True
    min_chars: int = 64

    def check(self, path: str, problems: Problems) -> None:
        if not self.sources:
            problems.add(f"{path}.sources", "is empty (list at least one source, e.g. - uri: builtin://lee-news)")
        if self.n_samples <= 0:
            problems.add(f"{path}.n_samples", f"{self.n_samples} must be positive (128 is the usual minimum; "
                         "512-1024 advised)")
        if self.seq_len < 16:
            problems.add(f"{path}.seq_len", f"{self.seq_len} is too short (use 512-2048 tokens)")
        if not 0.0 < self.heldout_share < 0.9:
            problems.add(f"{path}.heldout_share", f"{self.heldout_share} must be above 0 and below 0.9 "
                         "(0.1 keeps a tenth of the documents for evaluation)")
        if self.heldout_max_docs is not None and self.heldout_max_docs <= 0:
            problems.add(f"{path}.heldout_max_docs", f"{self.heldout_max_docs} must be positive or null")
        if self.heldout_max_chars is not None and self.heldout_max_chars < max(self.min_chars, 1):
            problems.add(f"{path}.heldout_max_chars", f"{self.heldout_max_chars} must be at least min_chars "
                         f"({self.min_chars}) or null")
        if self.min_chars < 0:
            problems.add(f"{path}.min_chars", f"{self.min_chars} must be 0 or more")
        if not 0 <= self.seed < 2**32:
            problems.add(f"{path}.seed", f"{self.seed} must be between 0 and 2**32 - 1 (a random seed)")
        names = [domain_name(src) for src in self.sources + self.heldout_sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            problems.add(f"{path}.heldout_sources", f"two sources share the domain name {dupes[0]!r}; give one a "
                         "`name:`")


@dataclass
class VariantConfig:
    method: Literal["gptq", "awq", "autoround", "fp8", "int8", "auto"] = field(
        metadata={"help": "gptq, awq, autoround, fp8, int8 or auto"})
    backend: Optional[str] = None
    bits: Optional[int] = None
    group_size: Optional[int] = None
    sym: Optional[bool] = None
    damp_percent: Optional[float] = None
    desc_act: Optional[bool] = None
    batch_size: Optional[int] = None
    scheme: Optional[str] = None
    kv_cache_dtype: Optional[Literal["auto", "fp8"]] = None
    keep: list[str] = field(default_factory=list)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    n_samples: Optional[int] = None
    iters: Optional[int] = None       # autoround: tuning steps per decoder layer (200 by default)
    description: Optional[str] = None
    # llmcompressor on a GPU: where activations wait between layers. auto = on the GPU (3.3x faster
    # than llmcompressor's own default, cpu; ~17 GiB for 512 x 2048 tokens of an 8B model); cpu on OOM.
    activations_device: Literal["auto", "cpu", "cuda"] = "auto"
    # llmcompressor: where the weights wait for their layer's turn. auto = disk on a GPU machine (each layer is
    # read from the checkpoint when its turn comes and written back quantized, so host memory never holds the
    # model: an 8B job in a few GiB of host RAM), host memory on a CPU-only one; cpu = host memory always.
    weights_device: Literal["auto", "cpu", "disk"] = "auto"
    # The quality levers (llmcompressor): the weight observer's range search, transforms applied before
    # GPTQ in the same oneshot, SmoothQuant's extra up_proj->down_proj pair, per-module formats.
    observer: Optional[str] = None
    transforms: Optional[list[str]] = None     # None: the method's default ([] to turn them off)
    smoothing_strength: Optional[float] = None
    smooth_down_proj: bool = False
    # int8: how the 8-bit weights are rounded after SmoothQuant. gptq (the default) walks the layers a second
    # time for the Hessians; rtn (round to nearest, per channel) needs no second pass.
    rounding: Optional[str] = None
    formats: dict[str, str] = field(default_factory=dict)   # module regex -> format name (_formats.FORMATS)
    # method auto: per-module formats chosen from the sensitivity stage under this budget.
    max_bits_per_weight: Optional[float] = None
    candidates: Optional[list[str]] = None     # None: the method's default formats
    max_predicted_kl: Optional[float] = None
    # gptq/auto (llmcompressor): after GPTQ, the group scales and norms tuned end to end towards the base's
    # next-token distributions on the calibration samples, one sample a step (quantize/_distill.py).
    distill_steps: Optional[int] = None
    distill_lr: Optional[float] = None
    # What calibration forwards compute in: auto = bf16 where the hardware has it natively, else float32.
    compute_dtype: Literal["auto", "bfloat16", "float32"] = "auto"

    @property
    def resolved_backend(self) -> str:
        return self.backend or METHODS[self.method][1][0]

    def check(self, path: str, problems: Problems) -> None:
        bits_ok, backends = METHODS[self.method]
        if self.backend is not None and self.backend not in backends:
            problems.add(f"{path}.backend", f"{self.backend!r} cannot run {self.method}"
                         f"{did_you_mean(self.backend, backends)}; choose {' or '.join(backends)}")
        if self.bits is not None and self.bits not in bits_ok:
            problems.add(f"{path}.bits", f"{self.method} cannot do {self.bits}-bit "
                         f"(allowed: {', '.join(map(str, bits_ok))})")
        if self.group_size is not None and self.group_size not in GROUP_SIZES:
            problems.add(f"{path}.group_size", f"{self.group_size} is not supported "
                         f"(use {', '.join(map(str, GROUP_SIZES))}; -1 means per-channel)")
        if self.group_size is not None and "group_size" not in DEFAULTS[self.method]:  # fp8, int8
            problems.add(f"{path}.group_size", f"{self.method} scales weights per output channel: it has no group size "
                         "(remove the key)")
        if self.damp_percent is not None and "damp_percent" not in DEFAULTS[self.method]:  # awq, autoround, fp8
            problems.add(f"{path}.damp_percent", f"is GPTQ's Hessian dampening; {self.method} has none (remove the key)")
        if self.method == "fp8" and self.scheme != "static" and self.kv_cache_dtype != "fp8":
            for key in ("n_samples", "batch_size"):
                if getattr(self, key) is not None:
                    problems.add(f"{path}.{key}", "fp8 dynamic reads no calibration data (remove the key; scheme: static "
                                 "or kv_cache_dtype: fp8 calibrate)")
        if self.damp_percent is not None and not 0.0 < self.damp_percent < 1.0:
            problems.add(f"{path}.damp_percent", f"{self.damp_percent} must be between 0 and 1 (0.01 is typical)")
        for key in ("batch_size", "n_samples", "iters"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                problems.add(f"{path}.{key}", f"{value} must be positive")
        schemes = {"fp8": ("dynamic", "static"), "int8": ("w8a8", "w8a16")}.get(self.method)
        if self.scheme is not None and schemes is None:
            problems.add(f"{path}.scheme", f"{self.method} takes no scheme (remove the key; bits and group_size set it)")
        elif self.scheme is not None and self.scheme not in schemes:
            problems.add(f"{path}.scheme", f"{self.scheme!r} is not a {self.method} scheme{did_you_mean(self.scheme, schemes)}; "
                         f"choose {' or '.join(schemes)}")
        if self.kv_cache_dtype == "fp8" and self.method != "fp8":
            problems.add(f"{path}.kv_cache_dtype", "an FP8 KV cache is offered with method fp8 only (remove the key)")
        if self.iters is not None and self.method != "autoround":
            problems.add(f"{path}.iters", f"tuning steps apply to method autoround only, not {self.method} (remove the key)")
        if self.method == "autoround":
            if self.weights_device == "disk":
                problems.add(f"{path}.weights_device", "autoround tunes each layer in memory: use cpu (or auto)")
        if self.desc_act is not None and self.method != "gptq":
            problems.add(f"{path}.desc_act", f"act-order applies to gptq only, not {self.method} (remove the key)")
        if self.sym is False and self.method in ("fp8", "int8"):
            problems.add(f"{path}.sym", f"{self.method} is symmetric only (remove the key)")
        if self.overrides and self.resolved_backend != "gptqmodel":
            problems.add(f"{path}.overrides", f"per-module bits/group size need backend gptqmodel, not "
                         f"{self.resolved_backend} (use keep: to leave modules unquantized instead)")
        for pattern, override in self.overrides.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                problems.add(f"{path}.overrides.{pattern}", f"is not a valid regular expression ({exc})")
            for key, value in override.items():
                if key == "bits" and value not in bits_ok:
                    problems.add(f"{path}.overrides.{pattern}.bits", f"{show(value)} must be one of "
                                 f"{', '.join(map(str, bits_ok))}")
                elif key == "group_size" and value not in GROUP_SIZES:
                    problems.add(f"{path}.overrides.{pattern}.group_size", f"{show(value)} must be one of "
                                 f"{', '.join(map(str, GROUP_SIZES))}")
                elif key not in ("bits", "group_size"):
                    problems.add(f"{path}.overrides.{pattern}.{key}", f"unknown key{did_you_mean(key, ['bits', 'group_size'])}"
                                 "; overrides take bits and group_size")
        for i, pattern in enumerate(self.keep):
            try:
                re.compile(pattern)
            except re.error as exc:
                problems.add(f"{path}.keep[{i}]", f"{show(pattern)} is not a valid regular expression ({exc})")
        self._check_levers(path, problems)

    def _check_levers(self, path: str, problems: Problems) -> None:
        from ._formats import FORMATS

        llmc = self.resolved_backend == "llmcompressor"
        if self.observer is not None:
            if self.observer not in OBSERVERS:
                problems.add(f"{path}.observer", f"unknown observer {show(self.observer)}"
                             f"{did_you_mean(str(self.observer), OBSERVERS)}; choose {', '.join(OBSERVERS)}")
            elif not llmc:
                problems.add(f"{path}.observer", f"observers are llmcompressor's; set backend: llmcompressor "
                             f"(not {self.resolved_backend})")
            elif self.method == "autoround":
                problems.add(f"{path}.observer", "autoround tunes its own clipping ranges (remove the key)")
            elif self.method in ("fp8", "int8"):
                problems.add(f"{path}.observer", f"observers size 4-bit weights (gptq, auto, awq); {self.method} takes "
                             "per-channel min-max scales (remove the key)")
        for i, name in enumerate(self.transforms or []):
            if name not in TRANSFORMS:
                problems.add(f"{path}.transforms[{i}]", f"unknown transform {show(name)}"
                             f"{did_you_mean(str(name), TRANSFORMS)}; choose {' or '.join(TRANSFORMS)}")
        if self.transforms and (self.method not in ("gptq", "auto", "autoround") or not llmc):
            problems.add(f"{path}.transforms", "transforms run before GPTQ or AutoRound in llmcompressor: use method "
                         "gptq, auto or autoround with backend llmcompressor")
        if set(self.transforms or []) >= {"awq", "spinquant"}:
            problems.add(f"{path}.transforms", "awq and spinquant do not stack (measured worse together); pick one")
        if (self.distill_steps is not None or self.distill_lr is not None) and (
                self.method not in ("gptq", "auto") or not llmc):
            key = "distill_steps" if self.distill_steps is not None else "distill_lr"
            problems.add(f"{path}.{key}", "distillation tunes the group scales llmcompressor's gptq and auto write: use "
                         "method gptq or auto with backend llmcompressor (or remove the key)")
        elif self.distill_steps is not None and (isinstance(self.distill_steps, bool) or self.distill_steps < 0):
            problems.add(f"{path}.distill_steps", f"{show(self.distill_steps)} must be 0 (off) or a positive number of "
                         "steps (64 is typical)")
        elif self.distill_steps and self.group_size == -1:
            problems.add(f"{path}.distill_steps", "distillation tunes group scales; group_size -1 has none (use 64 or 32)")
        if self.distill_lr is not None and not 0.0 < self.distill_lr < 1.0:
            problems.add(f"{path}.distill_lr", f"{show(self.distill_lr)} must be between 0 and 1 (0.001 is typical)")
        elif self.distill_lr is not None and not self.distill_steps:
            problems.add(f"{path}.distill_lr", "sets the rate of distill_steps, which is off: set distill_steps too "
                         "(or remove the key)")
        if self.smooth_down_proj and self.method != "int8":
            problems.add(f"{path}.smooth_down_proj", "is a SmoothQuant mapping for method int8 (remove the key)")
        if self.rounding is not None and self.method != "int8":
            problems.add(f"{path}.rounding", f"chooses how method int8 rounds its weights; {self.method} has its own "
                         "(remove the key)")
        elif self.rounding is not None and self.rounding not in ROUNDINGS:
            problems.add(f"{path}.rounding", f"unknown rounding {show(self.rounding)}"
                         f"{did_you_mean(str(self.rounding), ROUNDINGS)}; choose {' or '.join(ROUNDINGS)}")
        elif self.rounding == "rtn" and self.damp_percent is not None:
            problems.add(f"{path}.damp_percent", "dampens GPTQ's Hessian; rounding rtn has none (remove the key)")
        if self.smoothing_strength is not None and (self.method != "int8" or not 0.0 < self.smoothing_strength < 1.0):
            problems.add(f"{path}.smoothing_strength", "must be between 0 and 1, for method int8 (0.8 is typical)")
        for pattern, fmt in self.formats.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                problems.add(f"{path}.formats.{pattern}", f"is not a valid regular expression ({exc})")
            if fmt not in FORMATS:
                problems.add(f"{path}.formats.{pattern}", f"unknown format {show(fmt)}{did_you_mean(str(fmt), FORMATS)}; "
                             f"choose one of {', '.join(FORMATS)}")
        if self.formats and (not llmc or self.method not in ("gptq", "auto")):
            problems.add(f"{path}.formats", "per-module formats need method gptq (or auto) with backend llmcompressor")
        for i, fmt in enumerate(self.candidates or []):
            if fmt not in FORMATS:
                problems.add(f"{path}.candidates[{i}]", f"unknown format {show(fmt)}{did_you_mean(str(fmt), FORMATS)}; "
                             f"choose from {', '.join(FORMATS)}")
        if self.method == "auto":
            if self.max_bits_per_weight is None:
                problems.add(f"{path}.max_bits_per_weight", "is required for method auto (e.g. 4.5)")
            elif not 2.0 <= self.max_bits_per_weight <= 16.0 or math.isnan(self.max_bits_per_weight):
                problems.add(f"{path}.max_bits_per_weight", f"{self.max_bits_per_weight} must be between 2 and 16")
            if self.max_predicted_kl is not None and not self.max_predicted_kl > 0:
                problems.add(f"{path}.max_predicted_kl", f"{self.max_predicted_kl} must be positive (or remove it)")
        else:
            for key in ("max_bits_per_weight", "max_predicted_kl"):
                if getattr(self, key) is not None:
                    problems.add(f"{path}.{key}", f"applies to method auto only (remove the key)")
            if self.candidates:
                problems.add(f"{path}.candidates", "applies to method auto only (remove the key)")


@dataclass
class SensitivityConfig:
    formats: list[str] = field(default_factory=lambda: ["w4a16-g64-asym", "w8a8"])
    n_samples: int = 8          # calibration samples scored (one forward + backward each)
    seq_len: int = 512
    seed: int = 0
    layer_kl: bool = True       # also measure each layer's KL (one forward per layer): validates the ranking
    layer_kl_samples: int = 4

    def check(self, path: str, problems: Problems) -> None:
        from ._formats import FORMATS

        if not self.formats:
            problems.add(f"{path}.formats", "is empty (list the candidate formats, e.g. [w4a16-g64-asym, w8a8])")
        for i, fmt in enumerate(self.formats):
            if fmt not in FORMATS:
                problems.add(f"{path}.formats[{i}]", f"unknown format {show(fmt)}{did_you_mean(str(fmt), FORMATS)}; "
                             f"choose from {', '.join(FORMATS)}")
        for key in ("n_samples", "seq_len", "layer_kl_samples"):
            if getattr(self, key) <= 0:
                problems.add(f"{path}.{key}", f"{getattr(self, key)} must be positive")
        if not 0 <= self.seed < 2**32:
            problems.add(f"{path}.seed", f"{self.seed} must be between 0 and 2**32 - 1")


@dataclass
class GateConfig:
    min_recovery: float = 0.9
    metrics: dict[str, float] = field(default_factory=dict)   # metric (or glob) -> minimum recovery
    methods: dict[str, dict[str, float]] = field(default_factory=dict)   # per quantization method
    variants: dict[str, dict[str, float]] = field(default_factory=dict)
    policy: Optional[str] = None    # where the thresholds come from (shown in every gate record and card)


@dataclass
class EvalConfig:
    engine: Literal["vllm", "hf"] = "vllm"
    tasks: list[str] = field(default_factory=lambda: ["heldout_perplexity"])
    limit: Optional[int] = None
    num_fewshot: Optional[int] = None
    seed: int = 1234
    batch_size: int = 8
    max_model_len: int = 2048
    # The activation dtype of every evaluated model. auto: bf16 where the hardware runs it natively (GPUs,
    # CPUs with AVX512-BF16/AMX), float32 elsewhere; variants always use the baseline's recorded choice.
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    apply_chat_template: bool = False
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    # Token perplexity per held-out domain: windows of this many tokens, at most this many per domain.
    perplexity_window: int = 512
    perplexity_windows: int = 16
    # A variant whose format vLLM's build cannot run on this machine (e.g. W4A16 under the AVX2 kernels):
    # hf evaluates it and the baseline again with transformers, like with like; refuse stops with an error.
    fallback: Literal["hf", "refuse"] = "hf"
    gate: GateConfig = field(default_factory=GateConfig)

    def check(self, path: str, problems: Problems) -> None:
        if self.limit is not None and self.limit <= 0:
            problems.add(f"{path}.limit", f"{self.limit} must be positive (or null for the whole task)")
        if not 0 <= self.seed < 2**32:
            problems.add(f"{path}.seed", f"{self.seed} must be between 0 and 2**32 - 1 (a random seed)")
        for key in ("batch_size", "max_model_len", "tensor_parallel_size", "data_parallel_size", "perplexity_window",
                    "perplexity_windows"):
            if getattr(self, key) <= 0:
                problems.add(f"{path}.{key}", f"{getattr(self, key)} must be positive")
        thresholds = [("min_recovery", self.gate.min_recovery)]
        thresholds += [(f"metrics.{k}", v) for k, v in self.gate.metrics.items()]
        thresholds += [(f"variants.{n}.{k}", v) for n, m in self.gate.variants.items() for k, v in m.items()]
        thresholds += [(f"methods.{n}.{k}", v) for n, m in self.gate.methods.items() for k, v in m.items()]
        for name in self.gate.methods:
            if name not in METHODS:
                problems.add(f"{path}.gate.methods.{name}", f"unknown method{did_you_mean(name, METHODS)}; "
                             f"methods: {', '.join(METHODS)}")
        for key, value in thresholds:
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                problems.add(f"{path}.gate.{key}", f"{show(value)} must be a number (a recovery ratio)")
            elif not (0.0 < value <= 2.0) or math.isnan(value):
                problems.add(f"{path}.gate.{key}", f"{value} must be in (0, 2] (a recovery ratio; 0.95 keeps 95%)")


@dataclass
class CardConfig:
    template: str = "modelcards/quantized_model.md.j2"
    base_model: Optional[str] = None     # the base model's Hub id; defaults to an hf:// source's id
    language: list[str] = field(default_factory=lambda: ["en"])
    tags: list[str] = field(default_factory=list)
    license: Optional[str] = None        # defaults to the base model's license
    license_name: Optional[str] = None   # for license: other
    license_link: Optional[str] = None
    source_url: Optional[str] = None     # where the pipeline's repository lives (for Reproduction)

    def check(self, path: str, problems: Problems) -> None:
        if self.base_model is not None and not re.match(r"^[\w.-]+/[\w.-]+$", self.base_model):
            problems.add(f"{path}.base_model", f"{show(self.base_model)} must be a Hub id like org/name")
        if self.license == "other" and not (self.license_name and self.license_link):
            problems.add(f"{path}.license", "other needs card.license_name and card.license_link")


@dataclass
class PublishConfig:
    enabled: bool = False
    namespace: Optional[str] = None
    repo_template: str = "{base}-{variant}"
    private: bool = False
    layout: Literal["repo-per-variant", "branch-per-variant"] = "repo-per-variant"
    version: str = "v0.1.0"

    def check(self, path: str, problems: Problems) -> None:
        if not re.match(r"^v\d+\.\d+\.\d+$", self.version):
            problems.add(f"{path}.version", f"{show(self.version)} must look like v1.2.3 (semantic version)")
        if self.enabled and not self.namespace:
            problems.add(f"{path}.namespace", "is required when publish.enabled is true (your Hub user or org)")


@dataclass
class Params:
    base: BaseConfig = field(metadata={"help": "the model to quantize; see README"})
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    variants: dict[str, VariantConfig] = field(default_factory=dict)
    sensitivity: SensitivityConfig = field(default_factory=SensitivityConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    card: CardConfig = field(default_factory=CardConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    check_always = True  # cross-section checks still run when a section has its own problems

    def check(self, path: str, problems: Problems) -> None:
        for name in self.variants or {}:
            if not VARIANT_NAME_RE.match(name):
                problems.add(f"variants.{name}", "variant names must be lower-case letters, digits, '.', '_' "
                             "or '-' (they name folders, DVC stages and Hub repos)")
            elif name in RESERVED_NAMES:
                problems.add(f"variants.{name}", f"{name!r} names a pipeline output (build/eval/{name}); "
                             "rename the variant")
        sens = self.sensitivity.formats if self.sensitivity else []
        for name, variant in (self.variants or {}).items():
            if variant is None or variant.method != "auto":
                continue
            from ._methods import DEFAULTS

            for fmt in variant.candidates or DEFAULTS["auto"]["candidates"]:
                if fmt not in sens:
                    problems.add(f"variants.{name}.candidates", f"{fmt} is not scored by the sensitivity stage "
                                 f"(add it to sensitivity.formats: {', '.join(sens)})")
        gate = self.eval.gate if self.eval and self.eval.gate else None
        for name in (gate.variants or {}) if gate else {}:
            if name not in (self.variants or {}):
                problems.add(f"eval.gate.variants.{name}", f"no such variant{did_you_mean(name, self.variants)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_params(data: Any, *, origin: str = "params.yaml") -> Params:
    problems = Problems()
    if not isinstance(data, dict):
        raise ConfigError([f"{origin}: must be a mapping with sections base, calibration, variants, eval, card, publish"])
    params = load_dataclass(Params, data, "", problems)
    if problems:
        raise ConfigError(problems.lines)
    return params


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, but a key given twice in one mapping is an error (YAML keeps the last one silently)."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(None, None, f"unhashable key {key!r}", key_node.start_mark) from None
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {seen[key] + 1}; keep one)", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: not found (run from the project root or pass --params)"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: is not UTF-8 text (a binary file?); write params.yaml as YAML text"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{path}: is a folder, not a params file; pass --params FILE"]) from None
    if "\x00" in text:
        raise ConfigError([f"{path}: contains NUL bytes (a binary file?); write params.yaml as YAML text"])
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([f"{path}:{where}: invalid YAML: {problem}"]) from None
    return parse_params(data, origin=str(path))


# --- checks that need the base model's shapes -------------------------------------------------

def _suggest_group_sizes(widths: list[int]) -> str:
    g = math.gcd(*widths)
    fits = [s for s in range(32, min(g, 512) + 1, 32) if g % s == 0]
    if not fits:
        return "use -1 (per-channel)"
    shown = [s for s in fits if s & (s - 1) == 0][:2]  # powers of two first, then the widest fit
    if fits[-1] not in shown:
        shown.append(fits[-1])
    return "try " + (", ".join(map(str, shown[:-1])) + " or " + str(shown[-1]) if len(shown) > 1 else str(shown[0]))


def check_against_model(params: Params, model_config: dict[str, Any]) -> list[str]:
    """Problems that need the base model's config.json: group sizes and sequence length."""
    from ._model_shapes import linear_in_features, max_positions

    problems = Problems()
    widths = linear_in_features(model_config)
    limit = max_positions(model_config)
    if limit is not None and params.calibration.seq_len > limit:
        problems.add("calibration.seq_len", f"{params.calibration.seq_len} is above the model's maximum "
                     f"{limit} (max_position_embeddings); lower it")
    if widths:
        from ._methods import DEFAULTS

        for name, variant in params.variants.items():
            gs = variant.group_size if variant.group_size is not None else DEFAULTS[variant.method].get("group_size")
            if gs is None or gs == -1:
                continue
            bad = sorted({w for w in widths.values() if w % gs})
            if bad:
                keep_hint = _suggest_group_sizes(list(widths.values()))
                problems.add(f"variants.{name}.group_size", f"{gs} must divide in_features "
                             f"{' and '.join(map(str, bad))} ({keep_hint})")
    return problems.lines
