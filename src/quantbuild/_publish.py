"""The publish stage: one variant's release as one Hub commit plus an immutable version tag.

Rules: a variant that failed its quality gate is refused; unchanged content makes no commit and uploads
nothing; an existing version tag is never moved to other content; transient Hub errors are retried (LFS
objects already uploaded are not sent again, so an interrupted upload resumes). The token comes from
huggingface_hub (HF_TOKEN or `hf auth login`) and is never printed or written.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._card import repo_target, strip_credentials, validate_card_text
from ._io import atomic_outputs, git_blob_oid, sha256_file, write_json
from ._layout import CARDS_DIR, EVAL_DIR, FETCH_RECORD, VARIANTS_DIR, eval_metrics, gate_record, variant_model
from ._progress import log
from ._retry import with_retries
from .config import Params
from .errors import PublishError

STAGE = "publish"
# Files of a release besides the model folder: the card and the evidence behind it.
EXTRA_FILES = {
    "README.md": f"{CARDS_DIR}/{{v}}/README.md",
    "eval/metrics.json": f"{EVAL_DIR}/{{v}}/metrics.json",
    "eval/base_metrics.json": str(eval_metrics("base")),
    "eval/lm_eval.json": f"{EVAL_DIR}/{{v}}/results/lm_eval.json",
    "eval/gate.json": f"{gate_record('{v}')}",
    "quantbuild/quantize.json": f"{VARIANTS_DIR}/{{v}}/quantize.json",
}
KEEP_REMOTE = {".gitattributes"}  # the Hub creates it; a release does not delete it


@dataclass
class LocalFile:
    path_in_repo: str
    local: Path
    size: int
    sha256: str

    def git_oid(self) -> str:
        return git_blob_oid(self.local.read_bytes())

    def same_as(self, remote) -> bool:
        """Equal to a huggingface_hub RepoFile: by sha256 for LFS files, by git blob id otherwise."""
        if remote is None or remote.size != self.size:
            return False
        if remote.lfs is not None:
            return remote.lfs.sha256 == self.sha256
        return remote.blob_id == self.git_oid()


def release_files(root: Path, name: str) -> list[LocalFile]:
    model = root / variant_model(name)
    if not (model / "config.json").is_file():
        raise PublishError(f"publish@{name}: no model at {model} (run `dvc repro quantize@{name}` first)")
    pairs = [(p.relative_to(model).as_posix(), p) for p in sorted(model.rglob("*")) if p.is_file()]
    for in_repo, rel in EXTRA_FILES.items():
        path = root / rel.format(v=name)
        if not path.is_file():
            raise PublishError(f"publish@{name}: {path} is missing (run `dvc repro card@{name}` first)")
        pairs.append((in_repo, path))
    return [LocalFile(p, f, f.stat().st_size, sha256_file(f)) for p, f in pairs]


def gate_refusal(root: Path, name: str) -> str | None:
    """Why the variant may not be published (its gate failed or never ran), or None when it passed."""
    path = root / gate_record(name)
    if not path.is_file():
        raise PublishError(f"publish@{name}: {path} is missing (run `dvc repro gate@{name}` first)")
    gate = json.loads(path.read_text())
    if gate.get("passed") is True:
        return None
    why = "; ".join(f"{f['metric']} recovery {f['recovery']} < {f['minimum']}" if f.get("recovery") is not None
                    else f"{f['metric']}: {f.get('reason', 'not measured')}" for f in gate.get("failures", []))
    return f"failed its quality gate ({why or f'see {gate_record(name)}'})"


# Release files whose re-measured parts must not force a new version (see _card.VOLATILE_START).
VOLATILE_JSON_KEYS = {"seconds", "peak_rss_mb", "timings", "throughput", "hardware", "thresholds", "policy",
                      "failures", "engine_startup_s", "speed", "passed"}


def stable_form(path_in_repo: str, data: bytes) -> bytes:
    """A release file without what is re-measured on every run or set by policy: the card's volatile
    blocks and lines, and timing, speed, hardware and threshold fields of the JSON records."""
    from ._card import VOLATILE_END, VOLATILE_START

    if path_in_repo == "README.md":
        text = data.decode("utf-8", "replace")
        text = re.sub(re.escape(VOLATILE_START) + r".*?" + re.escape(VOLATILE_END), "", text, flags=re.S)
        text = "\n".join(l for l in text.splitlines() if "quantbuild:volatile-line" not in l)
        return text.encode()
    if path_in_repo.endswith(".json"):
        def strip(obj):
            if isinstance(obj, dict):
                return {k: strip(v) for k, v in obj.items()
                        if k not in VOLATILE_JSON_KEYS and not k.startswith(("speed.", "gate.", "recovery."))}
            if isinstance(obj, list):
                return [strip(v) for v in obj]
            return obj
        try:
            return json.dumps(strip(json.loads(data)), sort_keys=True).encode()
        except ValueError:
            return data
    return data


def _hub_error(exc: Exception, name: str, endpoint: str, repo_id: str, what: str) -> PublishError:
    from huggingface_hub.errors import HfHubHTTPError

    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, HfHubHTTPError) and status == 401:
        return PublishError(f"publish@{name}: the Hub at {endpoint} rejected the token (401 while {what}): "
                            "set HF_TOKEN to a valid token with write access")
    if isinstance(exc, HfHubHTTPError) and status == 403:
        return PublishError(f"publish@{name}: the token may not write to {repo_id} (403 while {what}): use a token "
                            f"with write access to {repo_id.split('/')[0]}")
    first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
    detail = f"{status}: {first}" if status else f"{type(exc).__name__}: {first}"
    return PublishError(f"publish@{name}: the Hub at {endpoint} failed while {what} ({detail})")


class Publisher:
    """One variant's release against one endpoint; every network call is retried on transient errors."""

    def __init__(self, params: Params, name: str, root: Path):
        from huggingface_hub import constants

        self.params, self.name = params, name
        fetch = json.loads((root / FETCH_RECORD).read_text())
        self.repo_id, self.branch, self.tag = repo_target(params, name, fetch)
        self.endpoint = strip_credentials(constants.ENDPOINT.rstrip("/"))
        self._api = None

    @property
    def api(self):
        if self._api is None:
            from huggingface_hub import HfApi, get_token

            token = get_token()
            if not token:
                raise PublishError(f"publish@{self.name}: no Hub token: set HF_TOKEN (write access to "
                                   f"{self.repo_id.split('/')[0]}) or run `hf auth login`")
            self._api = HfApi(token=token)
        return self._api

    def call(self, what: str, fn):
        try:
            return with_retries(fn, stage=STAGE, what=what)
        except PublishError:
            raise
        except Exception as exc:
            raise _hub_error(exc, self.name, self.endpoint, self.repo_id, what) from None

    def remote_files(self, revision: str) -> dict[str, Any]:
        from huggingface_hub.hf_api import RepoFile

        tree = self.call(f"listing {self.repo_id}@{revision}", lambda: list(
            self.api.list_repo_tree(self.repo_id, revision=revision, recursive=True)))
        return {f.path: f for f in tree if isinstance(f, RepoFile)}

    def validate_remotely(self, card_text: str) -> None:
        """The Hub's own validate-yaml at HF_ENDPOINT (ModelCard.validate would ask huggingface.co)."""
        from huggingface_hub.utils import get_session

        def post():
            response = get_session().post(f"{self.api.endpoint}/api/validate-yaml", headers=self.api._build_hf_headers(),
                                          json={"content": card_text, "repoType": "model"})
            if response.status_code == 400:
                errors = [e.get("message", "") for e in response.json().get("errors", [])]
                raise PublishError(f"publish@{self.name}: the Hub rejected the card's metadata: {'; '.join(errors)}")
            from huggingface_hub.utils import hf_raise_for_status

            hf_raise_for_status(response)

        self.call("validating the card", post)

    def only_real_changes(self, changed: list[LocalFile]) -> list[LocalFile]:
        """Drop files that differ from the tagged release only in re-measured or policy parts."""
        from huggingface_hub import hf_hub_download

        real = []
        for f in changed:
            if f.path_in_repo != "README.md" and not f.path_in_repo.endswith(".json"):
                real.append(f)
                continue
            try:
                remote = Path(self.call(f"reading {f.path_in_repo}", lambda: hf_hub_download(
                    self.repo_id, f.path_in_repo, revision=self.tag, token=self.api.token))).read_bytes()
            except PublishError:
                real.append(f)
                continue
            if stable_form(f.path_in_repo, remote) != stable_form(f.path_in_repo, f.local.read_bytes()):
                real.append(f)
        if len(real) < len(changed):
            log(STAGE, f"{self.name}: {len(changed) - len(real)} files differ from {self.tag} only in re-measured "
                "figures or policy (speed, timings, thresholds); the release stands")
        return real

    def diff(self, files: list[LocalFile], remote: dict[str, Any]) -> tuple[list[LocalFile], list[str]]:
        changed = [f for f in files if not f.same_as(remote.get(f.path_in_repo))]
        local = {f.path_in_repo for f in files}
        deleted = sorted(p for p in remote if p not in local and p not in KEEP_REMOTE)
        return changed, deleted


def _record(pub: Publisher, commit: str, files: list[LocalFile]) -> dict[str, Any]:
    """The stage's output: what the Hub holds, not what this run did (so re-running leaves it unchanged)."""
    base = f"{pub.endpoint}/{pub.repo_id}"
    return {"published": True, "variant": pub.name, "repo_id": pub.repo_id, "repo_type": "model",
            "endpoint": pub.endpoint, "branch": pub.branch, "tag": pub.tag, "version": pub.params.publish.version,
            "commit": commit, "files": {f.path_in_repo: f.sha256 for f in files},
            "urls": {"repo": base, "tag": f"{base}/tree/{pub.tag}", "commit": f"{base}/commit/{commit}"}}


def publish_variant(params: Params, name: str, out_path: Path, root: Path = Path("."), *, dry_run: bool = False) -> dict[str, Any]:
    cfg = params.publish
    if not cfg.enabled and not dry_run:
        record = {"published": False, "variant": name, "reason": "publish.enabled is false in params.yaml"}
        with atomic_outputs(out_path, field=f"publish@{name} output") as (tmp,):
            write_json(tmp, record)
        log(STAGE, f"{name}: skipped (publish.enabled is false)")
        return record
    refusal = gate_refusal(root, name)
    if refusal and not dry_run:
        # An outcome, not a crash: the release goes on without this variant and lists it as refused.
        record = {"published": False, "refused": True, "variant": name, "reason": refusal}
        with atomic_outputs(out_path, field=f"publish@{name} output") as (tmp,):
            write_json(tmp, record)
        log(STAGE, f"REFUSED: {name}: {refusal}; nothing uploaded (the other variants publish)")
        return record
    if refusal:
        raise PublishError(f"publish@{name}: refused: the variant {refusal}")
    files = release_files(root, name)
    card_text = (root / EXTRA_FILES["README.md"].format(v=name)).read_text()
    validate_card_text(card_text, f"publish@{name}: {CARDS_DIR}/{name}/README.md")
    pub = Publisher(params, name, root)
    if dry_run:
        return _dry_run(pub, files)
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    api = pub.api
    log(STAGE, f"{name}: {pub.endpoint}/{pub.repo_id} (branch {pub.branch}, tag {pub.tag})")
    role = pub.call("checking the token", lambda: api.whoami()).get("auth", {}).get("accessToken", {}).get("role")
    if role == "read":  # fail before any work; a fine-grained token is checked by the Hub on each write
        raise PublishError(f"publish@{name}: the token may not write to {pub.repo_id} (it is read-only): "
                           f"use a token with write access to {pub.repo_id.split('/')[0]}")
    pub.call(f"creating {pub.repo_id}", lambda: api.create_repo(pub.repo_id, private=cfg.private, exist_ok=True))
    pub.validate_remotely(card_text)
    refs = pub.call("reading refs", lambda: api.list_repo_refs(pub.repo_id))
    tags = {t.name: t.target_commit for t in refs.tags}
    branches = {b.name: b.target_commit for b in refs.branches}
    if pub.tag in tags:  # a version tag is immutable: the same content is a no-op, other content an error
        changed, deleted = pub.diff(files, pub.remote_files(pub.tag))
        changed = pub.only_real_changes(changed)
        if changed or deleted:
            shown = ", ".join([f.path_in_repo for f in changed][:3] + deleted[:3])
            raise PublishError(f"publish@{name}: tag {pub.tag} of {pub.repo_id} already holds different content "
                               f"({len(changed) + len(deleted)} files differ: {shown}); tags are never moved: "
                               "raise publish.version in params.yaml")
        log(STAGE, f"{name}: {pub.repo_id}@{pub.tag} already holds this release; nothing to upload")
        record, changed, deleted = _record(pub, tags[pub.tag], files), [], []
    else:
        if pub.branch not in branches:
            pub.call(f"creating branch {pub.branch}", lambda: api.create_branch(pub.repo_id, branch=pub.branch, exist_ok=True))
            branches[pub.branch] = pub.call("reading the new branch", lambda: api.repo_info(pub.repo_id, revision=pub.branch).sha)
        changed, deleted = pub.diff(files, pub.remote_files(pub.branch))
        commit = branches[pub.branch]
        if changed or deleted:
            names = ", ".join(f.path_in_repo for f in changed[:4]) + (", ..." if len(changed) > 4 else "")
            log(STAGE, f"{name}: committing {len(changed)} changed files ({sum(f.size for f in changed) / 1e6:.1f} MB: "
                f"{names})" + (f" and {len(deleted)} deletions" if deleted else ""))

            def make_commit():  # operations are single-use: build them anew on every attempt
                ops = [CommitOperationAdd(f.path_in_repo, str(f.local)) for f in changed]
                ops += [CommitOperationDelete(p) for p in deleted]
                return api.create_commit(pub.repo_id, ops, revision=pub.branch, parent_commit=branches[pub.branch],
                                         commit_message=f"Release {name} {cfg.version}",
                                         commit_description=f"Published by quantbuild: {len(changed)} files changed.")

            commit = pub.call("committing", make_commit).oid
        else:
            log(STAGE, f"{name}: {pub.branch} already holds this content; tagging it")

        def tag():
            current = {t.name: t.target_commit for t in api.list_repo_refs(pub.repo_id).tags}
            if current.get(pub.tag) == commit:  # an earlier attempt created it before its answer was lost
                return
            api.create_tag(pub.repo_id, tag=pub.tag, revision=commit, tag_message=f"{name} {cfg.version}")

        pub.call(f"tagging {pub.tag}", tag)
        record = _record(pub, commit, files)
    with atomic_outputs(out_path, field=f"publish@{name} output") as (tmp,):
        write_json(tmp, record)
    new_commit = bool(changed or deleted)
    log(STAGE, f"{name}: {record['urls']['tag']} -> commit {record['commit'][:12]}" + ("" if new_commit else " (unchanged)"))
    return {**record, "new_commit": new_commit, "changed_files": [f.path_in_repo for f in changed],
            "deleted_files": deleted}


def _dry_run(pub: Publisher, files: list[LocalFile]) -> dict[str, Any]:
    """What would be uploaded where. Compares with the Hub when it can be read; writes nothing."""
    tagged = True
    try:
        remote, against = pub.remote_files(pub.tag), f"tag {pub.tag}"
    except PublishError:
        tagged = False
        try:
            remote, against = pub.remote_files(pub.branch), f"branch {pub.branch}"
        except PublishError as exc:
            remote, against = {}, f"nothing (the repo could not be read: {exc})"
    changed, deleted = pub.diff(files, remote)
    if tagged:  # the same rule publish applies: any difference under an existing tag is refused
        against += f" (exists: publishing would {'fail, tags are never moved' if changed or deleted else 'be a no-op'})"
    lines = [f"would publish {pub.name} to {pub.endpoint}/{pub.repo_id} branch {pub.branch}, tag {pub.tag}; "
             f"compared with {against}"]
    for f in files:
        state = "upload" if f in changed else "unchanged"
        lines.append(f"  {state:<9} {f.size:>12,d}  {f.path_in_repo}")
    lines += [f"  delete    {'':>12}  {p}" for p in deleted]
    lines.append(f"{len(changed)} files to upload ({sum(f.size for f in changed) / 1e6:.1f} MB), {len(deleted)} to delete")
    print("\n".join(lines))
    return {"dry_run": True, "repo_id": pub.repo_id, "branch": pub.branch, "tag": pub.tag,
            "upload": [f.path_in_repo for f in changed], "delete": deleted}
