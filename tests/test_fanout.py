"""A release fanned out over runners, each a separate clone sharing one S3 remote (moto) and the local Hub:
`.ci/release-prepare` builds the shared stages, one `.ci/release-variant` per variant (one of them on a
runner whose environment is broken), then the final `.ci/release` with QUANTBUILD_RELEASE_ASSEMBLE=1
restores everything from the run-cache, computes no quantize or evaluate stage, publishes, commits and
tags what was built, and the failed variant blocks nothing."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from .conftest import REPO_ROOT, dvc
from .test_remotes import commit_and_push, release_project, run

pytestmark = pytest.mark.slow
GOOD, BAD = "fp8-dynamic", "int8-w8a8"
HEAVY = ("fetch", "calibrate", "sensitivity", "inputs", "quantize@", "evaluate@")  # as stages log themselves


def runner(root: Path, name: str) -> Path:
    """A fresh runner: a clone of origin with the stage environments (what `make setup` gives a runner)."""
    dest = root / name
    run(root, "git", "clone", "-q", "--branch", "main", str(root / "origin.git"), str(dest))
    if not (dest / ".venvs").exists():
        (dest / ".venvs").symlink_to(REPO_ROOT / ".venvs")
    return dest


def ran(result, stage_prefix: str) -> bool:
    return f"Running stage '{stage_prefix}" in result.stdout


def executed(result, stage_prefix: str) -> bool:
    """The stage's own code started (each stage logs `[<stage>] started`), not only DVC's attempt."""
    return re.search(rf"^\[{re.escape(stage_prefix)}[^\]]*\] started", result.stdout + result.stderr, re.M) is not None


@pytest.fixture(scope="module")
def fanout(session_hub, tiny_llama_dir, tmp_path_factory, s3_endpoint):
    hub = session_hub
    root = tmp_path_factory.mktemp("fanout")
    project = release_project(root, hub, tiny_llama_dir, "fan",
                              {GOOD: {"method": "fp8"}, BAD: {"method": "int8", "n_samples": 8}})
    # the shared remote every runner uses, committed (credentials come from the environment)
    dvc(project, "remote", "add", "-f", "-d", "shared", "s3://quantbuild-test/fanout")
    dvc(project, "remote", "modify", "shared", "endpointurl", s3_endpoint)
    commit_and_push(project, root / "origin.git")
    ci = {"CI": "true"}
    outputs = root / "github-output"

    def hand_over(artifact_from: Path, to: Path) -> None:
        """What the workflow's upload-artifact / download-artifact steps do with release-records/."""
        shutil.copytree(artifact_from / "release-records", to / "release-records", dirs_exist_ok=True)

    prepare_dir = runner(root, "prepare")
    prepare = run(prepare_dir, ".ci/release-prepare", "v0.1.0", check=False, env={**ci, "GITHUB_OUTPUT": str(outputs)})
    good_dir, bad_dir = runner(root, f"variant-{GOOD}"), runner(root, f"variant-{BAD}")
    hand_over(prepare_dir, good_dir)
    hand_over(prepare_dir, bad_dir)
    good = run(good_dir, ".ci/release-variant", GOOD, check=False, env=ci)
    # this runner's build environment is broken: its job fails, as a crash or a lost runner would
    bad = run(bad_dir, ".ci/release-variant", BAD, check=False,
              env={**ci, "QUANTBUILD_ENV_BUILD": str(root / "no-such-env")})
    final_dir = runner(root, "final")
    for job in (prepare_dir, good_dir):  # the failed job uploaded nothing
        hand_over(job, final_dir)
    final = run(final_dir, ".ci/release", "v0.1.0", check=False, env={**ci, "QUANTBUILD_RELEASE_ASSEMBLE": "1"})
    return {"root": root, "hub": hub, "prepare": prepare, "outputs": outputs, "good": good, "bad": bad,
            "final": final, "final_dir": final_dir}


def test_prepare_builds_the_shared_stages_and_names_the_variants(fanout):
    prepare = fanout["prepare"]
    assert prepare.returncode == 0, prepare.stdout[-3000:] + prepare.stderr[-3000:]
    assert fanout["outputs"].read_text().strip() == f'variants={json.dumps([GOOD, BAD])}'
    assert ran(prepare, "fetch") and ran(prepare, "evaluate_base") and not ran(prepare, "quantize@")


def test_a_variant_job_reuses_the_shared_stages_and_builds_only_its_variant(fanout):
    good = fanout["good"]
    assert good.returncode == 0, good.stdout[-3000:] + good.stderr[-3000:]
    for shared in ("fetch", "calibrate", "sensitivity", "inputs", "evaluate_base"):
        assert not ran(good, shared) and f"Stage '{shared}' didn't change, skipping" in good.stdout, shared
    assert ran(good, f"quantize@{GOOD}") and ran(good, f"evaluate@{GOOD}") and ran(good, f"gate@{GOOD}")
    assert not ran(good, f"quantize@{BAD}")
    bad = fanout["bad"]
    assert bad.returncode != 0 and "no-such-env" in bad.stderr


def test_the_final_job_computes_nothing_and_releases_what_was_built(fanout):
    final, hub = fanout["final"], fanout["hub"]
    assert final.returncode == 0, final.stdout[-4000:] + final.stderr[-4000:]
    heavy = [stage for stage in HEAVY if executed(final, stage)]
    assert heavy == [], heavy  # every quantize and evaluate came from the variant jobs
    assert executed(final, f"publish@{GOOD}") and executed(final, "select")
    # the failed variant's quantize was refused on this runner, not computed
    assert f"error: stage 'quantize' would run here, but QUANTBUILD_ONLY_STAGES allows only" in final.stderr
    assert ran(final, f"publish@{GOOD}") and not ran(final, f"publish@{BAD}")
    assert f"NOT BUILT (their jobs failed; not published): {BAD}" in final.stdout
    tags = run(fanout["root"] / "final", "git", "ls-remote", "--tags", "origin").stdout
    assert f"smollm2-135m-instruct-{GOOD}@v0.1.0" in tags and BAD not in tags
    project = fanout["final_dir"]
    selection = json.loads((project / "build/selection/selection.json").read_text())
    assert selection["not_built"] == [BAD] and [r["variant"] for r in selection["variants"]] == [GOOD]
    receipt = json.loads((project / f"build/publish/{GOOD}.json").read_text())
    from huggingface_hub import HfApi

    assert {t.name for t in HfApi().list_repo_refs(receipt["repo_id"]).tags} == {"v0.1.0"}
    assert not (project / f"build/publish/{BAD}.json").exists()
    # the release commit is on origin's release branch, with the built variant's committed records
    branch = run(project, "git", "ls-remote", "origin", "refs/heads/release/v0.1.0").stdout
    assert branch.split()[0] == run(project, "git", "rev-parse", "HEAD").stdout.strip()
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert f"publish@{GOOD}" in lock and f"quantize@{GOOD}" in lock
