"""A Hugging Face Hub-compatible HTTP server for tests and air-gapped teams.

Serves what huggingface_hub, transformers, datasets and lm-eval use to download, and what
huggingface_hub uses to upload (repos, preupload, LFS, commits, tags, branches). Start it with
`quantbuild hub serve --root DIR`, or in Python:

    with HubServer(root, tokens={"hf_xxx": {"user": "me", "role": "write"}}) as hub:
        os.environ["HF_ENDPOINT"] = hub.url
"""

from __future__ import annotations

import collections
import ssl
import threading
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ._app import HubHandler
from ._auth import DEFAULT_PROTECTED_TAGS, Principal, TokenTable, check_private_file, parse_env_tokens, principal
from ._faults import Faults
from ._storage import REPO_TYPES, Entry, Storage, StorageError, should_use_lfs

__all__ = ["HubServer", "Faults", "Storage", "StorageError", "Limits", "Principal", "load_tokens"]


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request may cost the server (bytes and seconds)."""
    json_body: int = 1 << 20          # every JSON call: 1 MiB
    commit_body: int = 64 << 20       # a commit carries small files inline (base64); large ones go by LFS
    lfs_object: int = 50 << 30        # the Hub's own limit per LFS file
    header_timeout: float = 30.0      # request line and headers, from the first byte to the last
    idle_timeout: float = 60.0        # no byte in either direction for this long
    min_body_rate: float = 64 << 10   # bytes per second a body must keep up, on top of header_timeout

    def body_limit(self, route_name: str | None) -> int:
        return {"commit": self.commit_body, "lfs_upload": self.lfs_object}.get(route_name or "", self.json_body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that fails its TLS handshake or vanishes is not news; the default prints a traceback.
        self.stats["connection_errors"] += 1


class HubServer:
    def __init__(self, root: str | Path, *, host: str = "127.0.0.1", port: int = 0,
                 tokens: dict[str, dict[str, Any] | Principal] | None = None, faults: list[dict] | None = None,
                 verbose: bool = False, protected_tags: tuple[str, ...] = DEFAULT_PROTECTED_TAGS,
                 limits: Limits | None = None, certfile: str | Path | None = None,
                 keyfile: str | Path | None = None, trust_proxy: bool = False):
        self.storage = Storage(root)  # takes the root's lock: one server per root
        try:
            self.httpd = _Server((host, port), HubHandler)
        except BaseException:
            self.storage.close()
            raise
        context = None
        if certfile:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(str(certfile), str(keyfile) if keyfile else None)
        self.httpd.ssl_context = context
        self.httpd.trust_proxy = trust_proxy
        self.httpd.storage = self.storage
        self.httpd.tokens = tokens if isinstance(tokens, TokenTable) else TokenTable(tokens)
        self.httpd.protected_tags = tuple(protected_tags)
        self.httpd.limits = limits or Limits()
        self.httpd.faults = Faults(faults)
        self.httpd.tickets = {}
        self.httpd.stats = collections.Counter()
        self.httpd.verbose = verbose
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"{'https' if self.httpd.ssl_context else 'http'}://{host}:{port}"

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
        if self.thread:
            self.httpd.shutdown()
        self.close()
        if self.thread:
            self.thread.join(timeout=5)

    def close(self) -> None:
        """Release the port and the root (for a server that was never started, e.g. `hub seed`)."""
        self.httpd.server_close()
        self.storage.close()

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


def load_tokens(tokens_file: str | Path | None = None, env_value: str | None = None) -> TokenTable:
    """Tokens from a YAML/JSON file ({token: {user, role, orgs}}; readable by its owner only) and/or
    QUANTBUILD_HUB_TOKENS ("tok=user:role[:org1+org2],..."). Roles: read, write, admin."""
    import yaml

    from ..errors import HubServerError

    tokens: dict[str, Principal] = {}
    if tokens_file:
        path = Path(tokens_file)
        try:
            check_private_file(path)
            data = yaml.safe_load(path.read_text())
        except PermissionError as exc:
            raise HubServerError(f"--tokens-file: {exc}") from None
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise HubServerError(f"--tokens-file: cannot read {path}: {type(exc).__name__}") from None
        if not isinstance(data, dict):
            raise HubServerError(f"--tokens-file: {path} must map token -> {{user, role, orgs}}")
        for token, info in data.items():
            try:
                tokens[str(token)] = principal(info)
            except ValueError as exc:
                raise HubServerError(f"--tokens-file: {path}: {exc}") from None
    try:
        for token, info in parse_env_tokens(env_value or "").items():
            tokens[token] = principal(info)
    except ValueError as exc:
        raise HubServerError(f"QUANTBUILD_HUB_TOKENS: {exc}; e.g. tok=alice:write:acme") from None
    return TokenTable(tokens)
