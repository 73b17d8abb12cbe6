"""What vLLM's build can run on this machine, found before an engine starts.

vLLM 0.32's CPU wheel ships three kernel libraries and loads one by the CPU's ISA: `_C` (AVX512 with
bf16), `_C_AVX512` (AVX512 without bf16) or `_C_AVX2`. Only the first two have `cpu_gemm_wna16`, the
W4A16 kernel, and it is compiled for bf16 and fp16 activations only; there is no CPU kernel for 8-bit
weight-only formats at all. A W4A16 variant on an AVX2 machine, or evaluated in float32 (a CPU without
native bf16), therefore cannot run in vLLM: the evaluate stage measures it with transformers instead
(eval.fallback: hf) or refuses (eval.fallback: refuse).

FP8 (W8A8, dynamic activations) runs on CPU through torch._scaled_mm with per-tensor scales. On some CPUs
(seen: an Intel Xeon with AVX512-BF16, torch 2.13) oneDNN serves that call with its scalar reference
kernel at ~0.06 GFLOP/s, 1000x slower than with row-wise scales: one forward of the 135M demo model then
outlasts vLLM's 300 s step timeout and the engine dies. A 2 ms probe of that exact call decides.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

from .._hardware import cpu_info, cpu_has_native_bf16


def formats_of(model_dir: Path) -> set[str]:
    """The kernel families a checkpoint needs: wna16 (4-bit weight-only), w8a16 (8-bit weight-only),
    int8_w8a8, fp8; empty for an unquantized model."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    q = config.get("quantization_config") or {}
    method = q.get("quant_method")
    if method in ("gptq", "awq"):
        return {"wna16" if q.get("bits") == 4 else "w8a16" if q.get("bits") == 8 else f"w{q.get('bits')}a16"}
    if method != "compressed-tensors":
        return set() if not q else {str(method)}
    needs = set()
    for group in (q.get("config_groups") or {}).values():
        weights, acts = group.get("weights") or {}, group.get("input_activations")
        if weights.get("type") == "float" or (acts or {}).get("type") == "float":
            needs.add("fp8")
        elif acts:
            needs.add("int8_w8a8")
        elif weights.get("num_bits") == 4:
            needs.add("wna16")
        else:
            needs.add(f"w{weights.get('num_bits')}a16")
    return needs


def channelwise_w4(model_dir: Path) -> bool:
    """A 4-bit weight-only checkpoint with one scale per output channel (group_size -1) anywhere in it."""
    q = json.loads((Path(model_dir) / "config.json").read_text()).get("quantization_config") or {}
    if q.get("quant_method") in ("gptq", "awq"):
        return q.get("bits") == 4 and q.get("group_size") in (-1, None)
    for group in (q.get("config_groups") or {}).values():
        weights = group.get("weights") or {}
        if weights.get("num_bits") == 4 and not group.get("input_activations") and \
                (weights.get("strategy") == "channel" or weights.get("group_size") == -1):
            return True
    return False


def vllm_cpu_library() -> str:
    """The kernel library vLLM's CPU platform loads here (the same test vLLM's platforms/cpu.py makes)."""
    isa = cpu_info()["isa"]
    if "avx512f" in isa:
        return "_C" if cpu_has_native_bf16() else "_C_AVX512"
    return "_C_AVX2"


def _has_wna16() -> bool:
    try:
        import torch
        from vllm.platforms import current_platform

        current_platform.import_kernels()
        return hasattr(torch.ops._C, "cpu_gemm_wna16")
    except Exception:  # no vLLM here (e.g. `quantbuild check` in the build environment): judge by the ISA
        return vllm_cpu_library() != "_C_AVX2"


FP8_MIN_GFLOPS = 1.0  # the reference kernel measured 0.06; oneDNN's optimised paths 60+ on 2 cores


@functools.lru_cache(maxsize=1)
def fp8_gemm_gflops() -> float | None:
    """Throughput of the GEMM vLLM's CPU FP8 kernel calls (torch._scaled_mm, fp8 e4m3 operands,
    per-tensor scales, float32 out) on a small shape; None where torch cannot run it at all."""
    try:
        import torch

        m, k, n = 16, 256, 256
        a = torch.ones(m, k).to(torch.float8_e4m3fn)
        b = torch.ones(n, k).to(torch.float8_e4m3fn).t()
        one = torch.ones(1, dtype=torch.float32)
        torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.float32)  # warm-up
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.float32)
            best = min(best, time.perf_counter() - start)
        return 2 * m * k * n / best / 1e9
    except Exception:  # noqa: BLE001 - no torch here, or no FP8 support in it
        return None


def missing_kernel(model_dir: Path, dtype: str, *, on_gpu: bool = False, probe: bool = True) -> str | None:
    """Why vLLM cannot run this checkpoint here in `dtype`, or None when it can."""
    if on_gpu:
        return None
    needs = formats_of(model_dir)
    if "fp8" in needs and probe:
        gflops = fp8_gemm_gflops()
        if gflops is not None and gflops < FP8_MIN_GFLOPS:
            return (f"vLLM's CPU FP8 GEMM (torch._scaled_mm, per-tensor scales) runs in oneDNN's reference kernel "
                    f"here ({gflops:.2f} GFLOP/s on {cpu_info()['model']}): a forward pass would outlast vLLM's "
                    "step timeout")
    if "wna16" in needs:
        library = vllm_cpu_library()
        if not (_has_wna16() if probe else library != "_C_AVX2"):
            return (f"vLLM's CPU kernels here ({library}, {cpu_info()['model']}) have no cpu_gemm_wna16, so W4A16 "
                    "cannot run")
        if dtype not in ("bfloat16", "float16"):
            return (f"vLLM's CPU W4A16 kernel (cpu_gemm_wna16) takes bf16/fp16 activations only, and evaluation "
                    f"computes in {dtype} on this CPU (no native bf16)")
        if channelwise_w4(model_dir):
            # vLLM 0.32 CPUWNA16LinearKernel: convert_weight_packed_scale_zp fails with "shape '[30, 32, 4,
            # 128]' is invalid" when it repacks per-channel weights of the demo model at load.
            return ("vLLM's CPU W4A16 kernel cannot repack channel-wise weights (group_size -1) at load; use a "
                    "group size (e.g. 64) to evaluate in vLLM")
    odd = sorted(n for n in needs if n.startswith("w") and n.endswith("a16") and n != "wna16")
    if odd:
        return f"vLLM has no CPU kernel for {odd[0].upper()} (weight-only below 16 bits other than 4)"
    return None
