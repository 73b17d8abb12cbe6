"""The local Hub server, exercised by the real clients (huggingface_hub, transformers, datasets, lm-eval)."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from huggingface_hub import HfApi, ModelCard, hf_hub_download, snapshot_download
from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, RepositoryNotFoundError,
                                    RevisionNotFoundError)

from .conftest import REPO_ROOT, VENV_BIN


def files_in(folder: str | Path) -> dict[str, bytes]:
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and ".cache" not in p.parts}


def raw(hub, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """A request that no client normalises (for traversal and protocol checks)."""
    parts = urlsplit(hub.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response, data


@pytest.fixture
def seeded(hub, tmp_path):
    """A model repo with main (v1 files), a tag at the first commit and a dev branch with a change."""
    repo = hub.repo_id("seeded")
    first = hub.seed(repo, {"config.json": '{"v": 1}', "weights.safetensors": os.urandom(4096),
                            "nested/deep/file.txt": "deep"}, tags=["v1.0.0"])
    second = hub.seed(repo, {"config.json": '{"v": 2}'}, message="second")
    dev = hub.seed(repo, {"dev.txt": "only on dev"}, branch="dev", message="dev work")
    return {"repo": repo, "first": first, "second": second, "dev": dev}


class TestDownload:
    def test_snapshot_at_branch_tag_and_sha(self, seeded, tmp_path):
        repo = seeded["repo"]
        main = files_in(snapshot_download(repo, revision="main", local_dir=tmp_path / "main"))
        tag = files_in(snapshot_download(repo, revision="v1.0.0", local_dir=tmp_path / "tag"))
        sha = files_in(snapshot_download(repo, revision=seeded["first"], local_dir=tmp_path / "sha"))
        dev = files_in(snapshot_download(repo, revision="dev", local_dir=tmp_path / "dev"))
        assert main["config.json"] == b'{"v": 2}'
        assert tag["config.json"] == b'{"v": 1}' and tag == sha
        assert tag["nested/deep/file.txt"] == b"deep"
        assert dev["dev.txt"] == b"only on dev" and "dev.txt" not in main

    def test_hf_hub_download_and_metadata(self, seeded):
        path = hf_hub_download(seeded["repo"], "nested/deep/file.txt", revision="v1.0.0")
        assert Path(path).read_text() == "deep"
        assert f"/snapshots/{seeded['first']}/" in path
        info = HfApi().model_info(seeded["repo"], revision="v1.0.0", files_metadata=True)
        assert info.sha == seeded["first"]
        sizes = {s.rfilename: (s.size, s.lfs) for s in info.siblings}
        assert sizes["weights.safetensors"][0] == 4096 and sizes["weights.safetensors"][1] is not None

    def test_missing_things_raise_the_right_errors(self, seeded, hub):
        with pytest.raises(RevisionNotFoundError):
            snapshot_download(seeded["repo"], revision="no-such-branch")
        with pytest.raises(RepositoryNotFoundError):
            snapshot_download(hub.repo_id("never-created"), revision="main")
        with pytest.raises(Exception) as info:
            hf_hub_download(seeded["repo"], "missing.txt")
        assert "EntryNotFound" in type(info.value).__name__ or "Entry" in str(info.value)

    def test_range_requests(self, seeded, hub):
        response, data = raw(hub, "GET", f"/{seeded['repo']}/resolve/main/config.json", headers={"Range": "bytes=1-3"})
        assert response.status == 206 and data == b'"v"'
        assert response.headers["Content-Range"] == "bytes 1-3/8"

    def test_resumed_download_after_dropped_connection(self, hub, tmp_path):
        repo = hub.repo_id("resume")
        payload = os.urandom(3 * 1024 * 1024)
        hub.seed(repo, {"big.safetensors": payload})
        hub.server.faults.add("drop", nth=1, method="GET", path=r"/resolve/.*big\.safetensors", fraction=0.5)
        path = hf_hub_download(repo, "big.safetensors", local_dir=tmp_path)
        assert hashlib.sha256(Path(path).read_bytes()).digest() == hashlib.sha256(payload).digest()
        assert len(hub.server.faults.fired) == 1  # the first GET was cut; the client resumed

    def test_429_with_retry_after_is_retried_by_the_download_client(self, seeded, hub, tmp_path):
        hub.server.faults.add("429", nth=1, method="GET", path=r"/resolve/", retry_after=1)
        path = hf_hub_download(seeded["repo"], "config.json", local_dir=tmp_path)
        assert Path(path).read_bytes() == b'{"v": 2}'
        assert [f["action"] for f in hub.server.faults.fired] == ["429"]

    def test_500_reaches_the_download_client_as_an_error(self, seeded, hub, tmp_path):
        # huggingface_hub retries downloads on 408/429 only; fetch adds its own retry on 5xx.
        hub.server.faults.add("500", nth=1, method="GET", path=r"/resolve/")
        with pytest.raises(HfHubHTTPError) as info:
            hf_hub_download(seeded["repo"], "config.json", local_dir=tmp_path)
        assert info.value.response.status_code == 500

    def test_500_during_lfs_upload_is_retried(self, hub, tmp_path):
        repo = hub.repo_id("retry-up")
        HfApi().create_repo(repo)
        hub.server.faults.add("500", nth=1, method="PUT", path=r"^/_lfs/")
        payload = os.urandom(300_000)
        HfApi().upload_file(path_or_fileobj=payload, path_in_repo="w.safetensors", repo_id=repo)
        assert [f["action"] for f in hub.server.faults.fired] == ["500"]
        path = hf_hub_download(repo, "w.safetensors", local_dir=tmp_path)
        assert Path(path).read_bytes() == payload


class TestUpload:
    def test_upload_folder_with_a_large_file_then_an_identical_one_uploads_nothing(self, hub, tmp_path):
        api = HfApi()
        repo = hub.repo_id("upload")
        api.create_repo(repo)
        folder = tmp_path / "model"
        folder.mkdir()
        big = os.urandom(1024 * 1024) * 101  # 101 MiB: above the Hub's 10 MB LFS threshold, and then some
        (folder / "model.safetensors").write_bytes(big)
        (folder / "config.json").write_text('{"a": 1}')
        before = hub.server.stats["bytes_received"]
        first = api.upload_folder(folder_path=folder, repo_id=repo, commit_message="weights")
        sent_first = hub.server.stats["bytes_received"] - before
        assert sent_first > len(big)
        before = hub.server.stats["bytes_received"]
        second = api.upload_folder(folder_path=folder, repo_id=repo, commit_message="again")
        sent_second = hub.server.stats["bytes_received"] - before
        assert second.oid == first.oid  # no new commit
        assert sent_second < 10_000  # only the preupload request: no file body travelled
        downloaded = hf_hub_download(repo, "model.safetensors", local_dir=tmp_path / "back")
        assert hashlib.sha256(Path(downloaded).read_bytes()).hexdigest() == hashlib.sha256(big).hexdigest()

    def test_create_repo_exists_ok_and_conflict(self, hub):
        api = HfApi()
        repo = hub.repo_id("exists")
        url = api.create_repo(repo)
        assert str(url).endswith(repo)
        assert api.create_repo(repo, exist_ok=True) == url
        with pytest.raises(HfHubHTTPError) as info:
            api.create_repo(repo)
        assert info.value.response.status_code == 409

    def test_tags_branches_refs_commits_and_deletes(self, hub, tmp_path):
        api = HfApi()
        repo = hub.repo_id("refs")
        api.create_repo(repo)
        c1 = api.upload_file(path_or_fileobj=b"one", path_in_repo="a.txt", repo_id=repo, commit_message="one")
        api.create_tag(repo, tag="v0.1.0", revision=c1.oid)
        c2 = api.upload_file(path_or_fileobj=b"two", path_in_repo="a.txt", repo_id=repo, commit_message="two")
        api.create_branch(repo, branch="feature", revision=c1.oid)
        with pytest.raises(HfHubHTTPError) as info:
            api.create_tag(repo, tag="v0.1.0", revision=c2.oid)  # a tag never moves
        assert info.value.response.status_code == 409
        refs = api.list_repo_refs(repo)
        assert {t.name: t.target_commit for t in refs.tags} == {"v0.1.0": c1.oid}
        assert {b.name: b.target_commit for b in refs.branches} == {"main": c2.oid, "feature": c1.oid}
        titles = [c.title for c in api.list_repo_commits(repo)]
        assert titles == ["two", "one", "initial commit"]
        assert hf_hub_download(repo, "a.txt", revision="v0.1.0", local_dir=tmp_path / "t") and \
            (tmp_path / "t" / "a.txt").read_bytes() == b"one"
        api.delete_file("a.txt", repo_id=repo, commit_message="rm")
        assert "a.txt" not in api.list_repo_files(repo)
        api.create_tag(repo, tag="candidate", revision=c2.oid)
        api.delete_tag(repo, tag="candidate")  # an ordinary tag: its repo's writers delete it
        with pytest.raises(HfHubHTTPError) as info:
            api.delete_tag(repo, tag="v0.1.0")  # a version tag: protected, even from the repo's owner
        assert info.value.response.status_code == 403
        HfApi(token=hub.admin_token).delete_tag(repo, tag="v0.1.0")
        api.delete_branch(repo, branch="feature")
        refs = api.list_repo_refs(repo)
        assert refs.tags == [] and [b.name for b in refs.branches] == ["main"]
        api.delete_repo(repo)
        with pytest.raises(RepositoryNotFoundError):
            api.model_info(repo)

    def test_model_card_push_and_invalid_yaml_refused(self, hub, monkeypatch):
        import httpx
        from huggingface_hub.utils import _http

        api = HfApi()
        repo = hub.repo_id("card")
        api.create_repo(repo)
        card = ModelCard("---\nlicense: apache-2.0\nbase_model: org/base\ntags:\n- quantized\n---\n# Card\n")
        # ModelCard.validate posts to a hard-coded https://huggingface.co/api/validate-yaml; route that
        # host to the local server through the client's own transport hook (no function patched).
        local = urlsplit(hub.url)

        def to_local(request: httpx.Request) -> None:
            if request.url.host == "huggingface.co":
                request.url = request.url.copy_with(scheme="http", host=local.hostname, port=local.port)

        monkeypatch.setattr(_http, "_GLOBAL_CLIENT", None)
        _http.set_client_factory(lambda: httpx.Client(event_hooks={"request": [_http.hf_request_event_hook, to_local]},
                                                      follow_redirects=True, timeout=None))
        try:
            card.push_to_hub(repo)
            loaded = ModelCard.load(repo)
            assert loaded.data.license == "apache-2.0" and loaded.data.tags == ["quantized"]
            bad = ModelCard("---\nlicense: [mit, apache-2.0]\n---\n# Bad\n")
            with pytest.raises(ValueError, match='"license" must be a string'):
                bad.push_to_hub(repo)
        finally:
            _http.set_client_factory(_http.default_client_factory)
        # The server refuses an invalid README in a commit too, and the commit leaves nothing behind.
        head = api.model_info(repo).sha
        with pytest.raises(ValueError, match="(?s)Invalid metadata in README.md.*Invalid YAML"):
            api.upload_file(path_or_fileobj=b"---\nlicense: [x\n---\n", path_in_repo="README.md", repo_id=repo)
        assert api.model_info(repo).sha == head
        response, data = raw(hub, "POST", "/api/validate-yaml", json.dumps({"content": "---\na: [x\n---\n"}).encode(),
                             {"Content-Type": "application/json", "Accept": "text/plain"})
        assert response.status == 400 and data.startswith(b"Invalid YAML in README metadata")


class TestAuth:
    def test_wrong_token_is_401(self, seeded):
        with pytest.raises(HfHubHTTPError) as info:
            HfApi(token="hf_wrong").model_info(seeded["repo"])
        assert info.value.response.status_code == 401

    def test_writes_need_a_write_token(self, hub):
        repo = hub.repo_id("ro")
        with pytest.raises(HfHubHTTPError) as info:
            HfApi(token=hub.read_token).create_repo(repo)
        assert info.value.response.status_code == 403
        response, _ = raw(hub, "POST", "/api/repos/create", json.dumps({"name": "x"}).encode(),
                          {"Content-Type": "application/json"})
        assert response.status == 401

    def test_private_and_gated_repos(self, hub, tmp_path):
        private = hub.repo_id("private")
        gated = hub.repo_id("gated")
        hub.seed(private, {"config.json": "{}"}, private=True)
        hub.seed(gated, {"config.json": "{}"}, gated=True, access=[hub.user])
        with pytest.raises(RepositoryNotFoundError):
            HfApi(token=False).model_info(private)
        # visible to its namespace only: another user's token sees no repo at all
        with pytest.raises(RepositoryNotFoundError):
            HfApi(token=hub.read_token).model_info(private)
        assert HfApi().model_info(private).id == private
        with pytest.raises(GatedRepoError):
            hf_hub_download(gated, "config.json", token=False, local_dir=tmp_path / "a")
        with pytest.raises(GatedRepoError):
            hf_hub_download(gated, "config.json", token=hub.other_token, local_dir=tmp_path / "b")
        assert Path(hf_hub_download(gated, "config.json", local_dir=tmp_path / "c")).read_text() == "{}"

    @pytest.mark.parametrize("path", [
        "/qb-tester/x/resolve/main/../../../etc/passwd",
        "/api/models/../../etc/tree/main",
        "/api/models/qb-tester/..%2F..%2Fetc/tree/main",
        "/qb-tester/x/resolve/main//etc/passwd",
    ])
    def test_traversal_is_refused(self, hub, path):
        hub.seed("qb-tester/x", {"a.txt": "a"})
        response, data = raw(hub, "GET", path)
        assert response.status in (400, 404) and b"root:" not in data

    def test_commit_paths_are_validated_and_commits_are_atomic(self, hub):
        api = HfApi()
        repo = hub.repo_id("atomic")
        api.create_repo(repo)
        head = api.model_info(repo).sha
        lines = [{"key": "header", "value": {"summary": "bad"}},
                 {"key": "file", "value": {"path": "ok.txt", "content": "b2s=", "encoding": "base64"}},
                 {"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256", "oid": "0" * 64, "size": 5}}]
        body = "\n".join(json.dumps(x) for x in lines).encode()
        auth = {"Authorization": f"Bearer {hub.write_token}", "Content-Type": "application/x-ndjson"}
        response, _ = raw(hub, "POST", f"/api/models/{repo}/commit/main", body, auth)
        assert response.status == 422  # the LFS object was never uploaded
        lines[2] = {"key": "file", "value": {"path": "../escape.txt", "content": "", "encoding": "base64"}}
        body = "\n".join(json.dumps(x) for x in lines).encode()
        response, _ = raw(hub, "POST", f"/api/models/{repo}/commit/main", body, auth)
        assert response.status == 400
        lines[2] = {"key": "file", "value": {"path": "README.md", "encoding": "base64",
                                             "content": "LS0tCmxpY2Vuc2U6IFt4Ci0tLQo="}}  # "---\nlicense: [x\n---\n"
        body = "\n".join(json.dumps(x) for x in lines).encode()
        response, _ = raw(hub, "POST", f"/api/models/{repo}/commit/main", body, auth)
        assert response.status == 400  # the server checks README metadata itself, not only the client
        assert api.model_info(repo).sha == head and "ok.txt" not in api.list_repo_files(repo)

    def test_lfs_upload_with_wrong_content_is_refused(self, hub):
        repo = hub.repo_id("lfs")
        HfApi().create_repo(repo)
        claimed = hashlib.sha256(b"the real bytes").hexdigest()
        auth = {"Authorization": f"Bearer {hub.write_token}", "Content-Type": "application/vnd.git-lfs+json"}
        batch = {"operation": "upload", "transfers": ["basic"], "objects": [{"oid": claimed, "size": 14}]}
        response, data = raw(hub, "POST", f"/{repo}.git/info/lfs/objects/batch", json.dumps(batch).encode(), auth)
        href = json.loads(data)["objects"][0]["actions"]["upload"]["href"]
        response, _ = raw(hub, "PUT", href.replace(hub.url, ""), b"tampered bytes")
        assert response.status == 400
        assert not hub.server.storage.has_blob(claimed)
        response, _ = raw(hub, "PUT", href.replace(hub.url, ""), b"the real bytes")
        assert response.status == 200 and hub.server.storage.has_blob(claimed, 14)


class TestOtherClients:
    def test_transformers_loads_model_and_tokenizer(self, hub, tiny_llama_dir):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        repo = hub.repo_id("tiny-llama")
        sha = hub.seed(repo, tiny_llama_dir, tags=["v1"])
        model = AutoModelForCausalLM.from_pretrained(repo, revision="v1")
        tokenizer = AutoTokenizer.from_pretrained(repo, revision=sha)
        ids = tokenizer("Hello world", return_tensors="pt")["input_ids"]
        assert model(ids).logits.shape[-1] == 49152

    def test_datasets_loads_a_repo_with_configs(self, hub):
        import datasets

        from quantbuild.hubserver._seeds import gsm8k_files

        repo = hub.repo_id("gsm8k")
        hub.seed(repo, gsm8k_files(), repo_type="dataset")
        test = datasets.load_dataset(repo, "main", split="test")
        assert len(test) == 1319 and test[0]["question"].startswith("Janet")

    @pytest.mark.slow
    def test_lm_eval_loads_the_stock_gsm8k_task(self, hub):
        from quantbuild.hubserver._seeds import gsm8k_files

        hub.seed("openai/gsm8k", gsm8k_files(), repo_type="dataset")
        python = REPO_ROOT / ".venvs" / "serve" / "bin" / "python"
        code = ("from lm_eval.tasks import TaskManager, get_task_dict\n"
                "task = get_task_dict(['gsm8k'], TaskManager())['gsm8k']\n"
                "docs = list(task.test_docs())\n"
                "print(len(docs), task.doc_to_text(docs[0])[:40])\n")
        result = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.strip().splitlines()[-1].startswith("1319 Question: Janet")


def test_cli_serve_and_seed(tmp_path):
    root = tmp_path / "root"
    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "config.json").write_text('{"x": 1}')
    quantbuild = str(VENV_BIN / "quantbuild")
    seeded = subprocess.run([quantbuild, "hub", "seed", "--root", str(root), "--tag", "v1", "me/cli", str(folder)],
                            capture_output=True, text=True, check=True)
    sha = seeded.stdout.split()[-1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "QUANTBUILD_HUB_TOKENS": "tok-cli=me:write"}
    server = subprocess.Popen([quantbuild, "hub", "serve", "--root", str(root), "--port", str(port)], env=env,
                              stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                info = HfApi(endpoint=url, token="tok-cli").model_info("me/cli", revision="v1")
                break
            except Exception:
                time.sleep(0.1)
        assert info.sha == sha
        assert HfApi(endpoint=url, token="tok-cli").whoami()["name"] == "me"
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert "tok-cli" not in server.stderr.read()  # tokens never reach the log
