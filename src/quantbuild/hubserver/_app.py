"""HTTP layer: the Hub's API routes (see shared notes hub-protocol.md) over Storage."""

from __future__ import annotations

import hashlib
import json
import re
import socket
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .._cardcheck import front_matter
from ._routing import API, REPO, ROUTES, HTTPError, route
from ._write import WriteRoutes
from ._storage import REPO_TYPES, Entry, StorageError, clean_path, iso, lfs_pointer, valid_repo_name

TYPE_OF_PLURAL = {v: k for k, v in REPO_TYPES.items()}
CHUNK = 1 << 20


class HubHandler(WriteRoutes, BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "quantbuild-hub/0.1"

    # --- plumbing ------------------------------------------------------------------------------
    def log_message(self, fmt: str, *args: Any) -> None:  # quiet unless asked; never logs headers
        if self.server.verbose:
            super().log_message(fmt, *args)

    def do_GET(self): self._dispatch("GET")
    def do_HEAD(self): self._dispatch("HEAD")
    def do_POST(self): self._dispatch("POST")
    def do_PUT(self): self._dispatch("PUT")
    def do_DELETE(self): self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        self._body_read = False
        url = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        fault = self.server.faults.check(method, url.path)
        self.drop_after = None
        try:
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
            for verb, pattern, name in ROUTES:
                match = pattern.match(url.path)
                if match and (verb == method or (verb == "GET" and method == "HEAD")):
                    groups = {k: unquote(v) if v is not None else None for k, v in match.groupdict().items()}
                    getattr(self, name)(**groups)
                    break
            else:
                raise HTTPError(404, f"no route for {method} {url.path}")
        except HTTPError as exc:
            self._error(exc.status, str(exc), exc.code, exc.headers)
        except StorageError as exc:
            self._error(exc.status, str(exc), exc.code)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            if not self._body_read:
                self._discard_body()

    def _discard_body(self) -> None:
        try:
            for _ in self._body_chunks():
                pass
        except (OSError, ValueError):
            self.close_connection = True

    def _body_chunks(self):
        self._body_read = True
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                data = self.rfile.read(size)
                self.rfile.readline()
                self.server.stats["bytes_received"] += len(data)
                yield data
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left > 0:
                data = self.rfile.read(min(CHUNK, left))
                if not data:
                    raise ConnectionResetError("client closed mid-body")
                left -= len(data)
                self.server.stats["bytes_received"] += len(data)
                yield data

    def _body(self) -> bytes:
        return b"".join(self._body_chunks())

    def _json_body(self) -> Any:
        raw = self._body()
        try:
            return json.loads(raw or b"{}")
        except json.JSONDecodeError:
            raise HTTPError(400, "request body is not JSON") from None

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
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
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _base_url(self) -> str:
        return f"http://{self.headers.get('Host') or '%s:%d' % self.server.server_address[:2]}"

    # --- auth ----------------------------------------------------------------------------------
    def _user(self) -> dict | None:
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return None
        user = self.server.tokens.get(auth[len("Bearer "):].strip())
        if user is None:
            raise HTTPError(401, "Invalid credentials in Authorization header")
        return user

    def _writer(self) -> dict:
        user = self._user()
        if user is None:
            raise HTTPError(401, "You must be authenticated to write (set HF_TOKEN)")
        if user.get("role") != "write":
            raise HTTPError(403, f"token of {user['user']} is read-only")
        return user

    def _repo(self, plural: str, org: str, name: str, *, write: bool = False) -> tuple[str, str, dict]:
        rtype = TYPE_OF_PLURAL[plural] if plural in TYPE_OF_PLURAL else plural
        if not valid_repo_name(org, name):
            raise HTTPError(400, f"invalid repo id {org}/{name!r}")
        repo_id = f"{org}/{name}"
        user = self._writer() if write else self._user()
        meta = self.server.storage.repo_meta(rtype, repo_id)
        if meta is None:
            raise HTTPError(404 if user else 401, f"{rtype} {repo_id} not found", "RepoNotFound")
        if meta.get("private") and user is None:
            raise HTTPError(401, f"{rtype} {repo_id} not found", "RepoNotFound")
        if meta.get("gated") and not write:
            if user is None:
                raise HTTPError(401, f"access to {repo_id} is gated: log in and accept its conditions", "GatedRepo")
            if meta.get("access") and user["user"] not in meta["access"]:
                raise HTTPError(403, f"access to {repo_id} is gated: {user['user']} was not granted access",
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
        self._json({"type": "user", "name": user["user"], "fullname": user["user"], "orgs": [],
                    "auth": {"type": "access_token", "accessToken": {"displayName": "quantbuild-hub",
                                                                     "role": user.get("role", "read")}}})

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
        raw = self._body()
        if self.headers.get("Content-Type", "").startswith("application/json"):
            paths = json.loads(raw or b"{}").get("paths", [])
        else:
            paths = parse_qs(raw.decode()).get("paths", [])
        sha = self._revision(rtype, repo_id, rev)
        tree = self.server.storage.tree(rtype, repo_id, sha)
        out = []
        for path in paths if isinstance(paths, list) else [paths]:
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
