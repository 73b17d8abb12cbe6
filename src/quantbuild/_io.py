"""Atomic outputs, hashing and JSON writing shared by every stage."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import OutputError

CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def file_manifest(folder: str | Path) -> dict[str, dict[str, Any]]:
    """{relative path: {sha256, size}} for every file under `folder`, sorted."""
    folder = Path(folder)
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        out[path.relative_to(folder).as_posix()] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    return out


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _check_writable(parent: Path, field: str) -> None:
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{field}: cannot create {parent} ({exc.strerror}); choose a writable location") from None
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{field}: {parent} is not writable; fix its permissions or choose another location")


@contextlib.contextmanager
def atomic_outputs(*targets: str | Path, field: str = "output") -> Iterator[list[Path]]:
    """Yield temporary paths for `targets`; rename them into place only if the block succeeds.

    The temporary paths sit beside their targets (same filesystem, so the rename is atomic). An
    exception, or a kill, leaves the targets untouched and no half-written artifact behind.
    """
    targets = [Path(t) for t in targets]
    staging = []
    for target in targets:
        _check_writable(target.parent, field)
        # A run killed with -9 cannot clean up: its staging folders are removed by the next run.
        for stale in target.parent.glob(f".{target.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        staging.append(Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent)))
    temps = [s / t.name for s, t in zip(staging, targets)]
    try:
        yield temps
        for temp, target in zip(temps, targets):
            if not temp.exists():
                raise OutputError(f"{field}: the stage did not produce {target}")
        for temp, target in zip(temps, targets):
            _normalize_modes(temp)
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            os.replace(temp, target)
    finally:
        for s in staging:
            shutil.rmtree(s, ignore_errors=True)


def _normalize_modes(path: Path) -> None:
    """Some writers (tempfile, safetensors) create 0600 files; outputs are shared artifacts: 0644/0755."""
    umask = os.umask(0)
    os.umask(umask)
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for p in paths:
        if not p.is_symlink():
            p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)


def safetensors_headers(folder: str | Path) -> dict[str, dict[str, Any]]:
    """Every tensor's header entry (dtype, shape, data_offsets) across a folder's *.safetensors files,
    read without loading any weights."""
    entries: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        with open(path, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(length))
        entries.update({k: v for k, v in header.items() if k != "__metadata__"})
    return entries


def git_blob_oid(data: bytes) -> str:
    """The blob id git (and the Hub) computes for a file's bytes."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def write_json(path: str | Path, data: Any) -> None:
    Path(path).write_text(dumps(data))


def folder_size(folder: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
