"""envs/setup on a copy of this checkout: environments from the hash-locked files, a no-op re-run that does
nothing, a changed lock that re-syncs only its environment, and a lock whose hash does not match refused."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def setup(project: Path, *envs: str) -> subprocess.CompletedProcess:
    return subprocess.run(["envs/setup", *envs], cwd=project, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "QUANTBUILD_TEXT_DIR": str(project / "text")})


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("setup") / "project"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO_ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        if (REPO_ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, dest / name)
    # the text cache is shared with the checkout's (no download needed for this test)
    shutil.copytree(Path(os.environ.get("QUANTBUILD_TEXT_DIR", Path.home() / ".cache/quantbuild/text")),
                    dest / "text", dirs_exist_ok=True)
    first = setup(dest, "build")
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert "[setup] build: syncing .venvs/build to envs/locks/build-cpu.txt" in first.stdout
    return dest


def test_the_environment_is_exactly_the_lock(project):
    freeze = subprocess.run([str(project / ".venvs/.uv/bin/uv"), "pip", "freeze", "--python",
                             str(project / ".venvs/build/bin/python")], capture_output=True, text=True, check=True)
    def name(line: str) -> str:  # PEP 503 normalisation: flufl.lock == flufl-lock
        return re.sub(r"[-_.]+", "-", line.split("==")[0]).lower()

    installed = {name(line) for line in freeze.stdout.splitlines() if "==" in line}
    lock = (project / "envs/locks/build-cpu.txt").read_text().splitlines()
    locked = {name(line) for line in lock if line and line[0].isalnum() and "==" in line}
    assert locked <= installed and len(locked) > 150
    assert installed - locked <= {"quantbuild"}  # this checkout, editable; nothing unlocked beside it


def test_a_no_op_re_run_does_nothing_and_is_fast(project):
    start = time.monotonic()
    again = setup(project, "build")
    took = time.monotonic() - start
    assert again.returncode == 0 and "[setup] build: up to date" in again.stdout
    assert "syncing" not in again.stdout and took < 2.0, took


def test_a_changed_lock_re_syncs_only_its_environment(project):
    with open(project / "envs/locks/serve-cpu.txt", "a") as lock:
        lock.write("# another environment's lock changed\n")
    other = setup(project, "build")
    assert "[setup] build: up to date" in other.stdout
    with open(project / "envs/locks/build-cpu.txt", "a") as lock:
        lock.write("# this environment's lock changed\n")
    mine = setup(project, "build")
    assert mine.returncode == 0 and "[setup] build: syncing" in mine.stdout


def test_a_hash_that_does_not_match_is_refused(project):
    lock = project / "envs/locks/build-cpu.txt"
    text = lock.read_text()
    start = text.index("\nsix==")
    end = text.index("\n    # via", start)
    # every hash of one package replaced: no file of it can satisfy the lock
    lock.write_text(text[:start] + re.sub(r"sha256:[0-9a-f]{64}", "sha256:" + "0" * 64, text[start:end]) + text[end:])
    uv, python = project / ".venvs/.uv/bin/uv", project / ".venvs/build/bin/python"
    subprocess.run([str(uv), "pip", "uninstall", "-q", "--python", str(python), "six"], check=True)
    try:
        refused = setup(project, "build")
        assert refused.returncode != 0
        assert "hash" in (refused.stdout + refused.stderr).lower()
        assert not (project / ".venvs/build/.quantbuild-stamp").exists()  # the next run starts over
    finally:
        lock.write_text(text)
    assert setup(project, "build").returncode == 0
