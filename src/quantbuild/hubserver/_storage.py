"""On-disk state of the Hub server: content-addressed blobs, commits as JSON, refs updated atomically.

Layout under the root:
  objects/<sha256[:2]>/<sha256>          every file body, small or large, stored once
  repos/<type>/<org>/<name>/repo.json     {private, gated, access, created_at}
  repos/<type>/<org>/<name>/refs.json     {branches: {name: sha}, tags: {name: {commit, message}}}
  repos/<type>/<org>/<name>/commits/<sha>.json
A commit is written before the ref that points to it, and refs.json is replaced with os.replace, so
a crash or a refused commit never leaves a branch pointing at half a change.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

REPO_TYPES = {"model": "models", "dataset": "datasets", "space": "spaces"}
NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?$")
SHA_RE = re.compile(r"^[0-9a-f]{40}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
REF_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
MAX_PATH = 1000
LFS_PATTERNS = re.compile(r"\.(safetensors|bin|pt|pth|ckpt|gguf|onnx|h5|msgpack|parquet|arrow|npy|npz|zip|gz|"
                          r"tar|zst|bz2|xz|7z|pkl|pickle|model|tflite|ot|joblib)$", re.I)
LFS_THRESHOLD = 10 * 1024 * 1024
GITATTRIBUTES = "".join(f"*.{ext} filter=lfs diff=lfs merge=lfs -text\n" for ext in
                        ("safetensors", "bin", "pt", "gguf", "onnx", "parquet", "arrow", "zip", "tar.gz"))


class StorageError(Exception):
    """A request the storage refuses: status, X-Error-Code and message for the HTTP layer."""

    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.code = status, code


from .._io import git_blob_oid  # noqa: E402  (one definition for the server and the publish stage)


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def valid_repo_name(org: str, name: str) -> bool:
    return isinstance(org, str) and isinstance(name, str) and bool(NAME_RE.match(org) and NAME_RE.match(name)) \
        and ".." not in org + name


def valid_ref_name(name: str) -> bool:
    return isinstance(name, str) and bool(REF_RE.match(name)) and ".." not in name and not name.endswith("/")


def clean_path(path: str) -> str:
    """A repo-relative path, or StorageError: no absolute paths, no '..', no empty segments, no control
    characters."""
    if not isinstance(path, str) or not path or len(path) > MAX_PATH or path.startswith("/") or "\\" in path \
            or any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise StorageError(400, f"invalid path {path!r}")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts) or parts[0] == ".git":
        raise StorageError(400, f"invalid path {path!r}")
    return path


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


@dataclass
class Entry:
    sha256: str
    size: int
    lfs: bool
    blob_oid: str = ""  # git blob sha1 of the bytes (regular files)

    @property
    def git_oid(self) -> str:  # what git would store: the pointer for LFS files, the bytes otherwise
        return git_blob_oid(lfs_pointer(self.sha256, self.size)) if self.lfs else self.blob_oid

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size, "lfs": self.lfs, "oid": self.git_oid}


def entry_from_json(data: dict[str, Any]) -> Entry:
    return Entry(data["sha256"], data["size"], data["lfs"], "" if data["lfs"] else data["oid"])


def should_use_lfs(path: str, size: int, sample: bytes) -> bool:
    return size >= LFS_THRESHOLD or bool(LFS_PATTERNS.search(path)) or b"\0" in sample


class Storage:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        (self.root / "objects").mkdir(parents=True, exist_ok=True)
        (self.root / "repos").mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()  # commits and ref updates of this process, one at a time
        self._root_lock = self._lock_root()  # and one process per root

    def _lock_root(self):
        """Two servers on one root would both read refs.json, commit, and the later write would drop the
        other's commit. An exclusive lock on the root for the server's lifetime makes that impossible."""
        fh = open(self.root / ".lock", "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise StorageError(409, f"{self.root} is in use by another quantbuild hub server (pid {holder}): "
                               "one server per root; stop it or choose another --root") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        return fh

    def close(self) -> None:
        if self._root_lock is not None:
            self._root_lock.close()  # closing the file releases the lock
            self._root_lock = None

    # --- blobs ---------------------------------------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        # Every object name is checked here, at the one place names become paths: an oid from a request
        # or from a stored commit can never point outside objects/.
        if not isinstance(sha256, str) or not SHA256_RE.match(sha256):
            raise StorageError(400, f"invalid object id {sha256!r}: 64 lowercase hex digits (sha256)")
        return self.root / "objects" / sha256[:2] / sha256

    def has_blob(self, sha256: str, size: int | None = None) -> bool:
        path = self.blob_path(sha256)
        return path.is_file() and (size is None or path.stat().st_size == size)

    def put_bytes(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        if not self.has_blob(sha):
            self._install(self._write_tmp([data]), sha)
        return sha

    def put_stream(self, chunks: Iterable[bytes], expect_sha256: str, expect_size: int | None) -> None:
        """Store an upload only if its sha256 (and size) match what the client announced."""
        digest, size = hashlib.sha256(), 0

        def counted():
            nonlocal size
            for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                yield chunk

        tmp = self._write_tmp(counted())
        if digest.hexdigest() != expect_sha256 or (expect_size is not None and size != expect_size):
            tmp.unlink(missing_ok=True)
            raise StorageError(400, f"upload refused: content has sha256 {digest.hexdigest()} and size {size}, "
                               f"announced {expect_sha256} and {expect_size}")
        self._install(tmp, expect_sha256)

    def _write_tmp(self, chunks: Iterable[bytes]) -> Path:
        fd, name = tempfile.mkstemp(dir=self.root / "tmp")
        with os.fdopen(fd, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
        return Path(name)

    def _install(self, tmp: Path, sha256: str) -> None:
        dest = self.blob_path(sha256)
        dest.parent.mkdir(exist_ok=True)
        os.replace(tmp, dest)

    # --- repos ---------------------------------------------------------------------------------
    def repo_dir(self, rtype: str, repo_id: str) -> Path:
        org, _, name = repo_id.partition("/")
        if rtype not in REPO_TYPES or not valid_repo_name(org, name):
            raise StorageError(400, f"invalid repo id {repo_id!r}")
        return self.root / "repos" / REPO_TYPES[rtype] / org / name

    def repo_meta(self, rtype: str, repo_id: str) -> dict[str, Any] | None:
        path = self.repo_dir(rtype, repo_id) / "repo.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def _write_json(self, path: Path, data: Any) -> None:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, sort_keys=True)
        os.replace(name, path)

    def create_repo(self, rtype: str, repo_id: str, *, private: bool = False, gated: bool = False,
                    access: list[str] | None = None, author: str = "quantbuild") -> bool:
        """Create with an initial commit holding .gitattributes, as the Hub does. False if it exists."""
        with self.lock:
            folder = self.repo_dir(rtype, repo_id)
            if (folder / "repo.json").is_file():
                return False
            (folder / "commits").mkdir(parents=True, exist_ok=True)
            self._write_json(folder / "refs.json", {"branches": {}, "tags": {}})
            self._write_json(folder / "repo.json", {"private": private, "gated": gated, "access": access or [],
                                                    "created_at": time.time()})
            self.commit(rtype, repo_id, "main", [("add", ".gitattributes", GITATTRIBUTES.encode(), None)],
                        "initial commit", "", author=author, create_branch=True)
            return True

    def delete_repo(self, rtype: str, repo_id: str) -> None:
        with self.lock:
            folder = self.repo_dir(rtype, repo_id)
            if not (folder / "repo.json").is_file():
                raise StorageError(404, f"{rtype} {repo_id} not found", "RepoNotFound")
            shutil.rmtree(folder)

    def refs(self, rtype: str, repo_id: str) -> dict[str, Any]:
        return json.loads((self.repo_dir(rtype, repo_id) / "refs.json").read_text())

    def get_commit(self, rtype: str, repo_id: str, sha: str) -> dict[str, Any] | None:
        path = self.repo_dir(rtype, repo_id) / "commits" / f"{sha}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def resolve(self, rtype: str, repo_id: str, revision: str) -> str:
        if not isinstance(revision, str) or not revision or len(revision) > 256:
            raise StorageError(400, f"invalid revision {revision!r}")
        refs = self.refs(rtype, repo_id)
        if revision in refs["branches"]:
            return refs["branches"][revision]
        if revision in refs["tags"]:
            return refs["tags"][revision]["commit"]
        for prefix, table in (("refs/heads/", "branches"), ("refs/tags/", "tags")):
            if revision.startswith(prefix) and revision[len(prefix):] in refs[table]:
                target = refs[table][revision[len(prefix):]]
                return target if table == "branches" else target["commit"]
        if SHA_RE.match(revision) and self.get_commit(rtype, repo_id, revision):
            return revision
        raise StorageError(404, f"revision {revision!r} not found in {repo_id}", "RevisionNotFound")

    def tree(self, rtype: str, repo_id: str, sha: str) -> dict[str, Entry]:
        commit = self.get_commit(rtype, repo_id, sha)
        return {path: entry_from_json(data) for path, data in commit["tree"].items()}

    def history(self, rtype: str, repo_id: str, sha: str) -> list[dict[str, Any]]:
        out = []
        while sha:
            commit = self.get_commit(rtype, repo_id, sha)
            out.append(commit)
            sha = commit["parents"][0] if commit["parents"] else None
        return out

    def repo_lfs(self, rtype: str, repo_id: str) -> set[str]:
        """LFS objects uploaded to or committed in this repo. As on the Hub, an object stored for another
        repo must be uploaded again (the bytes are still stored once)."""
        path = self.repo_dir(rtype, repo_id) / "lfs-objects.json"
        return set(json.loads(path.read_text())) if path.is_file() else set()

    def add_repo_lfs(self, rtype: str, repo_id: str, oids: Iterable[str]) -> None:
        with self.lock:
            known = self.repo_lfs(rtype, repo_id)
            new = set(oids) - known
            if new:
                self._write_json(self.repo_dir(rtype, repo_id) / "lfs-objects.json", sorted(known | new))

    def commit(self, rtype: str, repo_id: str, branch: str, operations: list[tuple], title: str, description: str,
               *, parent_commit: str | None = None, author: str = "quantbuild", create_branch: bool = False) -> str:
        """Apply operations atomically. ops: ("add", path, bytes|None, Entry|None), ("delete", path),
        ("delete_folder", path). Blobs of LFS entries must already be stored."""
        with self.lock:
            refs = self.refs(rtype, repo_id)
            head = refs["branches"].get(branch)
            if head is None and not create_branch:
                raise StorageError(404, f"branch {branch!r} not found in {repo_id} (commits go to a branch)",
                                   "RevisionNotFound")
            if parent_commit and head and parent_commit != head:
                raise StorageError(412, f"parentCommit {parent_commit} is not the head of {branch} ({head})")
            tree = {p: e for p, e in self.tree(rtype, repo_id, head).items()} if head else {}
            for op in operations:
                kind, path = op[0], clean_path(op[1])
                if kind == "add":
                    data, entry = op[2], op[3]
                    if entry is None:
                        sha = self.put_bytes(data)
                        entry = Entry(sha, len(data), False, git_blob_oid(data))
                    elif not self.has_blob(entry.sha256, entry.size):
                        raise StorageError(422, f"LFS object {entry.sha256} for {path} was never uploaded")
                    else:
                        self.add_repo_lfs(rtype, repo_id, [entry.sha256])
                    tree[path] = entry
                elif kind == "delete":
                    if path not in tree:
                        raise StorageError(404, f"cannot delete {path}: not in {branch}", "EntryNotFound")
                    del tree[path]
                elif kind == "delete_folder":
                    doomed = [p for p in tree if p.startswith(path.rstrip("/") + "/")]
                    if not doomed:
                        raise StorageError(404, f"cannot delete folder {path}: not in {branch}", "EntryNotFound")
                    for p in doomed:
                        del tree[p]
            now = time.time()
            body = {"parents": [head] if head else [], "tree": {p: e.to_json() for p, e in sorted(tree.items())},
                    "title": title, "message": description, "author": author, "date": iso(now)}
            sha = hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest()
            body["id"] = sha
            self._write_json(self.repo_dir(rtype, repo_id) / "commits" / f"{sha}.json", body)
            refs["branches"][branch] = sha
            self._write_json(self.repo_dir(rtype, repo_id) / "refs.json", refs)
            return sha

    def set_ref(self, rtype: str, repo_id: str, kind: str, name: str, target: str | None, message: str = "") -> None:
        """Create (target) or delete (None) a tag or branch; 409 when creating one that exists."""
        table = "tags" if kind == "tag" else "branches"
        with self.lock:
            refs = self.refs(rtype, repo_id)
            if target is None:
                if name not in refs[table]:
                    raise StorageError(404, f"{kind} {name!r} not found", "RevisionNotFound")
                if kind == "branch" and name == "main":
                    raise StorageError(403, "the main branch cannot be deleted")
                del refs[table][name]
            else:
                if name in refs[table]:
                    raise StorageError(409, f"{kind} {name!r} already exists in {repo_id}")
                if not valid_ref_name(name):
                    raise StorageError(400, f"invalid {kind} name {name!r}")
                refs[table][name] = {"commit": target, "message": message} if kind == "tag" else target
            self._write_json(self.repo_dir(rtype, repo_id) / "refs.json", refs)
