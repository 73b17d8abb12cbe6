"""Write routes: repo create/delete, validate-yaml, preupload, LFS batch/upload/verify, commit, refs."""

from __future__ import annotations

import base64
import json
import secrets
import time
from typing import Any

from .._cardcheck import validate_card
from ._routing import API, REPO, HTTPError, route
from ._storage import REPO_TYPES, Entry, StorageError, clean_path, should_use_lfs, valid_repo_name

TICKET_SECONDS = 3600


class WriteRoutes:
    """Mixed into HubHandler; relies on its plumbing (_json, _body, _repo, _writer...)."""

    @route("POST", r"^/api/repos/create$")
    def create_repo(self) -> None:
        user = self._writer()
        body = self._json_body()
        rtype = body.get("type") or "model"
        if rtype not in REPO_TYPES:
            raise HTTPError(400, f"invalid repo type {rtype!r}")
        org, name = body.get("organization") or user["user"], body.get("name") or ""
        if "/" in name:
            org, name = name.split("/", 1)
        if not valid_repo_name(org, name):
            raise HTTPError(400, f"invalid repo id {org}/{name!r}: letters, digits, '-', '_', '.'; no '..'")
        repo_id = f"{org}/{name}"
        prefix = "" if rtype == "model" else f"{REPO_TYPES[rtype]}/"
        url = f"{self._base_url()}/{prefix}{repo_id}"
        created = self.server.storage.create_repo(rtype, repo_id, private=bool(body.get("private")),
                                                  author=user["user"])
        if not created:
            self._json({"error": f"You already created this {rtype} repo", "url": url}, 409)
            return
        self._json({"url": url, "name": repo_id, "id": repo_id})

    @route("DELETE", r"^/api/repos/delete$")
    def delete_repo(self) -> None:
        user = self._writer()
        body = self._json_body()
        rtype = body.get("type") or "model"
        org, name = body.get("organization") or user["user"], body.get("name") or ""
        if rtype not in REPO_TYPES or not valid_repo_name(org, name):
            raise HTTPError(400, f"invalid repo {rtype} {org}/{name!r}")
        self.server.storage.delete_repo(rtype, f"{org}/{name}")
        self._json({})

    @route("POST", r"^/api/validate-yaml$")
    def validate_yaml(self) -> None:
        body = self._json_body()
        errors = validate_card(str(body.get("content", "")), body.get("repoType") or "model")
        if errors:
            # ModelCard.validate asks for text/plain and shows the text; HfApi reads JSON "errors".
            if "text/plain" in self.headers.get("Accept", ""):
                self._send(400, "; ".join(errors).encode(), {"X-Error-Message": errors[0]}, "text/plain")
            else:
                self._json({"error": "; ".join(errors), "errors": [{"message": e} for e in errors], "warnings": []},
                           400, {"X-Error-Message": errors[0]})
            return
        self._json({"errors": [], "warnings": []})

    @route("POST", API + r"/preupload/(?P<rev>[^/]+)$")
    def preupload(self, plural: str, org: str, name: str, rev: str) -> None:
        rtype, repo_id, _ = self._repo(plural, org, name, write=True)
        body = self._json_body()
        storage = self.server.storage
        try:
            tree = storage.tree(rtype, repo_id, storage.resolve(rtype, repo_id, rev))
        except StorageError:
            tree = {}  # a branch the commit will create: nothing to dedupe against
        out = []
        for item in body.get("files", []):
            path = clean_path(item.get("path", ""))
            sample = base64.b64decode(item.get("sample") or b"")
            lfs = should_use_lfs(path, int(item.get("size") or 0), sample)
            existing = tree.get(path)
            # The client skips a file whose oid matches: sha256 for LFS files, git blob sha1 otherwise.
            oid = None if existing is None else (existing.sha256 if lfs else existing.blob_oid or None)
            out.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        self._json({"files": out})

    @route("POST", r"^/(?P<prefix>datasets/|spaces/)?" + REPO + r"\.git/info/lfs/objects/batch$")
    def lfs_batch(self, prefix: str | None, org: str, name: str) -> None:
        rtype, repo_id, _ = self._repo((prefix or "models/").rstrip("/"), org, name, write=True)
        in_repo = self.server.storage.repo_lfs(rtype, repo_id)
        body = self._json_body()
        if body.get("operation") != "upload":
            raise HTTPError(400, "only the upload operation is served")
        objects = []
        for obj in body.get("objects", []):
            oid, size = str(obj.get("oid", "")), int(obj.get("size", -1))
            if len(oid) != 64 or size < 0:
                raise HTTPError(422, f"invalid LFS object {obj!r}")
            item: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if oid not in in_repo or not self.server.storage.has_blob(oid, size):
                ticket = secrets.token_urlsafe(16)
                self.server.tickets[ticket] = (oid, size, time.time() + TICKET_SECONDS, rtype, repo_id)
                base = self._base_url()
                item["actions"] = {"upload": {"href": f"{base}/_lfs/{oid}?ticket={ticket}", "header": {}},
                                   "verify": {"href": f"{base}/_lfs/{oid}/verify", "header": {}}}
            objects.append(item)
        self._json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                   content_type="application/vnd.git-lfs+json")

    @route("PUT", r"^/_lfs/(?P<oid>[0-9a-f]{64})$")
    def lfs_upload(self, oid: str) -> None:
        ticket = self.server.tickets.get(self.query.get("ticket", ""))
        if ticket is None or ticket[0] != oid or ticket[2] < time.time():
            raise HTTPError(403, "upload URL is invalid or expired; ask the batch endpoint again")
        self.server.storage.put_stream(self._body_chunks(), oid, ticket[1])
        self.server.storage.add_repo_lfs(ticket[3], ticket[4], [oid])  # kept even if the commit never comes
        self.server.tickets.pop(self.query["ticket"], None)
        self.server.stats["lfs_uploads"] += 1
        self.server.stats["lfs_bytes_received"] += ticket[1]
        self._json({})

    @route("POST", r"^/_lfs/(?P<oid>[0-9a-f]{64})/verify$")
    def lfs_verify(self, oid: str) -> None:
        body = self._json_body()
        if body.get("oid") != oid or not self.server.storage.has_blob(oid, body.get("size")):
            raise HTTPError(404, f"LFS object {oid} with size {body.get('size')} is not stored")
        self._json({})

    @route("POST", API + r"/commit/(?P<rev>[^/]+)$")
    def commit(self, plural: str, org: str, name: str, rev: str) -> None:
        rtype, repo_id, _ = self._repo(plural, org, name, write=True)
        user = self._writer()
        if self.query.get("create_pr") in ("1", "true", "True"):
            raise HTTPError(400, "pull requests are not served by this Hub server")
        header: dict[str, Any] = {}
        operations: list[tuple] = []
        for n, line in enumerate(self._body().splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                key, value = item["key"], item["value"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise HTTPError(400, f"commit payload line {n} is not a {{key, value}} JSON object") from None
            if key == "header":
                header = value
            elif key == "file":
                data = base64.b64decode(value["content"]) if value.get("encoding") == "base64" else \
                    str(value["content"]).encode()
                operations.append(("add", value["path"], data, None))
            elif key == "lfsFile":
                operations.append(("add", value["path"], None, Entry(value["oid"], int(value["size"]), True)))
            elif key == "deletedFile":
                operations.append(("delete", value["path"]))
            elif key == "deletedFolder":
                operations.append(("delete_folder", value["path"]))
            else:
                raise HTTPError(400, f"commit operation {key!r} is not served")
        for op in operations:  # the Hub refuses a README whose metadata is invalid; nothing is committed
            if op[0] == "add" and op[1] == "README.md" and op[2] is not None:
                errors = validate_card(op[2].decode("utf-8", "replace"), rtype)
                if errors:
                    raise HTTPError(400, "README.md: " + "; ".join(errors))
        sha = self.server.storage.commit(rtype, repo_id, rev, operations, header.get("summary") or "update",
                                         header.get("description") or "", parent_commit=header.get("parentCommit"),
                                         author=user["user"])
        self.server.stats["commits"] += 1
        self.server.stats["commit_file_bytes"] += sum(len(op[2]) for op in operations if op[0] == "add" and op[2])
        prefix = "" if rtype == "model" else f"{REPO_TYPES[rtype]}/"
        self._json({"commitOid": sha, "commitUrl": f"{self._base_url()}/{prefix}{repo_id}/commit/{sha}",
                    "commitMessage": header.get("summary"), "pullRequestUrl": None})

    @route("POST", API + r"/(?P<kind>tag|branch)/(?P<ref>[^/]+)$")
    def create_ref(self, plural: str, org: str, name: str, kind: str, ref: str) -> None:
        rtype, repo_id, _ = self._repo(plural, org, name, write=True)
        body = self._json_body()
        storage = self.server.storage
        if kind == "tag":  # POST .../tag/{revision} {"tag": name}
            target = storage.resolve(rtype, repo_id, ref)
            storage.set_ref(rtype, repo_id, "tag", str(body.get("tag", "")), target, body.get("message") or "")
            self._json({"name": body.get("tag"), "ref": f"refs/tags/{body.get('tag')}", "targetCommit": target})
        else:  # POST .../branch/{name} {"startingPoint": revision}
            target = storage.resolve(rtype, repo_id, body.get("startingPoint") or "main")
            storage.set_ref(rtype, repo_id, "branch", ref, target)
            self._json({"name": ref, "ref": f"refs/heads/{ref}", "targetCommit": target})

    @route("DELETE", API + r"/(?P<kind>tag|branch)/(?P<ref>[^/]+)$")
    def delete_ref(self, plural: str, org: str, name: str, kind: str, ref: str) -> None:
        rtype, repo_id, _ = self._repo(plural, org, name, write=True)
        self.server.storage.set_ref(rtype, repo_id, kind, ref, None)
        self._json({})

    @route("GET", r"^/_admin/stats$")
    def admin_stats(self) -> None:
        self._json(dict(self.server.stats))

    @route("POST", r"^/_admin/faults$")
    def admin_faults(self) -> None:
        self._writer()
        self.server.faults.set_rules(self._json_body().get("rules", []))
        self._json({"rules": self.server.faults.rules})
