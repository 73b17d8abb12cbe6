"""card, publish and release end to end: a real pipeline on the tiny model whose base is fetched from the
local Hub server, cards rendered and validated, releases published with the real huggingface_hub client,
GTO tags, and a consumer getting the release three ways."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import VENV_BIN, dvc, make_project, run_cli, run_vllm_probe, write_params

pytestmark = pytest.mark.slow
VARIANT, STRICT = "fp8-dynamic", "strict"
SHIPPED_GATE = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())["eval"]["gate"]
ARTIFACT = f"smollm2-135m-instruct-{VARIANT}"


def set_publish(project: Path, **values) -> None:
    data = yaml.safe_load((project / "params.yaml").read_text())
    data["publish"].update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def git(project: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=project, check=True, capture_output=True, text=True, env=env).stdout.strip()


@pytest.fixture(scope="module")
def released(session_hub, tiny_llama_dir, tmp_path_factory):
    """dvc repro through publish@fp8-dynamic on a base model served by the local Hub (hf engine: fast)."""
    hub = session_hub
    base_repo = hub.repo_id("tiny-base")
    readme = "---\nlicense: mit\nlanguage: [en]\n---\n# tiny random Llama\n"
    base_sha = hub.seed(base_repo, {**{p.name: p for p in tiny_llama_dir.iterdir()}, "README.md": readme})
    project = make_project(tmp_path_factory.mktemp("release") / "project")
    stem = Path(hub.repo_id("rel")).name
    write_params(project / "params.yaml",
                 base={"source": f"hf://{base_repo}", "revision": "main", "dtype": "auto"},
                 calibration={"sources": [{"uri": "builtin://lee-news"}], "n_samples": 16, "seq_len": 128,
                              "heldout_max_docs": 4},
                 variants={VARIANT: {"method": "fp8"}, STRICT: {"method": "fp8"}},
                 sensitivity={"n_samples": 2, "seq_len": 64, "layer_kl": False},
                 # The shipped policy, plus one variant held to an impossible bar: a release with one refusal.
                 eval={"engine": "hf", "tasks": ["heldout_perplexity", "gsm8k_local"], "limit": 1,
                       "max_model_len": 512, "perplexity_windows": 2,
                       "gate": {**SHIPPED_GATE, "variants": {STRICT: {"top1_agreement": 1.5}}}},
                 card={"base_model": None, "tags": ["test-release"]},
                 publish={"enabled": True, "namespace": hub.user, "repo_template": "{base}-{variant}-" + stem})
    git(project, "commit", "-qam", "release test params")
    result = dvc(project, "repro", check=False)  # the whole pipeline: every publish@ stage, publishing on
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    record = json.loads((project / f"build/publish/{VARIANT}.json").read_text())
    return {"project": project, "hub": hub, "base_repo": base_repo, "base_sha": base_sha, "record": record,
            "log": result.stdout + result.stderr}


def test_card_front_matter_reads_back_and_validates(released):
    from huggingface_hub import ModelCard
    from huggingface_hub.utils import get_session

    project = released["project"]
    text = (project / f"build/cards/{VARIANT}/README.md").read_text()
    card = ModelCard.load(project / f"build/cards/{VARIANT}/README.md")
    data = card.data.to_dict()
    assert data["base_model"] == released["base_repo"] and data["base_model_relation"] == "quantized"
    assert data["license"] == "mit"  # inherited from the base model's card on the Hub
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "text-generation"
    assert {"quantized", "fp8", "8-bit", "compressed-tensors", "vllm", "test-release"} <= set(data["tags"])
    metrics = json.loads((project / f"build/eval/{VARIANT}/metrics.json").read_text())
    results = {(r.task_name, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert results[("heldout_perplexity", "word_perplexity")] == metrics["quality.heldout_perplexity.word_perplexity"]
    assert results[("gsm8k_local", "exact_match")] == metrics["quality.gsm8k_local.exact_match"]
    response = get_session().post(f"{released['hub'].url}/api/validate-yaml", json={"content": text, "repoType": "model"})
    assert response.status_code == 200 and response.json()["errors"] == []
    for section in ("## Model Optimizations", "## Deployment", "## Memory", "## Evaluation", "## Performance",
                    "## Reproduction"):
        assert section in text, section
    record = json.loads((project / f"build/variants/{VARIANT}/quantize.json").read_text())
    assert record["calibration"] == "no calibration (data-free method)" and "no calibration (data-free method)" in text
    assert released["base_sha"] in text  # the base model's resolved commit
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    model_md5 = next(o["md5"] for o in lock["stages"][f"quantize@{VARIANT}"]["outs"] if o["path"].endswith("/model"))
    assert model_md5 in text
    assert f"vllm serve {released['record']['repo_id']} --revision v0.1.0" in text
    assert "Quality gate passed" in text and "Not measured: the evaluation ran on the hf engine" in text
    raw = json.loads((project / f"build/eval/{VARIANT}/results/lm_eval.json").read_text())
    assert raw["quantbuild"]["commands"][0] in text


def test_card_uses_a_template_from_params(released, tmp_path):
    from quantbuild import api

    project = released["project"]
    template = tmp_path / "mine.md.j2"
    template.write_text("---\n{{ card_data }}\n---\n# {{ repo_name }}\n{{ summary }}\n")
    params = tmp_path / "params.yaml"
    data = yaml.safe_load((project / "params.yaml").read_text())
    data["card"]["template"] = str(template)
    params.write_text(yaml.safe_dump(data))
    api.card(VARIANT, params, out_path=tmp_path / "README.md", root=project)
    text = (tmp_path / "README.md").read_text()
    assert f"\n# {released['record']['repo_id'].split('/')[1]}\nQuality gate passed: " in text
    assert "## Model Optimizations" not in text and "Quality gate passed" in text
    assert "base_model_relation: quantized" in text


def test_publish_commits_once_and_tags_the_version(released):
    from huggingface_hub import HfApi

    record, hub = released["record"], released["hub"]
    assert record["published"] and record["tag"] == "v0.1.0" and record["version"] == "v0.1.0"
    api = HfApi()
    refs = api.list_repo_refs(record["repo_id"])
    assert {t.name: t.target_commit for t in refs.tags} == {"v0.1.0": record["commit"]}
    commits = api.list_repo_commits(record["repo_id"])
    assert len(commits) == 2  # the repo's initial commit, then exactly one for the release
    files = set(api.list_repo_files(record["repo_id"], revision="v0.1.0"))
    model = released["project"] / f"build/variants/{VARIANT}/model"
    expected = {p.relative_to(model).as_posix() for p in model.rglob("*") if p.is_file()}
    expected |= {"README.md", "eval/metrics.json", "eval/base_metrics.json", "eval/lm_eval.json", "eval/gate.json",
                 "quantbuild/quantize.json"}
    assert expected <= files and "recipe.yaml" in files
    assert f"{hub.url}/{record['repo_id']}/tree/v0.1.0" == record["urls"]["tag"]


def test_republishing_unchanged_content_makes_no_commit_and_uploads_nothing(released):
    project, hub, record = released["project"], released["hub"], released["record"]
    assert "Running stage" not in dvc(project, "repro", f"publish@{VARIANT}").stdout  # DVC: nothing changed
    before = dict(hub.server.stats)
    result = run_cli("publish", VARIANT, cwd=project)  # forced past DVC: the Hub already holds it
    assert result.returncode == 0, result.stderr
    assert "already holds this release; nothing to upload" in result.stderr
    assert json.loads((project / f"build/publish/{VARIANT}.json").read_text()) == record
    after = hub.server.stats
    assert after["commits"] == before.get("commits", 0)
    assert after["lfs_bytes_received"] == before.get("lfs_bytes_received", 0)
    assert dvc(project, "status", f"publish@{VARIANT}").stdout.strip() == "Data and pipelines are up to date."


def test_dry_run_prints_the_plan_and_changes_nothing(released):
    project, hub = released["project"], released["hub"]
    before = dict(hub.server.stats)
    result = run_cli("publish", VARIANT, "--dry-run", cwd=project)
    assert result.returncode == 0, result.stderr
    assert f"would publish {VARIANT} to {hub.url}/{released['record']['repo_id']} branch main, tag v0.1.0" in result.stdout
    assert "0 files to upload" in result.stdout and "unchanged" in result.stdout
    assert hub.server.stats["commits"] == before.get("commits", 0)


def test_gate_failed_variant_is_refused_and_the_release_goes_on(released):
    """One `dvc repro` with publishing on: the refused variant gets a receipt saying why, the other publishes."""
    project, hub = released["project"], released["hub"]
    assert f"REFUSED: {STRICT}: failed its quality gate (top1_agreement recovery" in released["log"]
    receipt = json.loads((project / f"build/publish/{STRICT}.json").read_text())
    assert receipt["published"] is False and receipt["refused"] is True and "< 1.5" in receipt["reason"]
    assert released["record"]["published"] is True
    from huggingface_hub import HfApi

    from quantbuild._card import repo_target
    from quantbuild.config import load_params

    fetch = json.loads((project / "build/base/fetch.json").read_text())
    strict_repo = repo_target(load_params(project / "params.yaml"), STRICT, fetch)[0]
    assert not HfApi(endpoint=hub.url, token=hub.write_token).repo_exists(strict_repo)


def test_wrong_and_read_only_tokens_are_clear_errors(released):
    project, hub = released["project"], released["hub"]
    bad = run_cli("publish", VARIANT, cwd=project, env={"HF_TOKEN": "hf_not_a_real_token_123"})
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith(f"error: publish@{VARIANT}: the Hub at {hub.url} rejected the token (401")
    reader = run_cli("publish", VARIANT, cwd=project, env={"HF_TOKEN": hub.read_token})
    assert reader.returncode == 2 and "the token may not write to" in reader.stderr
    for output in (bad.stdout + bad.stderr, reader.stdout + reader.stderr):
        assert "hf_not_a_real_token_123" not in output and hub.read_token not in output


def test_changed_content_needs_a_new_version_and_gets_a_new_commit(released):
    from huggingface_hub import HfApi

    project, hub = released["project"], released["hub"]
    data = yaml.safe_load((project / "params.yaml").read_text())
    data["card"]["tags"] = ["test-release", "second"]
    (project / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    moved = dvc(project, "repro", f"publish@{VARIANT}", check=False)
    assert moved.returncode != 0
    assert "tag v0.1.0 of" in moved.stderr and "tags are never moved: raise publish.version" in moved.stderr
    set_publish(project, version="v0.2.0")
    hub.server.faults.add("500", path=r"/commit/main$", method="POST")  # the first commit attempt fails
    before = dict(hub.server.stats)
    result = dvc(project, "repro", check=False)  # the whole pipeline: every publish@ stage, publishing on
    hub.server.faults.clear()
    assert result.returncode == 0, result.stderr[-3000:]
    assert "transient error (500); retry 1/3" in result.stderr
    record = json.loads((project / f"build/publish/{VARIANT}.json").read_text())
    assert record["commit"] != released["record"]["commit"] and record["tag"] == "v0.2.0"
    # weights unchanged: only the card is uploaded
    assert f"{VARIANT}: committing 1 changed files (0.0 MB: README.md)" in result.stderr
    assert hub.server.stats["lfs_bytes_received"] == before.get("lfs_bytes_received", 0)
    assert hub.server.stats["commits"] == before.get("commits", 0) + 1
    tags = {t.name: t.target_commit for t in HfApi().list_repo_refs(record["repo_id"]).tags}
    assert tags == {"v0.1.0": released["record"]["commit"], "v0.2.0": record["commit"]}


def test_interrupted_upload_resumes_without_resending(released, tmp_path):
    """A release to a new repo whose commit call fails after the LFS upload: the retry sends no LFS bytes."""
    project, hub = released["project"], released["hub"]
    data = yaml.safe_load((project / "params.yaml").read_text())
    data["publish"]["repo_template"] += "-resume"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(data))
    hub.server.faults.add("503", path=r"/commit/main$", method="POST")
    before = dict(hub.server.stats)
    from quantbuild import api

    record = api.publish(VARIANT, params, out_path=tmp_path / "record.json", root=project)
    hub.server.faults.clear()
    sent = hub.server.stats["lfs_bytes_received"] - before.get("lfs_bytes_received", 0)
    safetensors = (project / f"build/variants/{VARIANT}/model/model.safetensors").stat().st_size
    assert record["new_commit"] and sent == safetensors  # sent once, not twice


def test_branch_per_variant_layout(released, tmp_path):
    from huggingface_hub import HfApi

    project = released["project"]
    data = yaml.safe_load((project / "params.yaml").read_text())
    data["publish"].update(layout="branch-per-variant", version="v0.3.0", repo_template="{base}-all-" + Path(released["hub"].repo_id("b")).name)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(data))
    from quantbuild import api

    api.card(VARIANT, params, out_path=tmp_path / "README.md", root=project)
    assert f"--revision {VARIANT}-v0.3.0" in (tmp_path / "README.md").read_text()
    record = api.publish(VARIANT, params, out_path=tmp_path / "record.json", root=project)
    assert record["branch"] == VARIANT and record["tag"] == f"{VARIANT}-v0.3.0" and "-all-" in record["repo_id"]
    refs = HfApi().list_repo_refs(record["repo_id"])
    assert {b.name for b in refs.branches} == {"main", VARIANT}
    assert {t.name: t.target_commit for t in refs.tags} == {f"{VARIANT}-v0.3.0": record["commit"]}
    assert "model.safetensors" not in HfApi().list_repo_files(record["repo_id"], revision="main")


def test_no_token_string_in_any_output(released):
    project, hub = released["project"], released["hub"]
    produced = [p for p in (project / "build").rglob("*") if p.is_file()]
    produced += [p for p in (project / ".dvc").rglob("*") if p.is_file()]
    produced += [project / "dvc.lock", project / "params.yaml", project / "dvc.yaml"]
    assert len(produced) > 30
    for token in (hub.write_token, hub.read_token):
        for path in produced:
            assert token.encode() not in path.read_bytes(), path
        assert token not in released["log"]


def test_release_tags_and_a_consumer_gets_the_model_three_ways(released, tmp_path):
    project, hub = released["project"], released["hub"]
    record = json.loads((project / f"build/publish/{VARIANT}.json").read_text())
    version = record["version"]
    dvc(project, "push")  # to the default remote "local"
    git(project, "add", "-A")
    git(project, "commit", "-qm", "pipeline results")
    result = run_cli("release", version, cwd=project)
    assert result.returncode == 0, result.stderr
    assert f"{ARTIFACT}@{version}  created" in result.stdout
    assert "-  skipped: failed its quality gate" in result.stdout  # the strict variant
    tag_message = git(project, "tag", "-l", "--format=%(contents)", f"{ARTIFACT}@{version}")
    assert tag_message.startswith(f"Registering artifact {ARTIFACT} version {version}")
    meta = yaml.safe_load((project / "dvc.yaml").read_text())["artifacts"][ARTIFACT]["meta"]
    assert meta["hub"] == {"endpoint": hub.url, "repo": record["repo_id"], "revision": version, "commit": record["commit"]}
    assert git(project, "status", "--porcelain", "--untracked-files=no") == ""
    again = run_cli("release", version, cwd=project)
    assert again.returncode == 0 and f"{ARTIFACT}@{version}  exists" in again.stdout

    consumer = tmp_path / "consumer"
    consumer.mkdir()
    got = subprocess.run([str(VENV_BIN / "dvc"), "artifacts", "get", str(project), ARTIFACT, "--rev", version,
                          "-o", "from-dvc"], cwd=consumer, capture_output=True, text=True)
    assert got.returncode == 0, got.stderr
    model = project / f"build/variants/{VARIANT}/model"
    for path in model.rglob("*"):
        if path.is_file():
            assert (consumer / "from-dvc" / path.relative_to(model)).read_bytes() == path.read_bytes()
    hf = subprocess.run([str(VENV_BIN / "hf"), "download", record["repo_id"], "--revision", version,
                         "--local-dir", "from-hub"], cwd=consumer, capture_output=True, text=True)
    assert hf.returncode == 0, hf.stderr
    assert (consumer / "from-hub/model.safetensors").read_bytes() == (model / "model.safetensors").read_bytes()
    assert (consumer / "from-hub/README.md").read_text() == (project / f"build/cards/{VARIANT}/README.md").read_text()
    from_hub = consumer / "from-hub"
    probe = run_vllm_probe([from_hub], project / "build/calibration/heldout.jsonl", from_hub, tmp_path, n=2)
    assert all(len(row) > 16 for row in probe[str(from_hub)]["top1"])  # vLLM loaded it and scored text


def test_no_local_path_of_the_builder_in_a_published_file(released):
    from quantbuild._publish import release_files

    project = released["project"]
    files = release_files(project, VARIANT)
    assert len(files) > 8
    for f in files:
        data = f.local.read_bytes()
        for local in (str(project), str(Path.home()), "/tmp/", "site-packages/"):
            assert local.encode() not in data, (f.path_in_repo, local)
