"""After a full run of the demo: no-op `dvc repro` vs `dvc status` (same run, same targets), and fetch
through quantbuild vs a bare snapshot_download of the same files from the local Hub server.

    python benchmarks/repro_overhead.py [--repeat 3]

Run from the project root with the quantize environment's bin first on PATH.
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--target", default="evaluate", help="what the demo reproduced (default: evaluate)")
    args = parser.parse_args()
    status = subprocess.run(["dvc", "status", args.target], capture_output=True, text=True)
    if "changed" in status.stdout or "modified" in status.stdout:
        raise SystemExit("error: the pipeline is not up to date; run `make demo` first:\n" + status.stdout[-1500:])
    repro, stat = [], []
    for _ in range(args.repeat):  # interleaved, so load on the machine affects both alike
        repro.append(timed(["dvc", "repro", args.target]))
        stat.append(timed(["dvc", "status", args.target]))
    r, s = statistics.median(repro), statistics.median(stat)
    print(f"no-op dvc repro {args.target}: median {r:.2f} s over {args.repeat} ({', '.join(f'{x:.2f}' for x in repro)})")
    print(f"dvc status {args.target}:      median {s:.2f} s over {args.repeat} ({', '.join(f'{x:.2f}' for x in stat)})")
    print(f"ratio repro/status: {r / s:.2f} (goal <= 1.1)")

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
