"""pytest plugin: a session-wide local Hub server that every real client in the test run talks to.

huggingface_hub, datasets and transformers read HF_ENDPOINT when they are imported, so the server
starts in `pytest_configure`, before any test module imports them, and the environment is set for
this process and every subprocess (dvc, stage scripts, vLLM). Tests get it through the `hub` fixture.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .hubserver import HubServer

WRITE_TOKEN = "hf_quantbuildtestwritetoken0000000001"
READ_TOKEN = "hf_quantbuildtestreadtoken00000000002"
OTHER_TOKEN = "hf_quantbuildtestothertoken0000000003"
ADMIN_TOKEN = "hf_quantbuildtestadmintoken0000000004"
USER = "qb-tester"

_state: dict = {}


@dataclass
class Hub:
    server: HubServer
    write_token: str = WRITE_TOKEN
    read_token: str = READ_TOKEN
    other_token: str = OTHER_TOKEN
    admin_token: str = ADMIN_TOKEN
    user: str = USER
    _counter: itertools.count = field(default_factory=itertools.count)

    @property
    def url(self) -> str:
        return self.server.url

    def repo_id(self, stem: str) -> str:
        """A repo id no other test uses (the server lives for the whole session)."""
        return f"{self.user}/{stem}-{os.getpid()}-{next(self._counter)}"

    def seed(self, repo_id: str, files, **kwargs) -> str:
        return self.server.seed(repo_id, files, **kwargs)


def start_session_hub(root: Path) -> Hub:
    tokens = {WRITE_TOKEN: {"user": USER, "role": "write"}, READ_TOKEN: {"user": "qb-reader", "role": "read"},
              OTHER_TOKEN: {"user": "qb-other", "role": "write"}, ADMIN_TOKEN: {"user": "qb-admin", "role": "admin"}}
    server = HubServer(root / "hub", tokens=tokens).start()
    os.environ.update({
        "HF_ENDPOINT": server.url,
        "HF_TOKEN": WRITE_TOKEN,
        "HF_HUB_DISABLE_XET": "1",  # huggingface_hub would send large files to Xet, which this server is not
        "HF_HOME": str(root / "hf-home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_ETAG_TIMEOUT": "30",
        "HF_HUB_DOWNLOAD_TIMEOUT": "60",
    })
    os.environ.pop("HF_HUB_OFFLINE", None)
    os.environ.pop("HF_DATASETS_OFFLINE", None)
    return Hub(server)


def pytest_configure(config: pytest.Config) -> None:
    if "hub" in _state:
        return
    root = Path(tempfile.mkdtemp(prefix="quantbuild-test-hub-"))
    _state.update(root=root, hub=start_session_hub(root))


def pytest_unconfigure(config: pytest.Config) -> None:
    hub = _state.pop("hub", None)
    if hub is not None:
        hub.server.stop()
        shutil.rmtree(_state.pop("root"), ignore_errors=True)


@pytest.fixture
def hub() -> Hub:
    """The session's Hub server; faults are cleared after each test."""
    handle = _state["hub"]
    handle.server.faults.clear()
    yield handle
    handle.server.faults.clear()


@pytest.fixture(scope="session")
def session_hub() -> Hub:
    """The same server for module- and session-scoped fixtures (faults are not cleared for them)."""
    return _state["hub"]
