"""A stage ends every process it started, even ones whose parent died first (vLLM's workers did not)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

CODE = """
import subprocess, sys, time
from quantbuild._stage import run_stage

def work():
    # a helper that starts a worker and dies at once, as a crashed engine core does: the worker is orphaned
    subprocess.run([sys.executable, "-c",
                    "import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', "
                    "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)']); "
                    "print(p.pid, flush=True)"], stdout=open(sys.argv[1], "w"), check=True)
    time.sleep(0.5)
    raise RuntimeError("the engine died")

run_stage("evaluate@x", work)
"""


def test_a_failed_stage_leaves_no_process_behind(tmp_path):
    pid_file = tmp_path / "worker.pid"
    result = subprocess.run([sys.executable, "-c", CODE, str(pid_file)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "the engine died" in result.stderr
    worker = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            break  # gone
        if state == "Z":
            break
        time.sleep(0.1)
    else:
        os.kill(worker, 9)
        raise AssertionError("the orphaned worker (it ignores SIGTERM) outlived its stage")
