"""Write routes: repo create/delete, validate-yaml, preupload, LFS batch/upload/verify, commit, refs."""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
from typing import Any

from .._cardcheck import validate_card
from ._routing import API, REPO, HTTPError, route
from ._auth import protected
from ._storage import (REPO_TYPES, SHA256_RE, SHA_RE, Entry, StorageError, clean_path, should_use_lfs,
                       valid_ref_name, valid_repo_name)

TICKET_SECONDS = 3600


class WriteRoutes:
    """Mixed into HubHandler; relies on its plumbing (_json, _body, _repo, _writer...)."""

    @route("POST", r"^/api/repos/create$")
    def create_repo(self) -> None:
        user = self._writer()
        body = self._json_body()
        rtype = _field(body, "type", str, "model")
        if rtype not in REPO_TYPES:
            raise HTTPError(400, f"invalid repo type {rtype!r}")
        org, name = _repo_name(body, user.user)
        if not valid_repo_name(org, name):
            raise HTTPError(400, f"invalid repo id {org}/{name!r}: letters, digits, '-', '_', '.'; no '..'")
        if not user.can_write(org):
            raise HTTPError(403, f"{user.user} may not create repos in {org}: only {org} and its members can")
        # huggingface_hub 1.x sends `visibility`; older clients `private`.
        visibility = _field(body, "visibility", str, None)
        if visibility not in (None, "public", "private", "protected"):
            raise HTTPError(400, f"visibility {visibility!r} must be public, private or protected")
        private = _field(body, "private", bool, False) or visibility in ("private", "protected")
        repo_id = f"{org}/{name}"
        prefix = "" if rtype == "model" else f"{REPO_TYPES[rtype]}/"
        url = f"{self._base_url()}/{prefix}{repo_id}"
        if not self.server.storage.create_repo(rtype, repo_id, private=private, author=user.user):
            self._json({"error": f"You already created this {rtype} repo", "url": url}, 409)
            return
        self._json({"url": url, "name": repo_id, "id": repo_id})

    @route("DELETE", r"^/api/repos/delete$")
    def delete_repo(self) -> None:
        user = self._writer()
        body = self._json_body()
        rtype = _field(body, "type", str, "model")
        org, name = _repo_name(body, user.user)
        if rtype not in REPO_TYPES or not valid_repo_name(org, name):
            raise HTTPError(400, f"invalid repo {rtype} {org}/{name!r}")
        self._repo(REPO_TYPES[rtype], org, name, write=True)
        self.server.storage.delete_repo(rtype, f"{org}/{name}")
        self._json({})

    @route("POST", r"^/api/validate-yaml$")
    def validate_yaml(self) -> None:
        body = self._json_body()
        errors = validate_card(_field(body, "content", str, ""), _field(body, "repoType", str, None) or "model")
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
        for item in _list(body, "files"):
            path = clean_path(_field(item, "path", str, ""))
            sample = _b64(_field(item, "sample", str, ""), f"files[{path}].sample")
            lfs = should_use_lfs(path, _size(item, "size", 0), sample)
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
        now = time.time()
        for ticket in [t for t, v in self.server.tickets.items() if v["expires"] < now]:
            self.server.tickets.pop(ticket, None)
        objects = []
        for obj in _list(body, "objects"):
            oid, size = _field(obj, "oid", str, ""), _size(obj, "size", None)
            if not SHA256_RE.match(oid) or size > self.server.limits.lfs_object:
                raise HTTPError(422, f"invalid LFS object {oid!r} of {size} bytes: oid is a sha256 in hex, "
                                     f"size at most {self.server.limits.lfs_object}")
            item: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if oid not in in_repo or not self.server.storage.has_blob(oid, size):
                ticket = secrets.token_urlsafe(24)
                self.server.tickets[ticket] = {"oid": oid, "size": size, "expires": now + TICKET_SECONDS,
                                               "rtype": rtype, "repo_id": repo_id, "used": False}
                base = self._base_url()
                item["actions"] = {"upload": {"href": f"{base}/_lfs/{oid}?ticket={ticket}", "header": {}},
                                   "verify": {"href": f"{base}/_lfs/{oid}/verify?ticket={ticket}", "header": {}}}
            objects.append(item)
        self._json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                   content_type="application/vnd.git-lfs+json")

    def _ticket(self, oid: str) -> dict:
        ticket = self.server.tickets.get(self.query.get("ticket", ""))
        if ticket is None or ticket["oid"] != oid or ticket["expires"] < time.time():
            raise HTTPError(403, "upload URL is invalid or expired; ask the batch endpoint again")
        return ticket

    @route("PUT", r"^/_lfs/(?P<oid>[0-9a-f]{64})$")
    def lfs_upload(self, oid: str) -> None:
        ticket = self._ticket(oid)  # the ticket is the credential (the client sends no token here)
        if ticket["used"]:
            raise HTTPError(403, "this upload URL was used already; ask the batch endpoint again")
        if self._length is not None and self._length != ticket["size"]:
            self._body_read, self.close_connection = True, True
            raise HTTPError(413 if self._length > ticket["size"] else 400,
                            f"body of {self._length} bytes; the batch announced {ticket['size']}")
        self._body_limit = ticket["size"]
        ticket["used"] = True
        try:
            self.server.storage.put_stream(self._body_chunks(), oid, ticket["size"])
        except BaseException:
            ticket["used"] = False
            raise
        self.server.storage.add_repo_lfs(ticket["rtype"], ticket["repo_id"], [oid])  # kept even if no commit comes
        self.server.stats["lfs_uploads"] += 1
        self.server.stats["lfs_bytes_received"] += ticket["size"]
        self._json({})

    @route("POST", r"^/_lfs/(?P<oid>[0-9a-f]{64})/verify$")
    def lfs_verify(self, oid: str) -> None:
        ticket = self._ticket(oid)
        user = self._writer()
        org = ticket["repo_id"].split("/")[0]
        if not user.can_write(org):
            raise HTTPError(403, f"{user.user} may not write to {ticket['repo_id']}")
        body = self._json_body()
        if body.get("oid") != oid or not ticket["used"] or \
                not self.server.storage.has_blob(oid, _size(body, "size", None)):
            raise HTTPError(404, f"LFS object {oid} with size {body.get('size')} was not uploaded with this ticket")
        self.server.tickets.pop(self.query["ticket"], None)
        self._json({})

    @route("POST", API + r"/commit/(?P<rev>[^/]+)$")
    def commit(self, plural: str, org: str, name: str, rev: str) -> None:
        rtype, repo_id, _ = self._repo(plural, org, name, write=True)
        user = self._writer()
        if self.query.get("create_pr") in ("1", "true", "True"):
            raise HTTPError(400, "pull requests are not served by this Hub server")
        if not valid_ref_name(rev):
            raise HTTPError(400, f"invalid branch name {rev!r}")
        storage = self.server.storage
        header: dict[str, Any] = {}
        operations: list[tuple] = []
        lfs_oids: set[str] = set()
        for n, line in enumerate(self._body().splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                key, value = item["key"], item["value"]
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
                raise HTTPError(400, f"commit payload line {n} is not a {{key, value}} JSON object") from None
            if not isinstance(value, dict):
                raise HTTPError(400, f"commit payload line {n}: value must be a JSON object")
            if key == "header":
                header = value
                continue
            path = clean_path(_field(value, "path", str, ""))
            if key == "file":
                content, encoding = _field(value, "content", str, ""), value.get("encoding")
                if encoding not in (None, "base64"):
                    raise HTTPError(400, f"{path}: encoding {encoding!r} is not served (base64)")
                data = _b64(content, path) if encoding == "base64" else content.encode()
                operations.append(("add", path, data, None))
            elif key == "lfsFile":
                oid, size = _field(value, "oid", str, ""), _size(value, "size", None)
                if not SHA256_RE.match(oid):
                    raise HTTPError(400, f"{path}: lfsFile oid must be a sha256 in hex")
                lfs_oids.add(oid)
                operations.append(("add", path, None, Entry(oid, size, True)))
            elif key == "deletedFile":
                operations.append(("delete", path))
            elif key == "deletedFolder":
                operations.append(("delete_folder", path))
            else:
                raise HTTPError(400, f"commit operation {key!r} is not served")
        # As on the Hub, an LFS object joins a commit only if it was uploaded to this repo (or is in it):
        # knowing another repo's sha256 does not give its bytes.
        foreign = sorted(lfs_oids - storage.repo_lfs(rtype, repo_id))
        if foreign:
            raise HTTPError(422, f"LFS object {foreign[0]} was never uploaded to {repo_id}")
        for op in operations:  # the Hub refuses a README whose metadata is invalid; nothing is committed
            if op[0] == "add" and op[1] == "README.md" and op[2] is not None:
                errors = validate_card(op[2].decode("utf-8", "replace"), rtype)
                if errors:
                    raise HTTPError(400, "README.md: " + "; ".join(errors))
        parent = header.get("parentCommit")
        if parent is not None and not (isinstance(parent, str) and SHA_RE.match(parent)):
            raise HTTPError(400, "parentCommit must be a 40-hex commit id")
        sha = storage.commit(rtype, repo_id, rev, operations, _text(header, "summary") or "update",
                             _text(header, "description"), parent_commit=parent, author=user.user)
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
            tag = _field(body, "tag", str, "")
            target = storage.resolve(rtype, repo_id, ref)
            storage.set_ref(rtype, repo_id, "tag", tag, target, _text(body, "message"))
            self._json({"name": tag, "ref": f"refs/tags/{tag}", "targetCommit": target})
        else:  # POST .../branch/{name} {"startingPoint": revision}
            target = storage.resolve(rtype, repo_id, _field(body, "startingPoint", str, None) or "main")
            storage.set_ref(rtype, repo_id, "branch", ref, target)
            self._json({"name": ref, "ref": f"refs/heads/{ref}", "targetCommit": target})

    @route("DELETE", API + r"/(?P<kind>tag|branch)/(?P<ref>[^/]+)$")
    def delete_ref(self, plural: str, org: str, name: str, kind: str, ref: str) -> None:
        rtype, repo_id, _ = self._repo(plural, org, name, write=True)
        # A version tag is a promise to consumers: deleting it (or deleting it to re-point it) is refused
        # to everyone but an admin.
        if kind == "tag" and protected(ref, self.server.protected_tags) and not self._user().is_admin:
            raise HTTPError(403, f"tag {ref!r} is protected ({', '.join(self.server.protected_tags)}): "
                                 "only an admin can delete or move it")
        self.server.storage.set_ref(rtype, repo_id, kind, ref, None)
        self._json({})

    @route("GET", r"^/_admin/stats$")
    def admin_stats(self) -> None:
        self._admin()
        self._json(dict(self.server.stats))

    @route("POST", r"^/_admin/faults$")
    def admin_faults(self) -> None:
        self._admin()
        rules = self._json_body().get("rules", [])
        if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
            raise HTTPError(400, "rules must be a list of objects")
        self.server.faults.set_rules(rules)
        self._json({"rules": self.server.faults.rules})


def _field(body: dict, key: str, kind: type, default: Any) -> Any:
    """body[key] if it has the expected JSON type (absent or null: default), else a 400 naming the field."""
    value = body.get(key) if isinstance(body, dict) else None
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise HTTPError(400, f"{key} must be a {kind.__name__}")
    return value


def _repo_name(body: dict, user: str) -> tuple[str, str]:
    """(namespace, name) of a create/delete body: `name` may be "org/name"; else `organization`, else the user."""
    org, name = _field(body, "organization", str, None) or user, _field(body, "name", str, "")
    return tuple(name.split("/", 1)) if "/" in name else (org, name)


def _size(body: dict, key: str, default: int | None) -> int:
    value = _field(body, key, int, default)
    if value is None or value < 0 or value > 1 << 50:
        raise HTTPError(400, f"{key} must be a non-negative integer")
    return value


def _list(body: dict, key: str) -> list[dict]:
    items = _field(body, key, list, [])
    if not all(isinstance(i, dict) for i in items):
        raise HTTPError(400, f"{key} must be a list of objects")
    return items


def _text(body: dict, key: str) -> str:
    return _field(body, key, str, "")


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPError(400, f"{what}: content is not valid base64") from None
