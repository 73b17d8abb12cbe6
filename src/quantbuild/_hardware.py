"""What this machine computes fast: the compute dtype of calibration forwards and evaluation.

On a CPU without native bf16 (no AVX512-BF16 and no AMX), torch emulates bf16 matrix products: on an
AVX2-only AMD EPYC of this project's kind a 512x576 @ 576x1536 product ran at 4.6 GFLOP/s in bf16 against
24.8 in float32 (5.4x; ../shared/notes/environment.md). There the stages compute in float32; the
published weights keep the params' dtype either way (the quantize stage casts back before saving).
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path
from typing import Any

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
# Set to bfloat16 or float32 to override the hardware choice (tests force the slow path with it).
COMPUTE_DTYPE_ENV = "QUANTBUILD_COMPUTE_DTYPE"


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict[str, Any]:
    """CPU model and the ISA flags that decide kernels: reported beside every timing."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                model = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    isa = sorted(f for f in flags if f.startswith(("avx", "amx")) or f in ("fma", "f16c", "sve", "asimd"))
    return {"model": model, "cores": os.cpu_count(), "isa": isa}


def cpu_has_native_bf16() -> bool:
    return any(flag in cpu_info()["isa"] for flag in BF16_CPU_FLAGS)


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - every stage environment has torch
        return False
    return bool(torch.cuda.is_available())


def compute_dtype(stored: str, *, on_gpu: bool | None = None) -> tuple[str, str]:
    """(dtype to compute in, why) for weights stored as `stored` (bfloat16, float16, float32 or auto).

    bf16 stays bf16 on a GPU or a CPU with native bf16, and becomes float32 elsewhere; float16 on a CPU
    becomes float32 as well (no CPU has fast fp16 GEMMs in torch 2.13)."""
    forced = os.environ.get(COMPUTE_DTYPE_ENV)
    if forced:
        if forced not in ("bfloat16", "float32", "float16"):
            from .errors import ConfigError

            raise ConfigError([f"{COMPUTE_DTYPE_ENV}: {forced!r} must be bfloat16, float16 or float32 (or unset)"])
        return forced, f"forced by {COMPUTE_DTYPE_ENV}"
    gpu = cuda_available() if on_gpu is None else on_gpu
    if stored in ("float32", "auto"):
        return "float32" if stored == "float32" else "auto", "as stored"
    if gpu:
        return stored, "GPU"
    if stored == "bfloat16" and cpu_has_native_bf16():
        return stored, "CPU has native bf16 (" + ", ".join(f for f in BF16_CPU_FLAGS if f in cpu_info()["isa"]) + ")"
    return "float32", f"CPU has no native {stored} ({cpu_info()['model']}): {stored} matmuls are emulated"


# Calibration tokens per batch on a GPU when batch_size is left to the stage: 16 samples of 2048 tokens. On the
# lent H200 the 8B GPTQ stage (benchmarks/gpu_quantize_stage_8b.py) took 141.8 s at 16 x 2048 in one call, where
# 8 x 2048 took 146.8 s under py-spy (152.5 and 152.7 s in two other calls), and 161.6-173.3 s at 1 x 2048, for
# 0.1-0.3 GiB more GPU memory (the cached activations dominate it).
GPU_CALIBRATION_BATCH_TOKENS = 32768


def calibration_batch_size(sample_lengths: list[int], *, on_gpu: bool | None = None) -> tuple[int, str]:
    """(samples per calibration batch, why) when params leave batch_size to the stage.

    On a GPU, samples of one length (packed: no padding, so a batch sees no pad tokens) go
    GPU_CALIBRATION_BATCH_TOKENS at a time; padded samples and CPUs take one at a time (a CPU gains nothing
    from larger batches, and the demo's checkpoints were measured so)."""
    gpu = cuda_available() if on_gpu is None else on_gpu
    if not gpu or not sample_lengths:
        return 1, "one sample at a time on a CPU"
    if len(set(sample_lengths)) > 1:
        return 1, "one sample at a time: samples of different lengths would be padded"
    size = max(1, min(len(sample_lengths), GPU_CALIBRATION_BATCH_TOKENS // sample_lengths[0]))
    return size, f"{GPU_CALIBRATION_BATCH_TOKENS} tokens per batch on a GPU"


def hardware_record() -> dict[str, Any]:
    """Hardware beside a timing: CPU model and ISA flags, and the GPU when there is one."""
    info: dict[str, Any] = {"machine": platform.machine(), "cpu": cpu_info()["model"], "cpus": os.cpu_count(),
                            "cpu_isa": cpu_info()["isa"], "native_bf16": cpu_has_native_bf16()}
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpus"] = torch.cuda.device_count()
    except ImportError:  # pragma: no cover
        pass
    return info


# Above this share of the machine's CPUs used by other processes while a throughput figure is measured, the
# figure is flagged as not comparable: throughput on 2 cores scales with the cores it gets, and an earlier
# session's figures moved by tens of % when a benchmark ran beside a stage (README "Measured here").
OTHER_CPU_USE_WARN = 0.10


class OtherCpuUse:
    """CPU time that processes outside this one's tree used while a block ran, as a share of the machine's
    CPUs (0.5: one of two cores busy with other work), from /proc/stat's busy time less this process's and
    its descendants' (psutil). `share` is None where either is unreadable (not Linux, no psutil). A child
    that exits inside the block counts as other work, so the share errs high, never low."""

    def __init__(self) -> None:
        self.share: float | None = None
        self._start: tuple[float, float, float] | None = None

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            import psutil

            fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
            me = psutil.Process()
            own = 0.0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    times = proc.cpu_times()
                    own += times.user + times.system
                except psutil.Error:  # exited between listing and reading
                    pass
        except (ImportError, OSError, ValueError, IndexError):
            return None
        tick = os.sysconf("SC_CLK_TCK")
        user, nice, system, idle, iowait, irq, softirq, steal = fields
        busy = (user + nice + system + irq + softirq + steal) / tick  # steal: other guests on this host
        return busy, busy + (idle + iowait) / tick, own

    def __enter__(self) -> OtherCpuUse:
        self._start = self._sample()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._sample()
        if self._start is None or end is None or end[1] <= self._start[1]:
            return
        busy, total, own = (b - a for a, b in zip(self._start, end))
        self.share = round(min(1.0, max(0.0, (busy - own) / total)), 3)
