"""quantbuild: turn a Hugging Face causal LM into versioned, evaluated, published quantized releases.

The public façade: import from here. Heavy dependencies (torch, transformers, quantizers, vLLM) are
imported only inside the functions that need them.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .config import Params, load_params  # noqa: E402  (light: yaml + dataclasses)
from .errors import (  # noqa: E402
    CalibrationError,
    ConfigError,
    EnvironmentSetupError,
    OutputError,
    QuantbuildError,
    SourceError,
)

_LAZY = {name: "quantbuild.api" for name in ("check", "release", "fetch", "calibrate", "sensitivity", "inputs",
                                               "quantize", "evaluate", "gate", "select", "card", "publish")}
_LAZY["HubServer"] = "quantbuild.hubserver"


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'quantbuild' has no attribute {name!r}")


__all__ = ["Params", "load_params", "QuantbuildError", "ConfigError", "SourceError", "CalibrationError",
           "OutputError", "EnvironmentSetupError", *_LAZY]
