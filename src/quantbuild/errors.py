"""Every error quantbuild raises on purpose. Each message is one line that names the field and the fix."""

from __future__ import annotations


class QuantbuildError(Exception):
    """Base class: the CLI and stage entry points print `error: <message>` and exit 2."""

    exit_code = 2

    def __str__(self) -> str:  # one line, always
        return " ".join(super().__str__().split("\n")) if self.args else self.__class__.__name__


class ConfigError(QuantbuildError):
    """params.yaml is invalid. Holds every problem found, one line each."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))

    def lines(self) -> list[str]:
        return list(self.problems)


class SourceError(QuantbuildError):
    """A model or dataset source cannot be resolved (bad scheme, not found, gated, unsafe files)."""


class CalibrationError(QuantbuildError):
    """The calibration data cannot be built as asked."""


class OutputError(QuantbuildError):
    """An output location cannot be written."""


class EnvironmentSetupError(QuantbuildError):
    """A stage's environment or an optional backend is missing."""


class HubServerError(QuantbuildError):
    """The local Hub-compatible server was misconfigured."""


class CardError(QuantbuildError):
    """A model card cannot be rendered or does not validate."""


class PublishError(QuantbuildError):
    """A release cannot be published (refused by a rule of ours or by the Hub)."""


class ReleaseError(QuantbuildError):
    """Registry tags cannot be written (dirty tree, a version that exists elsewhere, nothing to release)."""
