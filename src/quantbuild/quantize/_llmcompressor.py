"""llm-compressor adapter: GPTQ, AWQ, FP8 and INT8 (SmoothQuant + GPTQ) as compressed-tensors checkpoints."""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from .._progress import log
from ..errors import ConfigError
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


def _quiet_logs() -> None:
    """In a CI log (stderr not a terminal), llmcompressor's per-module INFO lines (three per module) give
    way to our one line per layer; warnings still show. The per-module losses are taken from the modifier
    (ModuleLosses) either way."""
    import sys

    if sys.stderr.isatty():
        return
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING", format="{time:HH:mm:ss} | {level} | {message}",
               filter=lambda record: record["level"].name != "METRIC")  # per-module figures: the record has them


def _weight_scheme(bits: int, group_size: int, sym: bool, observer: str | None = None) -> dict[str, Any]:
    strategy = "channel" if group_size == -1 else "group"
    args: dict[str, Any] = {"num_bits": bits, "type": "int", "symmetric": sym, "strategy": strategy}
    if strategy == "group":
        args["group_size"] = group_size
    if observer and observer != "minmax":
        args["observer"] = observer
    return args


def module_formats(job: QuantJob) -> dict[str, str]:
    """Every quantized linear module -> its format name: the variant's own format unless a `formats`
    regex (first match wins) or the auto assignment names another. Kept modules are not listed."""
    from .._formats import FORMATS, Format

    s = job.settings
    default = _default_format(s)
    FORMATS.setdefault(default.name, default)
    assigned = dict(job.extras.get("assignment") or {})
    out = {}
    for module in job.linear_modules:
        if module in job.keep_modules:
            continue
        fmt = assigned.get(module, default.name)
        for pattern, name in (s.get("formats") or {}).items():
            if re.search(pattern, module):
                fmt = name
                break
        out[module] = fmt
    return out


def _default_format(s: dict[str, Any]):
    from .._formats import Format

    group = None if s["group_size"] == -1 else s["group_size"]
    name = f"w{s['bits']}a16-" + (f"g{group}" if group else "channel") + ("" if s["sym"] else "-asym")
    return Format(name, s["bits"], group, s["sym"], None, "wna16" if s["bits"] == 4 else None)


def _one_group(s: dict[str, Any]) -> dict[str, Any]:
    """One config group: every Linear at the variant's bits, group size, symmetry and observer."""
    return {"group_0": {"targets": ["Linear"],
                        "weights": _weight_scheme(s["bits"], s["group_size"], s["sym"], s.get("observer"))}}


def config_groups(job: QuantJob) -> tuple[dict[str, Any], list[str]]:
    """compressed-tensors config groups, one per format, targeting exactly its modules (one group of
    every Linear when all share the variant's format), and the extra modules left unquantized (bf16)."""
    from .._formats import FORMATS, targets_regex

    s = job.settings
    formats = module_formats(job)
    observer = s.get("observer")
    names = sorted(set(formats.values()))
    default = _default_format(s).name
    groups: dict[str, Any] = {}
    extra_ignore = [m for m, f in formats.items() if f == "bf16"]
    for i, name in enumerate(n for n in names if n != "bf16"):
        fmt = FORMATS[name]
        weights = fmt.weights_args()
        if observer and observer != "minmax":
            weights["observer"] = observer
        group: dict[str, Any] = {"weights": weights}
        if fmt.activation_args():
            group["input_activations"] = fmt.activation_args()
        modules = [m for m, f in formats.items() if f == name]
        whole = len(names) == 1 and name == default and not job.keep_modules
        group["targets"] = ["Linear"] if whole else targets_regex(modules)
        groups[f"group_{i}"] = group
    return groups, extra_ignore


def _smoothquant_mappings(down_proj: bool) -> list[Any] | None:
    if not down_proj:
        return None
    # llm-compressor's defaults smooth the norms into q/k/v and gate/up only; the study's +1.24 % INT8
    # (against +1.73 %) adds up_proj -> down_proj (fidelity-levers.md section 5).
    return [[["re:.*q_proj", "re:.*k_proj", "re:.*v_proj"], "re:.*input_layernorm"],
            [["re:.*gate_proj", "re:.*up_proj"], "re:.*post_attention_layernorm"],
            [["re:.*down_proj"], "re:.*up_proj"]]


def _transforms(names: list[str]) -> list[Any]:
    out: list[Any] = []
    for name in names:
        if name == "awq":
            from llmcompressor.modifiers.transform.awq import AWQModifier

            out.append(AWQModifier())
        elif name == "spinquant":
            from llmcompressor.modifiers.transform import SpinQuantModifier

            # "hadamard" needs a power-of-two width; random-hadamard covers 576 = 36 x 16 (fidelity note 3.2).
            out.append(SpinQuantModifier(rotations=["R1", "R2"], transform_type="random-hadamard"))
    return out


def build_recipe(job: QuantJob) -> list[Any]:
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    method, s = job.variant.method, job.settings
    ignore = ["lm_head", *job.keep_modules]
    if method in ("gptq", "auto"):
        groups, extra_ignore = config_groups(job)
        if s.get("desc_act"):
            for group in groups.values():
                group["weights"]["actorder"] = "group"
        return [*_transforms(s.get("transforms") or []),
                GPTQModifier(config_groups=groups, ignore=ignore + extra_ignore, dampening_frac=s["damp_percent"])]
    if method == "autoround":
        import torch

        scheme = _one_group(s)
        # torch.compile speeds the tuning loop on a GPU; on a CPU its compile time outweighs the steps saved.
        return [*_transforms(s.get("transforms") or []),
                _autoround_modifier()(config_groups=scheme, ignore=ignore, iters=s["iters"], batch_size=s["batch_size"],
                                      enable_torch_compile=torch.cuda.is_available())]
    if method == "awq":
        from llmcompressor.modifiers.transform.awq import AWQModifier

        return [AWQModifier(), QuantizationModifier(config_groups=_one_group(s), ignore=ignore)]
    if method == "fp8":
        kv = _KV_FP8 if s.get("kv_cache_dtype") == "fp8" else None
        preset = "FP8_DYNAMIC" if s["scheme"] == "dynamic" else "FP8"
        return [QuantizationModifier(targets="Linear", scheme=preset, ignore=ignore, kv_cache_scheme=kv)]
    if method == "int8":
        preset = "W8A8" if s["scheme"] == "w8a8" else "W8A16"
        recipe: list[Any] = []
        if s["scheme"] == "w8a8":
            from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier

            kwargs: dict[str, Any] = {"smoothing_strength": s["smoothing_strength"]}
            mappings = _smoothquant_mappings(bool(s.get("smooth_down_proj")))
            if mappings:
                kwargs["mappings"] = mappings
            recipe.append(SmoothQuantModifier(**kwargs))
        if s.get("rounding") == "rtn":
            # Per-channel round to nearest: data-free, so SmoothQuant's pass is the only one over the samples.
            recipe.append(QuantizationModifier(targets="Linear", scheme=preset, ignore=ignore))
        else:
            recipe.append(GPTQModifier(targets="Linear", scheme=preset, ignore=ignore, dampening_frac=s["damp_percent"]))
        return recipe
    raise ValueError(method)


def _autoround_modifier() -> Any:
    """llm-compressor's AutoRoundModifier, which also hands AutoRound's zero points to the checkpoint.

    llm-compressor 0.14 (and its main branch of 2026-08) carries AutoRound's scales into the quantized
    layer but not its zero points: an asymmetric layer keeps the placeholder zero point (0), so the save
    clips the weights of every group whose range is not centred on zero. AutoRound's zero point q0 in
    [0, 2^b - 1] (w = s (q - q0), q unsigned) is compressed-tensors' q0 - 2^(b-1) (q signed)."""
    import torch
    from llmcompressor.modifiers.autoround import AutoRoundModifier

    class AutoRoundWithZeroPoints(AutoRoundModifier):
        def _postprocess_qparams(self, model: Any, registered: dict[str, dict[str, Any]]) -> None:
            zero_points = {name: module.zp for name, module in model.named_modules()
                           if isinstance(getattr(module, "zp", None), torch.Tensor)
                           and "weight_zero_point" in registered.get(name, {})}
            super()._postprocess_qparams(model, registered)
            for name, zp in zero_points.items():
                module = model.get_submodule(name)
                del module.zp
                scheme = getattr(module, "quantization_scheme", None)
                if scheme is None or not hasattr(module, "weight_zero_point"):
                    continue  # AutoRound left the layer unquantized
                placeholder = module.weight_zero_point
                value = zp.round().to(torch.int32) - 2 ** (scheme.weights.num_bits - 1)
                value = value.reshape(placeholder.shape).to(placeholder.dtype).to(placeholder.device)
                delattr(module, "weight_zero_point")
                module.register_parameter("weight_zero_point", torch.nn.Parameter(value, requires_grad=False))

    return AutoRoundWithZeroPoints


def needs_calibration(job: QuantJob) -> bool:
    return bool(job.samples)  # the stage loads none for data-free methods (FP8 dynamic)


class ModuleLosses:
    """The per-module GPTQ loss as the modifier hands it to its CompressionLogger, keyed by the module's name
    in the model. On CUDA llm-compressor solves same-shaped modules in one batch and logs one "Quantizing N
    module(s)" line for them, so log text cannot say which loss is whose; the logger object holds the module."""

    def __init__(self, model: Any) -> None:
        self.names = {id(module): name for name, module in model.named_modules()}
        self.rows: list[dict[str, Any]] = []

    def __enter__(self) -> "ModuleLosses":
        from llmcompressor.modifiers.gptq import base

        self._gptq, self._original = base, base.CompressionLogger
        names, rows = self.names, self.rows

        class RecordingLogger(self._original):  # the modifier builds one per module it solves
            def set_results(self, name: str | None = None, loss: float | None = None) -> None:
                super().set_results(name=name, loss=loss)
                if loss is not None:
                    rows.append({"module": names.get(id(self.module), "?"), "loss": float(loss)})

        base.CompressionLogger = RecordingLogger
        return self

    def __exit__(self, *exc: Any) -> None:
        self._gptq.CompressionLogger = self._original


SHARD_SIZE = "2GB"


def _weights_on_disk(job: QuantJob) -> bool:
    import torch

    where = job.variant.weights_device
    if where == "cpu" or (where == "auto" and not torch.cuda.is_available()):
        return False
    if job.variant.method == "autoround":
        return False  # AutoRound moves each layer itself (config refuses an explicit disk)
    if "spinquant" in (job.settings.get("transforms") or []) and job.model_config.get("tie_word_embeddings"):
        # llm-compressor 0.14's SpinQuant unties the embeddings by reading the tied tensor, which its disk
        # offload cannot hand out (KeyError in compressed-tensors' DiskCache): such a model stays in memory.
        if where == "disk":
            raise ConfigError([f"{job.where}.weights_device: disk cannot run transforms: [spinquant] on a model "
                               "with tied embeddings (llm-compressor unties them in memory); use weights_device: cpu"])
        log(STAGE, f"{job.name}: weights held in memory (SpinQuant on tied embeddings cannot read them from disk)")
        return False
    return True


class SharedHessians:
    """GPTQ's Hessian statistics (the sum of 2 x x^T over a module's inputs), computed once per distinct input:
    q/k/v and gate/up read the same activations, so their product is made once and added to each (for the demo
    model's shapes that skips 23 % of the product FLOPs, for Llama-3-8B's 16 %). On a GPU the
    products are bf16 tensor-core products accumulated in fp32 instead of llm-compressor's fp32 (TF32) ones: the
    activations are bf16 already, so every product term is exact either way and only the summation order
    differs (benchmarks/gpu_quantize_stage_8b.py prints both errors against an fp32 reference). Elsewhere each
    product is llm-compressor's own computation, so the Hessians are bit for bit the library's. Any other input
    (not a Linear's) goes to llm-compressor's function."""

    SHARED_BYTES = 256 * 2**20  # products up to this size are kept for the next module, which may share the input

    def __enter__(self) -> "SharedHessians":
        import math

        import torch
        from llmcompressor.modifiers.gptq import base

        self._base, self._original = base, base.accumulate_hessian
        original, last = self._original, {}

        def product(inp: Any, hessian: Any) -> tuple[Any, float]:
            """(P, alpha) such that the module's term is alpha * P."""
            x = inp.reshape(-1, inp.shape[-1])
            if tensor_cores(inp):
                return torch.mm(x.t(), x, out_dtype=torch.float32), 2.0
            x = math.sqrt(2) * x.t().to(dtype=hessian.dtype)  # llm-compressor's accumulate_hessian, op for op
            return x.matmul(x.t()), 1.0

        def tensor_cores(inp: Any) -> bool:
            return inp.is_cuda and inp.dtype in (torch.bfloat16, torch.float16)

        def accumulate(inp: Any, module: Any, hessian: Any, num_samples: Any) -> tuple[Any, Any]:
            if not (isinstance(module, torch.nn.Linear) and inp.dim() in (2, 3) and inp.device == hessian.device):
                return original(inp, module, hessian, num_samples)
            # The same tensor object, unchanged since (q/k/v are called with one; gate/up with another). Holding
            # it keeps its memory from being reused, so a later input can never pass for it.
            if not (last.get("input") is inp and last.get("version") == inp._version):
                last.clear()
                if hessian.numel() * hessian.element_size() <= self.SHARED_BYTES:
                    last.update(input=inp, version=inp._version, term=product(inp, hessian))
            if last:
                term, alpha = last["term"]
                hessian.add_(term, alpha=alpha)
            elif tensor_cores(inp):  # a large product is added in place, never held
                x = inp.reshape(-1, inp.shape[-1])
                torch.addmm(hessian, x.t(), x, out_dtype=torch.float32, alpha=2.0, out=hessian)
            else:
                term, alpha = product(inp, hessian)
                hessian.add_(term, alpha=alpha)
            num_samples += inp.shape[0] if inp.dim() == 3 else 1
            return hessian, num_samples

        self._last = last
        base.accumulate_hessian = accumulate
        return self

    def __exit__(self, *exc: Any) -> None:
        self._base.accumulate_hessian = self._original
        self._last.clear()


@contextlib.contextmanager
def fused_attention_for_packed_samples(active: bool) -> Iterator[None]:
    """Calibrate with the model's own attention (SDPA) instead of the eager attention llm-compressor forces.

    llm-compressor 0.14 forces eager attention for tracing and calibration alike, so that a batch of padded
    samples always gets a mask tensor the traced graph can add. Packed samples of one length carry no mask:
    tracing and every batch then see the same (no mask), and SDPA runs its fused causal kernel. One 8B
    decoder layer over 512 x 2048 tokens on an H200: 0.90 s forward against 1.46 s eager, twice per layer
    (calibration, then propagation of the quantized outputs). Only where CUDA is: on a CPU the demo's
    checkpoints were measured with eager attention and stay byte-identical."""
    if not active:
        yield
        return
    from llmcompressor.utils import helpers

    original = helpers.use_eager_attention
    helpers.use_eager_attention = lambda model: contextlib.nullcontext()
    try:
        yield
    finally:
        helpers.use_eager_attention = original


def run(job: QuantJob) -> None:
    start = time.monotonic()
    import llmcompressor  # noqa: F401  (seconds of imports: timed apart from the work)
    import torch

    _allow_cpu_only()
    _quiet_logs()
    torch.manual_seed(job.seed)
    compute = job.extras["compute_dtype"]
    phases = job.extras["phases_s"] = {"imports": round(time.monotonic() - start, 1)}
    on_disk = _weights_on_disk(job)
    with contextlib.ExitStack() as cleanup:
        loading = time.monotonic()
        model = _load_model(job, compute, cleanup, on_disk)
        phases["load"] = round(time.monotonic() - loading, 1)
        _quantize_and_save(job, model, compute)


def _load_model(job: QuantJob, compute: str, cleanup: contextlib.ExitStack, on_disk: bool) -> Any:
    from transformers import AutoModelForCausalLM

    if not on_disk:
        return AutoModelForCausalLM.from_pretrained(job.model_dir, dtype=compute,
                                                    trust_remote_code=job.trust_remote_code)
    if compute != job.extras["stored_dtype"]:
        raise ConfigError([f"{job.where}.weights_device: disk keeps the checkpoint's dtype "
                           f"({job.extras['stored_dtype']}); set compute_dtype to it or weights_device: cpu"])
    # compressed-tensors' disk offload: every weight stays in the checkpoint's own safetensors files until its
    # layer is onloaded; updated (quantized) tensors go to a scratch folder beside the output, read by the save.
    from compressed_tensors.offload import load_offloaded_model

    scratch = tempfile.mkdtemp(prefix=".offload-", dir=Path(job.out_dir).parent)
    cleanup.callback(shutil.rmtree, scratch, ignore_errors=True)
    with load_offloaded_model():
        model = AutoModelForCausalLM.from_pretrained(
            job.model_dir, dtype=compute, trust_remote_code=job.trust_remote_code, device_map="auto_offload",
            max_memory={"cpu": 0}, offload_folder=scratch)
    log(STAGE, f"{job.name}: weights read from disk layer by layer (weights_device: disk)")
    return model


def _quantize_and_save(job: QuantJob, model: Any, compute: str) -> None:
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(job.model_dir, trust_remote_code=job.trust_remote_code)
    recipe = build_recipe(job)
    if job.variant.method in ("gptq", "auto"):
        job.extras["module_formats"] = module_formats(job)
    kwargs: dict[str, Any] = {}
    if needs_calibration(job):
        seq_len = max(len(s) for s in job.samples)
        columns: dict[str, Any] = {"input_ids": job.samples}
        if len({len(s) for s in job.samples}) > 1:
            # Samples of different lengths are padded in a batch and need a mask. Equal-length (packed) ones do
            # not: without one the model applies its causal mask itself, and llm-compressor's sequential pipeline
            # caches no mask per batch on the GPU (4 GiB for 512 x 2048 tokens).
            columns["attention_mask"] = [[1] * len(s) for s in job.samples]
        data = Dataset.from_dict(columns)
        # AutoRound's batch_size is its own tuning batch; it is handed the captured samples one by one.
        batch = 1 if job.variant.method == "autoround" else job.settings.get("batch_size", 1)
        kwargs = {"dataset": data, "num_calibration_samples": len(job.samples), "max_seq_length": seq_len,
                  "batch_size": batch, "shuffle_calibration_samples": False}
        if torch.cuda.is_available():
            # Freed blocks are returned to one growable segment instead of fragmenting the cache (what
            # nvidia-smi shows stays near what is allocated, the save included).
            setting = getattr(torch._C, "_accelerator_setAllocatorSettings", None)
            (setting or torch.cuda.memory._set_allocator_settings)("expandable_segments:True")
            # Activations stay on the GPU between layers and the fp32 Hessians use TF32 tensor cores:
            # GPTQ of an 8B model, 512 x 2048 tokens, 3.94 min on one H100 instead of ~12
            # (benchmarks/gpu_gptq_8b.py). `activations_device: cpu` is the switch when memory runs out.
            device = job.variant.activations_device
            kwargs["sequential_offload_device"] = "cpu" if device == "cpu" else "cuda"
            torch.backends.cuda.matmul.allow_tf32 = True
    what = f"{len(job.samples)} samples" if kwargs else "no calibration (data-free)"
    log(STAGE, f"{job.name}: llmcompressor {job.variant.method} on {what}")
    progress = LayerProgress(decoder_layers(model), job.name)
    start = time.monotonic()
    try:
        packed = bool(kwargs) and "attention_mask" not in kwargs["dataset"].column_names
        with ModuleLosses(model) as losses, SharedHessians(), \
                fused_attention_for_packed_samples(packed and torch.cuda.is_available()):
            oneshot(model=model, recipe=recipe, **kwargs)
    finally:
        progress.close()
    # Where the stage's time goes (quantize.json's phases_s): what precedes the first decoder block (tracing,
    # caching the calibration batches, the embeddings), the blocks themselves, then the compressed save.
    end, first = time.monotonic(), progress.first_layer_at
    phases = job.extras["phases_s"]
    if first is not None:
        phases.update(before_layers=round(first - start, 1), layers=round(end - first, 1))
    else:
        phases["quantize"] = round(end - start, 1)
    stored = job.extras["stored_dtype"]
    if stored != compute and stored != "auto":
        # Computed in float32 on a CPU without native bf16: the published weights keep the params' dtype.
        # Only floating tensors are cast (integer zero points stay), so the format is the same either way.
        model.to(getattr(torch, stored))
        model.config.dtype = getattr(torch, stored)
    # Shards of at most 2 GB: the save holds one shard in host memory at a time.
    model.save_pretrained(job.out_dir, save_compressed=True, max_shard_size=SHARD_SIZE)
    tokenizer.save_pretrained(job.out_dir)
    phases["save"] = round(time.monotonic() - end, 1)
    steps = int(job.settings.get("distill_steps") or 0)
    if steps and job.samples:
        from ._distill import DEFAULT_LR, distill

        job.extras["distill"] = distill(job.out_dir, job.model_dir, job.samples, steps,
                                        float(job.settings.get("distill_lr") or DEFAULT_LR), job.trust_remote_code,
                                        job.name, compute)
        phases["distill"] = job.extras["distill"].get("seconds")
    job.extras["module_loss"] = losses.rows or None
    job.extras["recipe_file"] = "recipe.yaml"
