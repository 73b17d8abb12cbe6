"""quantize: one variant of params.yaml -> a quantized model folder that `vllm serve DIR` loads.

Backends register lazily (as lm-eval's model registry does): `"module:function"` strings are
imported only when a variant uses them, so a missing optional backend costs nothing until chosen.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass

from ..errors import EnvironmentSetupError


@dataclass(frozen=True)
class Backend:
    target: str            # "quantbuild.quantize._gptqmodel:run"
    requires: tuple[str, ...]  # importable modules the backend needs
    extra: str             # what to install when they are missing
    deprecated: str | None = None


REGISTRY: dict[tuple[str, str], Backend] = {}


def register(method: str, backend: str, target: str, requires: tuple[str, ...], extra: str,
             deprecated: str | None = None) -> None:
    REGISTRY[(method, backend)] = Backend(target, requires, extra, deprecated)


_LLMC = ("llmcompressor", "compressed_tensors")
register("gptq", "gptqmodel", "quantbuild.quantize._gptqmodel:run", ("gptqmodel",), "quantbuild[gptqmodel]")
register("gptq", "llmcompressor", "quantbuild.quantize._llmcompressor:run", _LLMC, "quantbuild[llmcompressor]")
register("awq", "llmcompressor", "quantbuild.quantize._llmcompressor:run", _LLMC, "quantbuild[llmcompressor]")
register("awq", "autoawq", "quantbuild.quantize._autoawq:run", ("awq",), "quantbuild[autoawq]",
         deprecated="autoawq is deprecated upstream (its README points to llm-compressor); "
                    "use backend: llmcompressor (the default for awq)")
register("autoround", "llmcompressor", "quantbuild.quantize._llmcompressor:run", (*_LLMC, "auto_round"),
         "quantbuild[llmcompressor]")
register("fp8", "llmcompressor", "quantbuild.quantize._llmcompressor:run", _LLMC, "quantbuild[llmcompressor]")
register("auto", "llmcompressor", "quantbuild.quantize._llmcompressor:run", _LLMC, "quantbuild[llmcompressor]")
register("int8", "llmcompressor", "quantbuild.quantize._llmcompressor:run", _LLMC, "quantbuild[llmcompressor]")


def load_backend(method: str, backend: str, where: str):
    """The backend's run function; a one-line error naming the extra when it is not installed."""
    spec = REGISTRY.get((method, backend))
    if spec is None:
        choices = sorted(b for m, b in REGISTRY if m == method)
        raise EnvironmentSetupError(f"{where}.backend: {backend!r} cannot run {method} (choose {' or '.join(choices)})")
    for module in spec.requires:
        if importlib.util.find_spec(module) is None:
            raise EnvironmentSetupError(f"{where}.backend: {backend} is not installed (module {module!r} missing); "
                                        f"pip install '{spec.extra}', or run make setup")
    module_name, _, func = spec.target.partition(":")
    return getattr(importlib.import_module(module_name), func), spec

