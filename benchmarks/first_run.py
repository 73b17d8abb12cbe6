"""The first run as a new user meets it: the README's `make demo` (setup, then every stage) on a fresh clone with
empty caches, timed in total and per stage.

    python3 benchmarks/first_run.py [--rev HEAD] [--warm-caches] [--keep] [--out record.json]

Clones this repository at REV into a temporary folder (with `../shared` linked beside it where this checkout has
one), points the uv, pip and built-in text caches at empty folders (--warm-caches keeps the machine's own), runs
`make demo` there, and streams its log with each stage's start. Prints the setup's and each stage's wall time
(from `dvc repro`'s "Running stage" lines), the total, and the CPU they ran on. Nothing in this checkout changes.
Goal (issue "first run", and the quality issue's "the whole demo within the first-run time goal"): 30 minutes
with setup on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
GOAL_S = 30 * 60
STAGE_LINE = re.compile(r"^Running stage '([^']+)':")


def fmt(seconds: float) -> str:
    return f"{int(seconds // 60)}m{seconds % 60:04.1f}s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", default="HEAD", help="the commit to clone (default HEAD)")
    parser.add_argument("--warm-caches", action="store_true", help="keep the machine's uv, pip and text caches")
    parser.add_argument("--keep", action="store_true", help="keep the clone (prints its path)")
    parser.add_argument("--out", help="write the record here (JSON)")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", args.rev], cwd=REPO, check=True, capture_output=True,
                            text=True).stdout.strip()
    from quantbuild._hardware import cpu_info
    from setup_time import cpu_line  # beside this file: the same CPU line as the setup benchmark prints

    cpu_text, cpu = cpu_line(), cpu_info()
    work = Path(tempfile.mkdtemp(prefix="qb-first-run-"))
    project = work / "project"
    env = dict(os.environ)
    if not args.warm_caches:
        env.update(UV_CACHE_DIR=str(work / "uv-cache"), PIP_CACHE_DIR=str(work / "pip-cache"),
                   QUANTBUILD_TEXT_DIR=str(work / "text"))
    print(f"first run of {commit[:7]} in {project}; CPU: {cpu_text}; caches: "
          f"{'the machine' if args.warm_caches else 'empty'}", flush=True)
    stages: list[list] = []  # [name, start offset]
    try:
        subprocess.run(["git", "clone", "-q", "--no-checkout", str(REPO), str(project)], check=True)
        subprocess.run(["git", "checkout", "-q", commit], cwd=project, check=True)
        if (REPO.parent / "shared").is_dir():
            (work / "shared").symlink_to(REPO.parent / "shared")
        start = time.monotonic()
        with subprocess.Popen(["make", "demo"], cwd=project, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, bufsize=1) as make:
            for line in make.stdout:  # type: ignore[union-attr]
                now = time.monotonic() - start
                hit = STAGE_LINE.match(line)
                if hit:
                    stages.append([hit.group(1), now])
                print(f"{fmt(now):>9} {line}", end="", flush=True)
        total = time.monotonic() - start
        if make.returncode:
            raise SystemExit(f"error: make demo failed ({make.returncode}) after {fmt(total)}; the log is above")
        setup = stages[0][1] if stages else total
        rows = [{"stage": name, "seconds": round((stages[i + 1][1] if i + 1 < len(stages) else total) - at, 1)}
                for i, (name, at) in enumerate(stages)]
        print(f"\nfirst run of {commit[:7]}, CPU: {cpu_text}")
        print(f"  {'setup (make setup)':<28} {fmt(setup):>9}")
        for row in rows:
            print(f"  {row['stage']:<28} {fmt(row['seconds']):>9}")
        verdict = "within" if total <= GOAL_S else "OVER"
        print(f"  {'total':<28} {fmt(total):>9}  ({verdict} the {GOAL_S // 60}-minute goal; stages alone "
              f"{fmt(total - setup)})")
        if args.out:
            Path(args.out).write_text(json.dumps({
                "benchmark": "first_run", "date": time.strftime("%Y-%m-%d"), "commit": commit,
                "caches": "warm" if args.warm_caches else "empty", "cpu": cpu, "setup_s": round(setup, 1),
                "stages": rows, "total_s": round(total, 1), "goal_s": GOAL_S}, indent=1) + "\n")
        if args.keep:
            print(f"kept: {project}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
