"""HTTP layer: the Hub's API routes (see shared notes hub-protocol.md) over Storage.

Hardened for a server several people share: every identifier from a request is validated before it
reaches storage; bodies are bounded per route before anyone is authenticated; a request must finish its
headers within a deadline and its body at a minimum rate; every refusal, malformed requests included, is a
JSON error with a 4xx status; nothing from the request reaches a response header unescaped.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import socket
import ssl
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .._cardcheck import front_matter
from ._auth import Principal
from ._routing import API, REPO, ROUTES, HTTPError, route
from ._write import WriteRoutes
from ._storage import REPO_TYPES, Entry, StorageError, clean_path, iso, lfs_pointer, valid_repo_name

TYPE_OF_PLURAL = {v: k for k, v in REPO_TYPES.items()}
CHUNK = 1 << 20
HOST_RE = re.compile(r"^(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?$")
# Request-shaped mistakes in a body (wrong JSON types, bad base64, bad numbers): the client's fault, a 400.
MALFORMED = (ValueError, TypeError, KeyError, AttributeError, binascii.Error, UnicodeError)


def header_value(value: Any) -> str:
    """Printable ASCII only: CR/LF (header injection) and non-Latin-1 text (which http.server cannot encode
    and would answer by dropping the connection) are written as escapes."""
    return "".join(c if " " <= c <= "~" else c.encode("unicode_escape").decode("ascii") for c in str(value))


class HubHandler(WriteRoutes, BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "quantbuild-hub/0.2"

    # --- plumbing ------------------------------------------------------------------------------
    def log_message(self, fmt: str, *args: Any) -> None:  # quiet unless asked; never logs headers
        if self.server.verbose:
            super().log_message(fmt, *(header_value(a) for a in args))

    def setup(self) -> None:
        # Idle timeout: every read and write on the socket gives up after this long without progress.
        self.timeout = self.server.limits.idle_timeout
        self._timer: threading.Timer | None = None
        if self.server.ssl_context is not None:
            self.request.settimeout(self.timeout)  # the handshake runs here, in this connection's thread
            self.request = self.server.ssl_context.wrap_socket(self.request, server_side=True)
        super().setup()

    def handle_one_request(self) -> None:
        # A slow client that trickles its headers a byte at a time never trips the idle timeout: the
        # request line and headers must all arrive within header_timeout.
        self._arm(self.server.limits.header_timeout)
        try:
            super().handle_one_request()
        except (ConnectionError, TimeoutError, ssl.SSLError, OSError):
            self.close_connection = True
        finally:
            self._disarm()

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self.close_connection = True
        self.server.stats["timeouts"] += 1
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def do_GET(self): self._dispatch("GET")
    def do_HEAD(self): self._dispatch("HEAD")
    def do_POST(self): self._dispatch("POST")
    def do_PUT(self): self._dispatch("PUT")
    def do_DELETE(self): self._dispatch("DELETE")

    def send_header(self, keyword: str, value: Any) -> None:
        super().send_header(keyword, header_value(value))

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (bad request line, headers too long, unknown method) as JSON 4xx."""
        if code == HTTPStatus.NOT_IMPLEMENTED:
            code, message = HTTPStatus.METHOD_NOT_ALLOWED, f"method {header_value(self.command)} is not served"
        elif code >= 500:  # e.g. 505 for an HTTP version we do not speak: the request's fault
            code = HTTPStatus.BAD_REQUEST
        if getattr(self, "request_version", None) == "HTTP/0.9":
            self.request_version = "HTTP/1.0"  # else http.server would send the body without a status line
        self.close_connection = True  # _send then says Connection: close
        try:
            self._json({"error": message or HTTPStatus(code).phrase}, code)
        except OSError:
            pass

    def _content_length(self) -> int | None:
        raw = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            if raw is not None:
                raise HTTPError(400, "Content-Length and chunked Transfer-Encoding together")
            return None
        if raw is None:
            return 0
        if not raw.strip().isdigit() or len(raw.strip()) > 15:
            raise HTTPError(400, "Content-Length must be a non-negative integer")
        return int(raw)

    def _dispatch(self, method: str) -> None:
        self._disarm()  # the headers are in
        self._body_read, self._body_limit, self._length = False, self.server.limits.json_body, 0
        self._buffered: bytes | None = None
        try:
            try:
                self._length = self._content_length()
            except HTTPError:
                self._body_read = True  # the body's end is unknown: never read it, close afterwards
                self.close_connection = True
                raise
            url = urlsplit(self.path)
            self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            for verb, pattern, name in ROUTES:
                match = pattern.match(url.path)
                if match and (verb == method or (verb == "GET" and method == "HEAD")):
                    break
            else:
                match, name = None, None
            # Bodies are bounded per route before anyone is authenticated: a JSON call gets a small
            # budget, a commit a larger one, an LFS upload exactly the size its ticket announced.
            self._body_limit = self.server.limits.body_limit(name)
            if self._length is not None and self._length > self._body_limit and name != "lfs_upload":
                self._body_read = True
                self.close_connection = True
                raise HTTPError(413, f"request body of {self._length} bytes is over this route's limit "
                                     f"of {self._body_limit}")
            if self._length is None and name != "lfs_upload":
                # A chunked body announces no size: read it (within the limit) before anyone is authenticated.
                self._buffered = self._body()
            fault = self.server.faults.check(method, url.path)
            self.drop_after = None
            if fault is not None:
                if fault["action"] == "drop" and method != "GET":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fault["action"] == "drop":
                    self.drop_after = fault.get("fraction", 0.5)
                else:
                    status = int(fault["action"])
                    headers = {"Retry-After": str(fault.get("retry_after", 1))} if status == 429 else {}
                    raise HTTPError(status, f"injected fault {status}", headers=headers)
            if match is None:
                raise HTTPError(404, f"no route for {method} {url.path}")
            groups = {k: unquote(v) if v is not None else None for k, v in match.groupdict().items()}
            getattr(self, name)(**groups)
        except HTTPError as exc:
            self._error(exc.status, str(exc), exc.code, exc.headers)
        except StorageError as exc:
            self._error(exc.status, str(exc), exc.code)
        except (BrokenPipeError, ConnectionResetError, TimeoutError, ssl.SSLError):
            self.close_connection = True
        except MALFORMED as exc:
            self._error(400, f"malformed request: {type(exc).__name__}: {exc}"[:300], None)
        except Exception as exc:  # a bug of ours: say so in JSON rather than drop the connection
            self.server.stats["internal_errors"] += 1
            self._error(500, f"internal error ({type(exc).__name__})", None)
        finally:
            if not self._body_read:
                if self._length is not None and self._length <= self._body_limit:
                    self._discard_body()
                else:
                    self.close_connection = True

    def _discard_body(self) -> None:
        try:
            for _ in self._body_chunks():
                pass
        except (OSError, ValueError, HTTPError):
            self.close_connection = True

    def _body_chunks(self):
        """The body, in chunks, within this route's limit and at a minimum rate (slow senders are cut)."""
        self._body_read = True
        limits, received = self.server.limits, 0
        expected = self._length if self._length is not None else self._body_limit
        self._arm(limits.header_timeout + expected / limits.min_body_rate)
        try:
            if self._length is None:  # chunked
                while True:
                    line = self.rfile.readline(64)
                    try:
                        size = int(line.split(b";")[0].strip() or b"0", 16)
                    except ValueError:
                        self.close_connection = True
                        raise HTTPError(400, "malformed chunked body") from None
                    if size == 0:
                        while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                            pass
                        return
                    received += size
                    if received > self._body_limit:
                        self.close_connection = True
                        raise HTTPError(413, f"request body is over this route's limit of {self._body_limit}")
                    data = self.rfile.read(size)
                    self.rfile.readline(8)
                    self.server.stats["bytes_received"] += len(data)
                    yield data
            else:
                left = self._length
                while left > 0:
                    data = self.rfile.read(min(CHUNK, left))
                    if not data:
                        raise ConnectionResetError("client closed mid-body")
                    left -= len(data)
                    self.server.stats["bytes_received"] += len(data)
                    yield data
        finally:
            self._disarm()

    def _body(self) -> bytes:
        if self._buffered is not None:
            return self._buffered
        return b"".join(self._body_chunks())

    def _json_body(self) -> dict[str, Any]:
        raw = self._body()
        try:
            data = json.loads(raw or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise HTTPError(400, "request body is not JSON") from None
        if not isinstance(data, dict):
            raise HTTPError(400, "request body must be a JSON object")
        return data

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data: Any, status: int = 200, headers: dict | None = None,
              content_type: str = "application/json") -> None:
        self._send(status, json.dumps(data).encode(), headers, content_type)

    def _error(self, status: int, message: str, code: str | None, headers: dict | None = None) -> None:
        extra = dict(headers or {})
        if code:
            extra["X-Error-Code"] = code
        extra["X-Error-Message"] = message
        try:
            self._json({"error": message}, status, extra)
        except (BrokenPipeError, ConnectionResetError, TimeoutError, ssl.SSLError):
            self.close_connection = True

    def _base_url(self) -> str:
        """For the LFS URLs the server hands out. The Host header is used only when it is a well-formed
        host[:port]; the scheme is https under TLS, or the proxy's X-Forwarded-Proto when told to trust it."""
        host = self.headers.get("Host", "")
        if not HOST_RE.match(host):
            host = "%s:%d" % self.server.server_address[:2]
        scheme = "https" if self.server.ssl_context is not None else "http"
        forwarded = self.headers.get("X-Forwarded-Proto", "").strip().lower()
        if self.server.trust_proxy and forwarded in ("http", "https"):
            scheme = forwarded
        return f"{scheme}://{host}"

    # --- auth ----------------------------------------------------------------------------------
    def _user(self) -> Principal | None:
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return None
        user = self.server.tokens.lookup(auth[len("Bearer "):].strip())
        if user is None:
            raise HTTPError(401, "Invalid credentials in Authorization header")
        return user

    def _writer(self) -> Principal:
        user = self._user()
        if user is None:
            raise HTTPError(401, "You must be authenticated to write (set HF_TOKEN)")
        if user.role not in ("write", "admin"):
            raise HTTPError(403, f"token of {user.user} is read-only")
        return user

    def _admin(self) -> Principal:
        user = self._user()
        if user is None:
            raise HTTPError(401, "the admin endpoints need an admin token")
        if not user.is_admin:
            raise HTTPError(403, f"{user.user} is not an admin")
        return user

    def _repo(self, plural: str, org: str, name: str, *, write: bool = False) -> tuple[str, str, dict]:
        if plural not in TYPE_OF_PLURAL:
            raise HTTPError(400, f"invalid repo type {plural!r}")
        rtype = TYPE_OF_PLURAL[plural]
        if not valid_repo_name(org, name):
            raise HTTPError(400, f"invalid repo id {org}/{name!r}")
        repo_id = f"{org}/{name}"
        user = self._writer() if write else self._user()
        meta = self.server.storage.repo_meta(rtype, repo_id)
        # A private repo is invisible outside its namespace: the same answer as a repo that does not exist.
        if meta is None or (meta.get("private") and not (user and user.member_of(org))):
            raise HTTPError(404 if user else 401, f"{rtype} {repo_id} not found", "RepoNotFound")
        if write and not user.can_write(org):
            raise HTTPError(403, f"{user.user} may not write to {repo_id}: only {org} and its members can")
        if meta.get("gated") and not write and not (user and user.member_of(org)):
            if user is None:
                raise HTTPError(401, f"access to {repo_id} is gated: log in and accept its conditions", "GatedRepo")
            if meta.get("access") and user.user not in meta["access"]:
                raise HTTPError(403, f"access to {repo_id} is gated: {user.user} was not granted access",
                                "GatedRepo")
        return rtype, repo_id, meta

    def _revision(self, rtype: str, repo_id: str, revision: str) -> str:
        return self.server.storage.resolve(rtype, repo_id, revision)

    # --- read routes ---------------------------------------------------------------------------
    @route("GET", r"^/api/whoami-v2$")
    def whoami(self) -> None:
        user = self._user()
        if user is None:
            raise HTTPError(401, "Invalid credentials in Authorization header")
        self._json({"type": "user", "name": user.user, "fullname": user.user,
                    "orgs": [{"name": o, "type": "org"} for o in user.orgs],
                    "auth": {"type": "access_token", "accessToken": {"displayName": "quantbuild-hub",
                                                                     "role": user.role}}})

    def _info(self, plural: str, org: str, name: str, rev: str) -> dict[str, Any]:
        rtype, repo_id, meta = self._repo(plural, org, name)
        storage = self.server.storage
        sha = self._revision(rtype, repo_id, rev)
        commit = storage.get_commit(rtype, repo_id, sha)
        tree = storage.tree(rtype, repo_id, sha)
        blobs = self.query.get("blobs") in ("1", "true", "True")
        siblings = []
        for path, entry in sorted(tree.items()):
            item: dict[str, Any] = {"rfilename": path}
            if blobs:
                item.update({"size": entry.size, "blobId": entry.git_oid})
                if entry.lfs:
                    item["lfs"] = {"sha256": entry.sha256, "size": entry.size,
                                   "pointerSize": len(lfs_pointer(entry.sha256, entry.size))}
            siblings.append(item)
        card: dict[str, Any] = {}
        if "README.md" in tree and not tree["README.md"].lfs:
            card = front_matter(storage.blob_path(tree["README.md"].sha256).read_text(errors="replace"))[0] or {}
        info = {"_id": sha[:24], "id": repo_id, "author": org, "sha": sha, "private": bool(meta.get("private")),
                "gated": "manual" if meta.get("gated") else False, "disabled": False, "downloads": 0, "likes": 0,
                "lastModified": commit["date"], "createdAt": iso(meta["created_at"]),
                "tags": list(card.get("tags") or []), "siblings": siblings, "cardData": card}
        if rtype == "model":
            info.update({"modelId": repo_id, "library_name": card.get("library_name"),
                         "pipeline_tag": card.get("pipeline_tag")})
        return info

    @route("GET", API + r"$")
    def repo_info(self, plural: str, org: str, name: str) -> None:
        self._json(self._info(plural, org, name, "main"))

    @route("GET", API + r"/revision/(?P<rev>[^/]+)$")
    def revision_info(self, plural: str, org: str, name: str, rev: str) -> None:
        self._json(self._info(plural, org, name, rev))

    def _tree_entries(self, tree: dict[str, Entry], sha: str, base: str, recursive: bool) -> list[dict]:
        prefix = base.rstrip("/") + "/" if base else ""
        files, dirs = [], set()
        for path, entry in sorted(tree.items()):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix):]
            if "/" in rest:
                parts = rest.split("/")[:-1]
                levels = range(1, len(parts) + 1) if recursive else [1]
                dirs.update(prefix + "/".join(parts[:i]) for i in levels)
                if not recursive:
                    continue
            files.append(self._file_entry(path, entry))
        dir_entries = [{"type": "directory", "path": d, "size": 0,
                        "oid": hashlib.sha1(f"{sha}:{d}".encode()).hexdigest()} for d in sorted(dirs)]
        return dir_entries + files

    @staticmethod
    def _file_entry(path: str, entry: Entry) -> dict[str, Any]:
        item = {"type": "file", "path": path, "size": entry.size, "oid": entry.git_oid}
        if entry.lfs:
            item["lfs"] = {"oid": entry.sha256, "size": entry.size,
                           "pointerSize": len(lfs_pointer(entry.sha256, entry.size))}
        return item

    @route("GET", API + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$")
    def tree(self, plural: str, org: str, name: str, rev: str, path: str | None) -> None:
        rtype, repo_id, _ = self._repo(plural, org, name)
        sha = self._revision(rtype, repo_id, rev)
        tree = self.server.storage.tree(rtype, repo_id, sha)
        path = (path or "").strip("/")
        if path and path in tree:
            raise HTTPError(400, f"{path} is a file, not a folder")
        if path and not any(p.startswith(path + "/") for p in tree):
            raise HTTPError(404, f"{path} not found at {rev}", "EntryNotFound")
        recursive = self.query.get("recursive") in ("1", "true", "True")
        self._json(self._tree_entries(tree, sha, path, recursive))

    @route("POST", API + r"/paths-info/(?P<rev>[^/]+)$")
    def paths_info(self, plural: str, org: str, name: str, rev: str) -> None:
        rtype, repo_id, _ = self._repo(plural, org, name)
        if self.headers.get("Content-Type", "").startswith("application/json"):
            paths = self._json_body().get("paths", [])
        else:
            paths = parse_qs(self._body().decode("utf-8")).get("paths", [])
        paths = paths if isinstance(paths, list) else [paths]
        if not all(isinstance(p, str) for p in paths):
            raise HTTPError(400, "paths must be a list of strings")
        sha = self._revision(rtype, repo_id, rev)
        tree = self.server.storage.tree(rtype, repo_id, sha)
        out = []
        for path in paths:
            path = path.strip("/")
            if path in tree:
                out.append(self._file_entry(path, tree[path]))
            elif any(p.startswith(path + "/") for p in tree):
                out.append({"type": "directory", "path": path, "size": 0,
                            "oid": hashlib.sha1(f"{sha}:{path}".encode()).hexdigest()})
        self._json(out)

    @route("GET", API + r"/refs$")
    def refs(self, plural: str, org: str, name: str) -> None:
        rtype, repo_id, _ = self._repo(plural, org, name)
        refs = self.server.storage.refs(rtype, repo_id)
        branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": c} for n, c in sorted(refs["branches"].items())]
        tags = [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": t["commit"]} for n, t in sorted(refs["tags"].items())]
        out = {"branches": branches, "tags": tags, "converts": []}
        if self.query.get("include_prs"):
            out["pullRequests"] = []
        self._json(out)

    @route("GET", API + r"/commits/(?P<rev>[^/]+)$")
    def commits(self, plural: str, org: str, name: str, rev: str) -> None:
        rtype, repo_id, _ = self._repo(plural, org, name)
        sha = self._revision(rtype, repo_id, rev)
        history = self.server.storage.history(rtype, repo_id, sha)
        self._json([{"id": c["id"], "title": c["title"], "message": c["message"], "date": c["date"],
                     "authors": [{"user": c["author"]}]} for c in history])

    @route("GET", r"^/(?P<prefix>datasets/|spaces/)?" + REPO + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
    def resolve_file(self, prefix: str | None, org: str, name: str, rev: str, path: str) -> None:
        plural = (prefix or "models/").rstrip("/")
        rtype, repo_id, _ = self._repo(plural, org, name)
        sha = self._revision(rtype, repo_id, rev)
        tree = self.server.storage.tree(rtype, repo_id, sha)
        entry = tree.get(clean_path(path))
        if entry is None:
            raise HTTPError(404, f"{path} not found in {repo_id}@{rev}", "EntryNotFound",
                            {"X-Repo-Commit": sha})
        etag = entry.sha256 if entry.lfs else entry.git_oid
        headers = {"X-Repo-Commit": sha, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if entry.lfs:
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(entry.size)})
        start, end, status = 0, entry.size - 1, 200
        range_header = self.headers.get("Range")
        if range_header:
            match = re.match(r"bytes=(\d*)-(\d*)$", range_header.strip())
            if not match or (not match.group(1) and not match.group(2)):
                raise HTTPError(416, f"bad Range {range_header!r}")
            if match.group(1):
                start = int(match.group(1))
                end = int(match.group(2)) if match.group(2) else entry.size - 1
            else:
                start = max(entry.size - int(match.group(2)), 0)
            end = min(end, entry.size - 1)
            if start > end and entry.size:
                raise HTTPError(416, f"Range {range_header} outside {entry.size} bytes",
                                headers={"Content-Range": f"bytes */{entry.size}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
        length = max(end - start + 1, 0)
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        limit = int(length * self.drop_after) if self.drop_after is not None else None
        sent = 0
        with open(self.server.storage.blob_path(entry.sha256), "rb") as fh:
            fh.seek(start)
            while sent < length:
                block = fh.read(min(CHUNK, length - sent))
                if not block:
                    break
                if limit is not None and sent + len(block) > limit:
                    self.wfile.write(block[: limit - sent])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)  # the injected mid-body drop
                    return
                self.wfile.write(block)
                sent += len(block)
        self.server.stats["bytes_sent"] += sent

    @route("GET", r"^/api/agent-harnesses$")
    def agent_harnesses(self) -> None:
        raise HTTPError(404, "not served here")
