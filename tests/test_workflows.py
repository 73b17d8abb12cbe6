"""The GitHub workflows: schema-valid, no high-severity zizmor finding, pinned, least privilege, and
wired only to scripts and CLI commands of this repo (which the other tests run)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import yaml

from .conftest import REPO_ROOT

WORKFLOWS = REPO_ROOT / ".github" / "workflows"


def load(name: str) -> dict:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def steps(workflow: dict):
    for job in workflow["jobs"].values():
        yield from job["steps"]


def check(folder) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO_ROOT / ".ci/check-workflows"), str(folder)], capture_output=True, text=True)


def test_workflows_pass_the_schema_and_zizmor():
    result = check(WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok -- validation done" in result.stdout and "No findings to report" in result.stdout


def test_the_check_fails_on_a_bad_workflow(tmp_path):
    """An unpinned action with a template injection must fail the check (so the check can fail)."""
    for name in ("ci.yml", "pr-report.yml", "release.yml"):
        shutil.copy(WORKFLOWS / name, tmp_path / name)
    text = (tmp_path / "pr-report.yml").read_text()
    text = text.replace('run: .ci/pr-report "origin/$BASE_REF" pr-report',
                        'run: .ci/pr-report "origin/${{ github.event.pull_request.head.ref }}" pr-report')
    (tmp_path / "pr-report.yml").write_text(text)
    result = check(tmp_path)
    assert result.returncode != 0 and "template-injection" in result.stdout
    (tmp_path / "pr-report.yml").write_text((WORKFLOWS / "pr-report.yml").read_text().replace("timeout-minutes: 90", "timeout-minutes: soon"))
    result = check(tmp_path)
    assert result.returncode != 0 and "pr-report.yml" in result.stdout + result.stderr


def test_actions_are_pinned_and_permissions_are_least_privilege():
    for path in WORKFLOWS.glob("*.yml"):
        workflow = yaml.safe_load(path.read_text())
        assert workflow["permissions"] == {"contents": "read"}, path.name
        for step in steps(workflow):
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", step["uses"]), (path.name, step["uses"])
    assert load("pr-report.yml")["jobs"]["report"]["permissions"] == {"contents": "read", "pull-requests": "write"}
    assert load("release.yml")["jobs"]["release"]["permissions"] == {"contents": "write"}


def test_release_workflow_races_never_and_takes_a_runner_label():
    release = load("release.yml")
    assert release["concurrency"] == {"group": "release", "cancel-in-progress": False}
    triggers = release[True]  # YAML 1.1 reads the key `on` as true
    assert triggers["push"]["tags"] == ["v*.*.*"] and "version" in triggers["workflow_dispatch"]["inputs"]
    for name in ("prepare", "variant"):  # the jobs that compute run where the label says (a GPU runner)
        job = release["jobs"][name]
        assert "inputs.runner" in job["runs-on"] and "vars.QUANTBUILD_RUNNER" in job["runs-on"]
        assert "QUANTBUILD_FLAVOR" in job["env"]


def test_release_fans_out_one_job_per_variant_and_assembles_once():
    jobs = load("release.yml")["jobs"]
    prepare, variant, final = jobs["prepare"], jobs["variant"], jobs["release"]
    assert prepare["outputs"]["variants"] == "${{ steps.prepare.outputs.variants }}"
    def last_run(job):
        return [step for step in job["steps"] if "run" in step][-1]["run"]

    def artifacts(job, action):
        return [step["with"] for step in job["steps"] if f"actions/{action}-artifact@" in step.get("uses", "")]

    assert last_run(prepare) == '.ci/release-prepare "$VERSION"'
    assert variant["needs"] == "prepare" and variant["strategy"]["fail-fast"] is False
    assert variant["strategy"]["matrix"]["variant"] == "${{ fromJSON(needs.prepare.outputs.variants) }}"
    assert variant["env"]["VARIANT"] == "${{ matrix.variant }}"  # reaches the script as data, not as code
    assert last_run(variant) == '.ci/release-variant "$VARIANT"'
    # the `cache: false` records travel between the jobs as artifacts (DVC restores a stage from the
    # run-cache only with them in the workspace): prepare -> every variant -> the final job
    assert artifacts(prepare, "upload") == [{"name": "records-prepare", "path": "release-records/"}]
    assert artifacts(variant, "download") == [{"name": "records-prepare", "path": "release-records/"}]
    assert artifacts(variant, "upload") == [{"name": "records-${{ matrix.variant }}", "path": "release-records/"}]
    assert artifacts(final, "download") == [{"pattern": "records-*", "merge-multiple": True, "path": "release-records/"}]
    # the final job runs when variant jobs failed too, and only it publishes, commits and tags
    assert final["needs"] == ["prepare", "variant"]
    assert final["if"] == "${{ always() && needs.prepare.result == 'success' }}"
    release_step = next(s for s in final["steps"] if s.get("name") == "Release")
    assert release_step["env"]["QUANTBUILD_RELEASE_ASSEMBLE"] == "1" and release_step["run"] == '.ci/release "$VERSION"'
    for name, job in jobs.items():
        secrets = set(re.findall(r"secrets\.(\w+)", json.dumps(job)))
        assert ("HF_TOKEN" in secrets) == (name == "release"), name  # the Hub token reaches the final job only
        assert ("permissions" in job) == (name == "release"), name    # only it may write to the repository
        for step in job["steps"]:
            assert ("GH_TOKEN" in json.dumps(step)) == (step.get("name") == "Push the results commit and the tags")
    step = next(s for s in job["steps"] if s.get("name") == "Release")
    assert step["env"]["HF_TOKEN"] == "${{ secrets.HF_TOKEN }}" and step["run"] == '.ci/release "$VERSION"'
    assert not any(s.get("with", {}).get("cache") for s in job["steps"])  # no cache a PR could poison
    # the git write credential reaches the push step only: not persisted by checkout, not in the Release step
    checkout = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/checkout"))
    assert checkout["with"]["persist-credentials"] is False
    holders = [s.get("name") for s in job["steps"] if "github.token" in json.dumps(s.get("env", {}))]
    assert holders == ["Push the results commit and the tags"]
    assert step["env"]["QUANTBUILD_RELEASE_PUSH"] == "0"


def test_pull_requests_hold_no_credential_that_can_write_the_run_cache():
    for job in load("pr-report.yml")["jobs"].values():
        for s in job["steps"]:
            secrets = re.findall(r"secrets\.(\w+)", json.dumps(s))
            assert all(name.startswith("DVC_READONLY_") for name in secrets), (s.get("name"), secrets)
            assert "dvc push" not in s.get("run", "")
    assert "dvc push" not in (REPO_ROOT / ".ci/pr-report").read_text()


def test_every_run_step_calls_this_repos_scripts_or_commands():
    allowed = (".ci/", "make setup", "python -m pip install check-jsonschema", "QUANTBUILD_TOOLS_BIN=",
               "gh pr comment")
    for path in WORKFLOWS.glob("*.yml"):
        for step in steps(yaml.safe_load(path.read_text())):
            if "run" in step:
                assert step["run"].strip().startswith(allowed), (path.name, step["run"])
                for script in re.findall(r"\.ci/[\w-]+", step["run"]):
                    assert (REPO_ROOT / script).stat().st_mode & 0o111, script
    ci = load("ci.yml")
    test_step = next(step for step in ci["jobs"]["test"]["steps"] if "run" in step)
    assert test_step["run"] == ".ci/run"
    assert "make test" in (REPO_ROOT / ".ci/run").read_text()  # the README's test command
