"""After a full run of the demo: no-op `dvc repro` (and `dvc repro --all-pipelines`) vs `dvc status` on the
whole pipeline (same run, interleaved), and fetch through quantbuild vs a bare snapshot_download of the
same files from the local Hub server.

    python benchmarks/repro_overhead.py [--repeat 5] [--target STAGE] [--skip-fetch]

Run from the project root with the build environment's bin first on PATH.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path


def timed(cmd: list[str]) -> float:
    start = time.monotonic()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.monotonic() - start


def cpu_line() -> str:
    from quantbuild._hardware import BF16_CPU_FLAGS, cpu_info

    cpu = cpu_info()
    bf16 = [f for f in BF16_CPU_FLAGS if f in cpu["isa"]]
    return f"{cpu['model']}, {cpu['cores']} cores, bf16 flags: {', '.join(bf16) or 'none (AVX2-class)'}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--target", default=None, help="a stage to limit all three commands to (default: the whole pipeline)")
    parser.add_argument("--skip-fetch", action="store_true", help="only the dvc part")
    args = parser.parse_args()
    target = [args.target] if args.target else []
    status = subprocess.run(["dvc", "status", *target], capture_output=True, text=True)
    if "changed" in status.stdout or "modified" in status.stdout or "deleted" in status.stdout:
        raise SystemExit("error: the pipeline is not up to date; run `make demo` first:\n" + status.stdout[-1500:])
    print(f"CPU: {cpu_line()}")
    commands = {"dvc status": ["dvc", "status", *target], "dvc repro (no-op)": ["dvc", "repro", *target],
                "dvc repro -P (no-op)": ["dvc", "repro", "--all-pipelines"] if not target else None}
    times: dict[str, list[float]] = {name: [] for name, cmd in commands.items() if cmd}
    for _ in range(args.repeat):  # interleaved, so load on the machine affects all alike
        for name in times:
            times[name].append(timed(commands[name]))
    base = statistics.median(times["dvc status"])
    for name, values in times.items():
        med = statistics.median(values)
        print(f"{name:22s} median {med:.2f} s over {args.repeat} ({', '.join(f'{x:.2f}' for x in values)}); "
              f"ratio to dvc status {med / base:.2f} (goal <= 1.1)")
    if args.skip_fetch:
        return

    work = Path(tempfile.mkdtemp(prefix="qb-bench-fetch-"))
    try:
        from quantbuild.hubserver import HubServer

        server = HubServer(work / "root", tokens={"t": {"user": "bench", "role": "write"}}).start()
        os.environ.update(HF_ENDPOINT=server.url, HF_TOKEN="t", HF_HUB_DISABLE_XET="1", HF_HOME=str(work / "hf"),
                          HF_HUB_DISABLE_PROGRESS_BARS="1")
        sha = server.seed("bench/base", Path("build/base/model"))
        from huggingface_hub import snapshot_download

        from quantbuild._fetch import fetch_model
        from quantbuild.config import BaseConfig

        bare, ours = [], []
        for i in range(args.repeat):
            start = time.monotonic()
            snapshot_download("bench/base", revision=sha, local_dir=work / f"bare{i}", cache_dir=work / f"c{i}")
            bare.append(time.monotonic() - start)
            os.environ["HF_HOME"] = str(work / f"hf{i}")
            start = time.monotonic()
            fetch_model(BaseConfig(source="hf://bench/base", revision=sha), work / f"ours{i}" / "model",
                        work / f"ours{i}" / "fetch.json")
            ours.append(time.monotonic() - start)
        server.stop()
        b, o = statistics.median(bare), statistics.median(ours)
        print(f"bare snapshot_download: median {b:.2f} s; quantbuild fetch (download + sha256 manifest + record): "
              f"median {o:.2f} s; ratio {o / b:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
