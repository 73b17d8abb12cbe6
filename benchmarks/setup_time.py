"""`make setup` (envs/setup) from the hash-locked files: cold, no-op, and after one lock changed, in one run.

    .venvs/build/bin/python benchmarks/setup_time.py [--keep] [--baseline REV]

Works on a copy of this checkout's tracked and untracked files (not .venvs/) in a temporary folder:
1. cold: no environments, an empty uv cache and an empty text cache (everything is downloaded from the
   package index, torch's CPU wheel from pip's find-links where the machine has one);
2. no-op: the same command again;
3. one lock changed (a comment appended to envs/locks/serve-cpu.txt): only that environment syncs.
With --baseline REV, REV's own envs/setup (e.g. the pip-based one before the locks) also runs cold on a
copy of REV, in the same run, for a ratio. Prints each wall time beside the CPU model and its bf16 flags.
Goals (issue "first run"): cold <= 120 s, no-op <= 2 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cpu_line() -> str:
    from quantbuild._hardware import BF16_CPU_FLAGS, cpu_info

    cpu = cpu_info()
    bf16 = [f for f in BF16_CPU_FLAGS if f in cpu["isa"]]
    return f"{cpu['model']}, {cpu['cores']} cores, bf16 flags: {', '.join(bf16) or 'none (AVX2-class)'}"


def copy_checkout(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def timed_setup(project: Path, env: dict[str, str]) -> tuple[float, str]:
    start = time.monotonic()
    run = subprocess.run(["envs/setup"], cwd=project, env=env, capture_output=True, text=True)
    wall = time.monotonic() - start
    if run.returncode:
        raise SystemExit(f"error: envs/setup failed ({run.returncode}):\n{run.stdout[-2000:]}{run.stderr[-2000:]}")
    return wall, run.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary project (prints its path)")
    parser.add_argument("--baseline", help="also time this git revision's envs/setup, cold")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qb-bench-setup-"))
    project = work / "project"
    env = {**os.environ, "UV_CACHE_DIR": str(work / "uv-cache"), "QUANTBUILD_TEXT_DIR": str(work / "text"),
           "PIP_CACHE_DIR": str(work / "pip-cache")}
    try:
        copy_checkout(project)
        print(f"CPU: {cpu_line()}; commit {subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=REPO, capture_output=True, text=True).stdout.strip()}")
        cold, _ = timed_setup(project, env)
        print(f"cold (no environments, empty uv and text caches): {cold:.1f} s (goal <= 120 s)")
        noop, out = timed_setup(project, env)
        print(f"no-op re-run: {noop:.2f} s (goal <= 2 s)")
        with open(project / "envs/locks/serve-cpu.txt", "a") as lock:
            lock.write("# benchmark: a changed lock\n")
        changed, out = timed_setup(project, env)
        synced = [line for line in out.splitlines() if "syncing" in line]
        print(f"one lock changed (serve-cpu): {changed:.1f} s; re-synced: "
              f"{', '.join(line.split()[1].rstrip(':') for line in synced) or 'nothing'}")
        if args.baseline:
            base = work / "baseline"
            base.mkdir()
            archive = subprocess.run(["git", "archive", args.baseline], cwd=REPO, check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
            base_env = {**env, "UV_CACHE_DIR": str(work / "uv-cache-b"), "QUANTBUILD_TEXT_DIR": str(work / "text-b"),
                        "PIP_CACHE_DIR": str(work / "pip-cache-b")}
            then, _ = timed_setup(base, base_env)
            print(f"baseline {args.baseline} cold (its own setup, empty caches): {then:.1f} s; "
                  f"ratio locked/baseline {cold / then:.2f}")
        if args.keep:
            print(f"kept: {project}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
