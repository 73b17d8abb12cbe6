"""Shared entry for stages/*.py: one-line errors and a non-zero exit, never a traceback for user errors."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

from ._progress import fmt_seconds, log
from .errors import ConfigError, QuantbuildError


def report(exc: QuantbuildError) -> int:
    lines = exc.lines() if isinstance(exc, ConfigError) else [str(exc)]
    for line in lines:
        print(f"error: {line}", file=sys.stderr, flush=True)
    return exc.exit_code


def _check_code_identity(name: str) -> None:
    """The code about to run must be what .quantbuild/code.yaml records for this stage (what DVC keyed the
    stage's results on). Checked here, in the stage's own environment, because that environment's quantbuild
    is what runs: one kept elsewhere ($QUANTBUILD_ENV_*) may hold another version than the CLI."""
    from pathlib import Path

    from ._codeid import CODE_FILE, STAGES, recorded_id, stage_id

    key = name.split("@")[0]
    if key not in STAGES or not (Path.cwd() / CODE_FILE).is_file():
        return  # called outside a scaffolded project (python -m in a test folder): nothing recorded to match
    if recorded_id(Path.cwd(), key) != stage_id(key):
        print(f"error: {name}: this environment's quantbuild is not the code {CODE_FILE} records for stage {key}; "
              "run `quantbuild setup` (environments kept elsewhere need the same quantbuild), then dvc repro",
              file=sys.stderr)
        sys.exit(2)


def run_stage(name: str, work: Callable[[], Any]) -> None:
    start = time.monotonic()
    _check_code_identity(name)
    log(name, "started")
    _adopt_orphans()
    try:
        work()
    except QuantbuildError as exc:
        sys.exit(report(exc))
    except KeyboardInterrupt:
        print(f"error: {name}: interrupted; no partial output was kept", file=sys.stderr)
        sys.exit(130)
    finally:
        _end_descendants()
    log(name, f"done in {fmt_seconds(time.monotonic() - start)}")


def _adopt_orphans() -> None:
    """Engines start helper processes (vLLM: an engine core and its workers). When one dies first, its
    children would be re-parented to init and outlive the stage, computing on and holding dvc's output
    pipes open (seen: a worker spinning at 100 % CPU for an hour after its stage failed). As a child
    subreaper this process inherits them instead, so the stage can end them when it ends."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER (Linux)
    except (OSError, AttributeError):
        pass


def _descendants() -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = [], [os.getpid()]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


def _end_descendants(grace: float = 3.0) -> None:
    """Every process this stage started, directly or not, ends with it: SIGTERM, then SIGKILL."""
    pids = _descendants()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + grace
        while sig == signal.SIGTERM and time.monotonic() < deadline and _alive(pids):
            time.sleep(0.1)
        pids = _alive(pids)
        if not pids:
            return


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)  # reap our own (adopted) children
            if done == 0:
                alive.append(pid)
        except ChildProcessError:  # not ours to reap: alive unless gone or a zombie
            try:
                if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    alive.append(pid)
            except (OSError, IndexError):
                pass
        except OSError:
            pass
    return alive
