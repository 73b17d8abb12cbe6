"""`quantbuild release VERSION`: the model registry view of a pipeline run.

Each variant is a `dvc.yaml` artifact (type model). A release records where the variant was published
in the artifact's `meta` (committed), then writes GTO-format annotated tags `<artifact>@VERSION` on that
commit, which `dvc artifacts get REPO ARTIFACT --rev VERSION` and `gto show` resolve.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

from ._progress import log
from ._layout import SELECTION_DIR, eval_metrics, gate_record, publish_receipt, variant_model
from .config import Params
from .errors import ReleaseError

STAGE = "release"


def _git(root: Path, *args: str, check: bool = True) -> str:
    out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if check and out.returncode != 0:
        raise ReleaseError(f"release: git {' '.join(args)} failed: {(out.stderr or out.stdout).strip()[:200]}")
    return out.stdout.strip()


def _yaml():
    from ruamel.yaml import YAML

    yaml = YAML()  # round trip: comments and layout of dvc.yaml survive
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096
    return yaml


def _artifact_for(artifacts: dict[str, Any], name: str) -> str:
    path = variant_model(name).as_posix()
    for artifact, spec in artifacts.items():
        if spec.get("path") == path:
            return artifact
    raise ReleaseError(f"dvc.yaml artifacts: none has path {path}; add an entry for variant {name} "
                       "(type: model), like the demo's")


def _meta(root: Path, name: str, version: str) -> dict[str, Any]:
    metrics = json.loads((root / eval_metrics(name)).read_text())
    meta: dict[str, Any] = {"quantbuild": {"variant": name, "version": version, "gate_passed": True,
                                           "size_ratio_to_base": metrics.get("size.ratio_to_base")}}
    record_path = root / publish_receipt(name)
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    if record.get("published"):
        if record.get("version") != version:
            raise ReleaseError(f"release {version}: {name} was published as {record.get('version')}; set "
                               f"publish.version: {version} in params.yaml and run `dvc repro publish@{name}` first")
        meta["hub"] = {"endpoint": record["endpoint"], "repo": record["repo_id"], "revision": record["tag"],
                       "commit": record["commit"]}
    return meta


def release(params: Params, version: str, root: Path, *, variants: list[str] | None = None,
            commit: bool = True) -> list[dict[str, Any]]:
    if not re.match(r"^v\d+\.\d+\.\d+$", version):
        raise ReleaseError(f"release: version {version!r} must look like v1.2.3 (GTO's semantic versions)")
    unknown = [v for v in variants or [] if v not in params.variants]
    if unknown:
        raise ReleaseError(f"release --variant: no variant {', '.join(unknown)} in params.yaml "
                           f"(variants: {', '.join(params.variants)})")
    if _git(root, "status", "--porcelain", "--untracked-files=no"):
        raise ReleaseError("release: the working tree has uncommitted changes; commit dvc.lock and params.yaml "
                           "first so the tags point at the state that built the release")
    yaml = _yaml()
    dvc_yaml = root / "dvc.yaml"
    doc = yaml.load(dvc_yaml.read_text())
    artifacts = doc.get("artifacts") or {}
    rows, chosen = [], []
    selection_path = root / SELECTION_DIR / "selection.json"
    not_built = set(json.loads(selection_path.read_text()).get("not_built", [])) if selection_path.is_file() else set()
    for name in variants or list(params.variants):
        gate_path = root / gate_record(name)
        if not gate_path.is_file() and name in not_built and not variants:
            rows.append({"variant": name, "tag": "-", "status": "skipped: not built (its job failed)"})
            continue
        if not gate_path.is_file():
            raise ReleaseError(f"release: {gate_path} is missing (run `dvc repro` or `dvc pull` first)")
        if json.loads(gate_path.read_text()).get("passed") is not True:
            if variants:
                raise ReleaseError(f"release: {name} failed its quality gate and cannot be released")
            rows.append({"variant": name, "tag": "-", "status": "skipped: failed its quality gate"})
            continue
        artifact = _artifact_for(artifacts, name)
        meta = _meta(root, name, version)
        if dict(artifacts[artifact].get("meta") or {}) != meta:
            artifacts[artifact]["meta"] = meta
        chosen.append((name, artifact))
    if not chosen:
        raise ReleaseError(f"release {version}: no variant passed its quality gate; nothing to release")
    selection = root / SELECTION_DIR / "selection.json"
    if selection.is_file():  # the release says which variant is recommended and why
        picked = json.loads(selection.read_text())
        rows.append({"variant": picked.get("recommended") or "-", "tag": "-",
                     "status": f"recommended: {picked.get('reason')}"})
    tags = set(_git(root, "tag", "--list").split())
    head = _git(root, "rev-parse", "HEAD")
    for name, artifact in chosen:
        tag = f"{artifact}@{version}"
        if tag in tags and _git(root, "rev-list", "-n", "1", tag) != head:
            raise ReleaseError(f"release: tag {tag} already exists on another commit; versions are never moved "
                               "(release a new version)")
    import io

    buffer = io.StringIO()
    yaml.dump(doc, buffer)
    if buffer.getvalue() != dvc_yaml.read_text():
        if any(f"{a}@{version}" in tags for _, a in chosen):
            raise ReleaseError(f"release: {version} is tagged but dvc.yaml's artifact meta differs; release a new version")
        if not commit:
            raise ReleaseError("release --no-commit: dvc.yaml's artifact meta must change; run without --no-commit")
        dvc_yaml.write_text(buffer.getvalue())
        _git(root, "add", "dvc.yaml")
        _git(root, "commit", "-q", "-m", f"release {version}: artifact meta for {', '.join(n for n, _ in chosen)}")
        log(STAGE, f"committed dvc.yaml's artifact meta for {version}")
    from gto.api import register

    for name, artifact in chosen:
        tag = f"{artifact}@{version}"
        if tag in tags:
            rows.append({"variant": name, "tag": tag, "status": "exists"})
            continue
        register(str(root), name=artifact, ref="HEAD", version=version,
                 message=f"Registering artifact {artifact} version {version}")
        rows.append({"variant": name, "tag": tag, "status": "created"})
        log(STAGE, f"tagged {tag}")
    return rows
