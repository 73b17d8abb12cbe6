"""Upload and download of a model folder through the local Hub server vs a plain file copy on the same disk.

    python benchmarks/hub_throughput.py [MODEL_DIR]      (default: build/base/model, ~270 MB)

Prints MB/s for each and the ratios (server / copy), measured in this one run.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    source = Path(sys.argv[1] if len(sys.argv) > 1 else "build/base/model")
    if not (source / "config.json").is_file():
        sys.exit(f"error: {source} is not a model folder (run `dvc repro fetch` first or pass a folder)")
    work = Path(tempfile.mkdtemp(prefix="qb-bench-hub-", dir=source.resolve().parent))
    try:
        from quantbuild.hubserver import HubServer

        token = "bench-token"
        server = HubServer(work / "root", tokens={token: {"user": "bench", "role": "write"}}).start()
        os.environ.update(HF_ENDPOINT=server.url, HF_TOKEN=token, HF_HUB_DISABLE_XET="1", HF_HOME=str(work / "hf"),
                          HF_HUB_DISABLE_PROGRESS_BARS="1")
        from huggingface_hub import HfApi, snapshot_download

        size_mb = folder_bytes(source) / 1e6
        start = time.monotonic()
        shutil.copytree(source, work / "copy")
        copy_s = time.monotonic() - start
        api = HfApi()
        api.create_repo("bench/model")
        start = time.monotonic()
        api.upload_folder(folder_path=source, repo_id="bench/model")
        upload_s = time.monotonic() - start
        start = time.monotonic()
        snapshot_download("bench/model", local_dir=work / "down")
        download_s = time.monotonic() - start
        server.stop()
        print(f"folder: {source} ({size_mb:.0f} MB)")
        print(f"plain copy:   {copy_s:6.2f} s  {size_mb / copy_s:8.1f} MB/s")
        print(f"hub upload:   {upload_s:6.2f} s  {size_mb / upload_s:8.1f} MB/s  (hashing + preupload + LFS PUT + commit)")
        print(f"hub download: {download_s:6.2f} s  {size_mb / download_s:8.1f} MB/s")
        print(f"ratio upload/copy throughput:   {copy_s / upload_s:.2f}")
        print(f"ratio download/copy throughput: {copy_s / download_s:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
