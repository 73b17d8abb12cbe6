"""A Hugging Face Hub-compatible HTTP server for tests and air-gapped teams.

Serves what huggingface_hub, transformers, datasets and lm-eval use to download, and what
huggingface_hub uses to upload (repos, preupload, LFS, commits, tags, branches). Start it with
`quantbuild hub serve --root DIR`, or in Python:

    with HubServer(root, tokens={"hf_xxx": {"user": "me", "role": "write"}}) as hub:
        os.environ["HF_ENDPOINT"] = hub.url
"""

from __future__ import annotations

import collections
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ._app import HubHandler
from ._faults import Faults
from ._storage import REPO_TYPES, Entry, Storage, StorageError, should_use_lfs

__all__ = ["HubServer", "Faults", "Storage"]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class HubServer:
    def __init__(self, root: str | Path, *, host: str = "127.0.0.1", port: int = 0,
                 tokens: dict[str, dict[str, str]] | None = None, faults: list[dict] | None = None,
                 verbose: bool = False):
        self.storage = Storage(root)
        self.httpd = _Server((host, port), HubHandler)
        self.httpd.storage = self.storage
        self.httpd.tokens = dict(tokens or {})
        self.httpd.faults = Faults(faults)
        self.httpd.tickets = {}
        self.httpd.stats = collections.Counter()
        self.httpd.verbose = verbose
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def faults(self) -> Faults:
        return self.httpd.faults

    @property
    def stats(self) -> collections.Counter:
        return self.httpd.stats

    def start(self) -> "HubServer":
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="quantbuild-hub", daemon=True)
        self.thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self.thread:
            self.thread.join(timeout=5)

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- seeding, without HTTP (for fixtures and `hub seed`) -----------------------------------
    def seed(self, repo_id: str, files: dict[str, bytes | str | Path] | str | Path, *, repo_type: str = "model",
             branch: str = "main", message: str = "seed", tags: list[str] = (), private: bool = False,
             gated: bool = False, access: list[str] | None = None) -> str:
        """Create `repo_id` (if needed) and commit `files` (a mapping path -> bytes/str/Path, or a folder).
        Returns the commit sha; `tags` are created at it."""
        if repo_type not in REPO_TYPES:
            raise StorageError(400, f"repo_type must be one of {', '.join(REPO_TYPES)}")
        self.storage.create_repo(repo_type, repo_id, private=private, gated=gated, access=access)
        if isinstance(files, (str, Path)):
            folder = Path(files)
            files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
        ops = []
        for path, content in files.items():
            data = content.read_bytes() if isinstance(content, Path) else \
                content.encode() if isinstance(content, str) else content
            if should_use_lfs(path, len(data), data[:512]):
                sha = self.storage.put_bytes(data)
                ops.append(("add", path, None, Entry(sha, len(data), True)))
            else:
                ops.append(("add", path, data, None))
        refs = self.storage.refs(repo_type, repo_id)
        if branch not in refs["branches"]:  # a new branch starts from main, as on the Hub
            self.storage.set_ref(repo_type, repo_id, "branch", branch, refs["branches"]["main"])
        sha = self.storage.commit(repo_type, repo_id, branch, ops, message, "")
        for tag in tags:
            self.storage.set_ref(repo_type, repo_id, "tag", tag, sha)
        return sha


def load_tokens(tokens_file: str | Path | None = None, env_value: str | None = None) -> dict[str, dict[str, str]]:
    """Tokens from a YAML/JSON file ({token: {user, role}}) and/or "tok=user:role,tok2=user2:read"."""
    import yaml

    from ..errors import HubServerError

    tokens: dict[str, dict[str, str]] = {}
    if tokens_file:
        data = yaml.safe_load(Path(tokens_file).read_text()) or {}
        if not isinstance(data, dict):
            raise HubServerError(f"--tokens-file: {tokens_file} must map token -> {{user, role}}")
        for token, info in data.items():
            if not isinstance(info, dict) or "user" not in info:
                raise HubServerError(f"--tokens-file: entry for a token in {tokens_file} needs a user")
            tokens[str(token)] = {"user": str(info["user"]), "role": str(info.get("role", "read"))}
    for item in filter(None, (env_value or "").split(",")):
        token, _, rest = item.partition("=")
        user, _, role = rest.partition(":")
        if not token or not user or role not in ("", "read", "write"):
            raise HubServerError("QUANTBUILD_HUB_TOKENS: write token=user:role pairs (role read or write), comma-separated")
        tokens[token.strip()] = {"user": user.strip(), "role": role or "read"}
    return tokens
