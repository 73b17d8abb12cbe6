"""Upload and download of a model folder through the local Hub server vs a plain file copy on the same disk,
and (with --baseline REV) the same against the server of another commit, in this one run.

    python benchmarks/hub_throughput.py [MODEL_DIR] [--baseline REV] [--rounds N]
    (MODEL_DIR default: build/base/model, ~270 MB)

Each server runs as `quantbuild hub serve` in its own process (the baseline's from `git archive REV`);
rounds alternate between them so load on the machine falls on both alike. Prints MB/s per round, the
median ratios (server / copy), and with a baseline the hardened server's throughput relative to it.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOKEN = "bench-token"


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(src: Path, root: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(src), "QUANTBUILD_HUB_TOKENS": f"{TOKEN}=bench:write"}
    proc = subprocess.Popen([sys.executable, "-c", "from quantbuild.cli import main; main()", "hub", "serve",
                             "--root", str(root), "--port", str(port)], env=env, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"error: the server from {src} did not start")


def one_round(source: Path, url: str, work: Path, name: str) -> tuple[float, float]:
    from huggingface_hub import HfApi, snapshot_download

    api = HfApi(endpoint=url, token=TOKEN)
    repo = f"bench/{name}"
    api.create_repo(repo)
    start = time.monotonic()
    api.upload_folder(folder_path=source, repo_id=repo)
    upload_s = time.monotonic() - start
    start = time.monotonic()
    snapshot_download(repo, local_dir=work / f"down-{name}", endpoint=url, token=TOKEN)
    download_s = time.monotonic() - start
    shutil.rmtree(work / f"down-{name}")
    return upload_s, download_s


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir", nargs="?", default="build/base/model")
    parser.add_argument("--baseline", help="a git revision whose Hub server to measure beside this one")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    source = Path(args.model_dir)
    if not (source / "config.json").is_file():
        sys.exit(f"error: {source} is not a model folder (run `dvc repro fetch` first or pass a folder)")
    work = Path(tempfile.mkdtemp(prefix="qb-bench-hub-", dir=source.resolve().parent))
    os.environ.update(HF_HUB_DISABLE_XET="1", HF_HOME=str(work / "hf"), HF_HUB_DISABLE_PROGRESS_BARS="1")
    servers = {"this tree": REPO / "src"}
    if args.baseline:
        archive = subprocess.run(["git", "archive", args.baseline, "src/quantbuild"], cwd=REPO, check=True,
                                 capture_output=True).stdout
        tarfile.open(fileobj=BytesIO(archive)).extractall(work / "baseline")
        servers[f"baseline {args.baseline}"] = work / "baseline" / "src"
    procs = {}
    try:
        for label, src in servers.items():
            procs[label] = start_server(src, work / f"root-{len(procs)}")
        size_mb = folder_bytes(source) / 1e6
        cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
        print(f"folder: {source} ({size_mb:.0f} MB); {os.cpu_count()} cores, {cpu}, {platform.python_version()}")
        ratios: dict[str, list[tuple[float, float]]] = {label: [] for label in servers}
        for r in range(args.rounds):
            start = time.monotonic()
            shutil.copytree(source, work / "copy")
            copy_s = time.monotonic() - start
            shutil.rmtree(work / "copy")
            for label, (_, url) in procs.items():
                up, down = one_round(source, url, work, f"r{r}-{label.split()[0]}")
                ratios[label].append((copy_s / up, copy_s / down))
                print(f"round {r + 1} {label:>24}: copy {size_mb / copy_s:7.1f} MB/s, upload {size_mb / up:7.1f} MB/s, "
                      f"download {size_mb / down:7.1f} MB/s")
        medians = {label: (statistics.median(u for u, _ in rows), statistics.median(d for _, d in rows))
                   for label, rows in ratios.items()}
        for label, (up, down) in medians.items():
            print(f"{label}: median ratio upload/copy {up:.2f}, download/copy {down:.2f}")
        if args.baseline:
            (up, down), (bup, bdown) = medians["this tree"], medians[f"baseline {args.baseline}"]
            print(f"this tree / baseline: upload {up / bup:.2f}, download {down / bdown:.2f} (1.00 = no cost)")
    finally:
        for proc, _ in procs.values():
            proc.terminate()
            proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
