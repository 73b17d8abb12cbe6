"""The Hub server as a shared registry, attacked: traversal through every field that reaches storage,
authorization across two users and an organisation, protected tags, malformed and oversized bodies,
header injection, slow clients, concurrent commits, a second server on one root, TLS and token files.
Every refused attack asserts its exact status and that storage is byte-for-byte unchanged."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

from quantbuild.hubserver import HubServer, Limits, StorageError

from .conftest import VENV_BIN

TOKENS = {
    "tok-alice": {"user": "alice", "role": "write", "orgs": ["acme"]},
    "tok-bob": {"user": "bob", "role": "write"},
    "tok-carol": {"user": "carol", "role": "read", "orgs": ["acme"]},
    "tok-admin": {"user": "root-admin", "role": "admin"},
}
LIMITS = Limits(header_timeout=1.0, idle_timeout=2.0, min_body_rate=1 << 20)
SECRET = b"alice's weights, never to be read by bob"


@pytest.fixture(scope="module")
def sec(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub-security") / "root"
    server = HubServer(root, tokens=TOKENS, limits=LIMITS).start()
    ids = {}
    ids["alice_commit"] = server.seed("alice/public-model", {"config.json": "{}", "w.safetensors": SECRET},
                                      tags=["v1"])
    server.seed("alice/private-model", {"config.json": '{"private": true}'}, private=True)
    server.seed("acme/org-model", {"config.json": '{"org": true}'}, private=True)
    server.seed("bob/bob-model", {"config.json": "{}"})
    ids["alice_oid"] = hashlib.sha256(SECRET).hexdigest()
    yield {"server": server, "root": root, "url": server.url, **ids}
    server.stop()


def snapshot(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock" and p.relative_to(root).parts[0] != "tmp"}


def request(sec, method: str, path: str, body: bytes | None = None, token: str | None = None,
            headers: dict | None = None):
    host, port = sec["server"].httpd.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    all_headers = {**({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {})}
    conn.request(method, path, body=body, headers=all_headers)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response, data


def ndjson(*ops: dict) -> bytes:
    return "\n".join(json.dumps(o) for o in [{"key": "header", "value": {"summary": "attack"}}, *ops]).encode()


def lfs(path: str, oid: str, size: int = 5) -> dict:
    return {"key": "lfsFile", "value": {"path": path, "algo": "sha256", "oid": oid, "size": size}}


def file(path: str, content: str = "eA==") -> dict:
    return {"key": "file", "value": {"path": path, "content": content, "encoding": "base64"}}


J = {"Content-Type": "application/json"}
COMMIT = "/api/models/{repo}/commit/main"
# (id, token, method, path, body, extra headers, expected status)
ATTACKS = [
    # traversal through every field that reaches storage, plain and encoded
    ("lfs oid traversal", "alice", "POST", COMMIT.format(repo="alice/public-model"),
     ndjson(lfs("x.bin", "../../../../../../etc/passwd")), {}, 400),
    ("lfs oid encoded traversal", "alice", "POST", COMMIT.format(repo="alice/public-model"),
     ndjson(lfs("x.bin", "..%2F..%2F..%2Fetc%2Fpasswd")), {}, 400),
    ("lfs oid absolute path", "alice", "POST", COMMIT.format(repo="alice/public-model"),
     ndjson(lfs("x.bin", "/etc/passwd")), {}, 400),
    ("lfs oid upper-case hex", "alice", "POST", COMMIT.format(repo="alice/public-model"),
     ndjson(lfs("x.bin", "A" * 64)), {}, 400),
    ("file path dot-dot", "alice", "POST", COMMIT.format(repo="alice/public-model"), ndjson(file("../escape")), {}, 400),
    ("file path inner dot-dot", "alice", "POST", COMMIT.format(repo="alice/public-model"),
     ndjson(file("a/../../b")), {}, 400),
    ("file path absolute", "alice", "POST", COMMIT.format(repo="alice/public-model"), ndjson(file("/etc/x")), {}, 400),
    ("file path NUL", "alice", "POST", COMMIT.format(repo="alice/public-model"), ndjson(file("a\x00b")), {}, 400),
    ("file path CR LF", "alice", "POST", COMMIT.format(repo="alice/public-model"), ndjson(file("a\r\nb")), {}, 400),
    ("delete path traversal", "alice", "POST", COMMIT.format(repo="alice/public-model"),
     ndjson({"key": "deletedFile", "value": {"path": "../../repo.json"}}), {}, 400),
    ("download path traversal", None, "GET", "/alice/public-model/resolve/main/..%2F..%2F..%2Fetc%2Fpasswd", None, {}, 400),
    ("repo id traversal", None, "GET", "/api/models/alice/..%2F..%2Fetc/tree/main", None, {}, 400),
    ("revision traversal", None, "GET", "/api/models/alice/public-model/revision/..%2F..%2Frefs.json", None, {}, 404),
    ("branch name traversal in commit", "alice", "POST", "/api/models/alice/public-model/commit/..%2F..%2Fx",
     ndjson(file("ok.txt")), {}, 400),
    ("tag name traversal", "alice", "POST", "/api/models/alice/public-model/tag/main",
     json.dumps({"tag": "../../../x"}).encode(), J, 400),
    ("branch create traversal", "alice", "POST", "/api/models/alice/public-model/branch/..%2F..%2Fx", b"{}", J, 400),
    ("upload URL oid traversal", None, "PUT", "/_lfs/..%2F..%2Fetc%2Fpasswd?ticket=x", b"x", {}, 404),
    ("forged upload ticket", None, "PUT", "/_lfs/" + "a" * 64 + "?ticket=..%2F..%2Fx", b"x", {}, 403),
    ("batch oid traversal", "alice", "POST", "/alice/public-model.git/info/lfs/objects/batch",
     json.dumps({"operation": "upload", "objects": [{"oid": "../../etc/passwd", "size": 1}]}).encode(), J, 422),
    ("create repo name traversal", "alice", "POST", "/api/repos/create", json.dumps({"name": "../evil"}).encode(), J, 400),
    ("create repo org traversal", "alice", "POST", "/api/repos/create",
     json.dumps({"name": "x", "organization": "../../tmp"}).encode(), J, 400),
    ("delete repo traversal", "alice", "DELETE", "/api/repos/delete",
     json.dumps({"name": "../../objects", "organization": "alice"}).encode(), J, 400),
    # authorization: two users and an organisation
    ("create in another user's namespace", "bob", "POST", "/api/repos/create",
     json.dumps({"name": "alice/squat"}).encode(), J, 403),
    ("create in an org one is not in", "bob", "POST", "/api/repos/create",
     json.dumps({"name": "x", "organization": "acme"}).encode(), J, 403),
    ("read-only member creates in its org", "carol", "POST", "/api/repos/create",
     json.dumps({"name": "x", "organization": "acme"}).encode(), J, 403),
    ("read another user's private repo", "bob", "GET", "/api/models/alice/private-model", None, {}, 404),
    ("read a private repo anonymously", None, "GET", "/api/models/alice/private-model", None, {}, 401),
    ("download from an org's private repo", "bob", "GET", "/acme/org-model/resolve/main/config.json", None, {}, 404),
    ("commit to another user's repo", "bob", "POST", COMMIT.format(repo="alice/public-model"),
     ndjson(file("pwned.txt")), {}, 403),
    ("read-only member commits to its org", "carol", "POST", COMMIT.format(repo="acme/org-model"),
     ndjson(file("x.txt")), {}, 403),
    ("delete another user's repo", "bob", "DELETE", "/api/repos/delete",
     json.dumps({"name": "public-model", "organization": "alice"}).encode(), J, 403),
    ("delete another user's private repo", "bob", "DELETE", "/api/repos/delete",
     json.dumps({"name": "private-model", "organization": "alice"}).encode(), J, 404),
    ("tag another user's repo", "bob", "POST", "/api/models/alice/public-model/tag/main",
     json.dumps({"tag": "evil"}).encode(), J, 403),
    ("delete another user's tag", "bob", "DELETE", "/api/models/alice/public-model/tag/v1", None, {}, 403),
    ("owner deletes a protected version tag", "alice", "DELETE", "/api/models/alice/public-model/tag/v1", None, {}, 403),
    ("owner moves a version tag", "alice", "POST", "/api/models/alice/public-model/tag/main",
     json.dumps({"tag": "v1"}).encode(), J, 409),
    ("branch in another user's repo", "bob", "POST", "/api/models/alice/public-model/branch/evil", b"{}", J, 403),
    ("delete another user's branch", "bob", "DELETE", "/api/models/alice/public-model/branch/main", None, {}, 403),
    ("preupload to another user's repo", "bob", "POST", "/api/models/alice/public-model/preupload/main",
     json.dumps({"files": [{"path": "a", "size": 1, "sample": ""}]}).encode(), J, 403),
    ("LFS batch on another user's repo", "bob", "POST", "/alice/public-model.git/info/lfs/objects/batch",
     json.dumps({"operation": "upload", "objects": [{"oid": "b" * 64, "size": 1}]}).encode(), J, 403),
    ("claim another repo's LFS object by its sha256", "bob", "POST", COMMIT.format(repo="bob/bob-model"),
     ndjson(lfs("stolen.safetensors", "{alice_oid}", len(SECRET))), {}, 422),
    ("admin stats anonymously", None, "GET", "/_admin/stats", None, {}, 401),
    ("admin stats with a write token", "alice", "GET", "/_admin/stats", None, {}, 403),
    ("fault injection with a write token", "alice", "POST", "/_admin/faults",
     json.dumps({"rules": [{"nth": 1, "action": "500"}]}).encode(), J, 403),
    ("LFS verify without a ticket", "alice", "POST", "/_lfs/{alice_oid}/verify",
     json.dumps({"oid": "{alice_oid}", "size": len(SECRET)}).encode(), J, 403),
    ("wrong token", "nobody", "GET", "/api/models/alice/public-model", None, {}, 401),
    # malformed bodies: a 4xx JSON answer, never a dropped connection
    ("create body is a list", "alice", "POST", "/api/repos/create", b"[]", J, 400),
    ("create name of the wrong type", "alice", "POST", "/api/repos/create", json.dumps({"name": 5}).encode(), J, 400),
    ("create body not JSON", "alice", "POST", "/api/repos/create", b"{nope", J, 400),
    ("create private of the wrong type", "alice", "POST", "/api/repos/create",
     json.dumps({"name": "typed", "private": "yes"}).encode(), J, 400),
    ("commit file with invalid base64", "alice", "POST", COMMIT.format(repo="alice/public-model"),
     ndjson(file("b.txt", "!!!not base64!!!")), {}, 400),
    ("commit lfs size not a number", "alice", "POST", COMMIT.format(repo="alice/public-model"),
     ndjson({"key": "lfsFile", "value": {"path": "x.bin", "oid": "c" * 64, "size": "abc"}}), {}, 400),
    ("commit line not JSON", "alice", "POST", COMMIT.format(repo="alice/public-model"), b"{]\n", {}, 400),
    ("commit value not an object", "alice", "POST", COMMIT.format(repo="alice/public-model"),
     json.dumps({"key": "file", "value": [1]}).encode(), {}, 400),
    ("commit header parentCommit not a sha", "alice", "POST", COMMIT.format(repo="alice/public-model"),
     json.dumps({"key": "header", "value": {"summary": "x", "parentCommit": ["../x"]}}).encode(), {}, 400),
    ("preupload files not a list", "alice", "POST", "/api/models/alice/public-model/preupload/main",
     json.dumps({"files": "x"}).encode(), J, 400),
    ("preupload sample invalid base64", "alice", "POST", "/api/models/alice/public-model/preupload/main",
     json.dumps({"files": [{"path": "a", "size": 1, "sample": "%%%"}]}).encode(), J, 400),
    ("batch objects of the wrong type", "alice", "POST", "/alice/public-model.git/info/lfs/objects/batch",
     json.dumps({"operation": "upload", "objects": [{"oid": 1, "size": 1}]}).encode(), J, 400),
    ("paths-info paths not strings", None, "POST", "/api/models/alice/public-model/paths-info/main",
     json.dumps({"paths": [1, 2]}).encode(), J, 400),
    ("tag name of the wrong type", "alice", "POST", "/api/models/alice/public-model/tag/main",
     json.dumps({"tag": ["x"]}).encode(), J, 400),
    ("Content-Length not a number", "alice", "POST", "/api/repos/create", None, {"Content-Length": "abc"}, 400),
    ("Content-Length negative", "alice", "POST", "/api/repos/create", None, {"Content-Length": "-5"}, 400),
    ("unsupported method", None, "PATCH", "/api/models/alice/public-model", None, {}, 405),
]


@pytest.mark.parametrize("name,who,method,path,body,headers,status", ATTACKS, ids=[a[0] for a in ATTACKS])
def test_attack_is_refused_and_storage_is_unchanged(sec, name, who, method, path, body, headers, status):
    fill = {"alice_oid": sec["alice_oid"]}
    path = path.replace("{alice_oid}", fill["alice_oid"])
    if isinstance(body, bytes):
        body = body.replace(b"{alice_oid}", fill["alice_oid"].encode())
    token = {"nobody": "tok-nobody"}.get(who, f"tok-{who}" if who else None)
    before = snapshot(sec["root"])
    if "Content-Length" in headers:  # a header http.client would overwrite: send it raw
        response_status, data = raw_exchange(sec, f"{method} {path} HTTP/1.1\r\nHost: x\r\n"
                                                  f"Authorization: Bearer {token}\r\nContent-Length: "
                                                  f"{headers['Content-Length']}\r\n\r\n".encode())
    else:
        response, data = request(sec, method, path, body, token, headers)
        response_status = response.status
        assert response.getheader("Content-Type", "").startswith("application/json"), data[:200]
    assert response_status == status, data[:300]
    assert "error" in json.loads(data.split(b"\r\n\r\n", 1)[-1] or b"{}"), data[:300]
    assert snapshot(sec["root"]) == before


def raw_exchange(sec, payload: bytes, timeout: float = 10) -> tuple[int, bytes]:
    host, port = sec["server"].httpd.server_address[:2]
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(payload)
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data:
                head, _, rest = data.partition(b"\r\n\r\n")
                length = [int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")]
                if length and len(rest) >= length[0]:
                    break
    return int(data.split(b" ", 2)[1]), data


def test_oversized_body_is_refused_before_authentication(sec):
    before = snapshot(sec["root"])
    # No token and a 2 MiB announced body the client never sends: the answer comes at once, unread.
    status, data = raw_exchange(sec, b"POST /api/repos/create HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                     b"Content-Length: 2097152\r\n\r\n")
    assert status == 413 and b"Connection: close" in data
    chunked = b"POST /api/repos/create HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + \
        (b"100000\r\n" + b"x" * 0x100000 + b"\r\n") * 2 + b"0\r\n\r\n"
    status, _ = raw_exchange(sec, chunked)
    assert status == 413
    assert snapshot(sec["root"]) == before


def test_lfs_upload_bigger_than_its_ticket_is_refused(sec):
    api = HfApi(endpoint=sec["url"], token="tok-alice")
    data = b"some bytes for an upload ticket"
    oid = hashlib.sha256(data).hexdigest()
    response, body = request(sec, "POST", "/alice/public-model.git/info/lfs/objects/batch",
                             json.dumps({"operation": "upload", "objects": [{"oid": oid, "size": len(data)}]}).encode(),
                             "tok-alice", J)
    href = json.loads(body)["objects"][0]["actions"]["upload"]["href"].replace(sec["url"], "")
    before = snapshot(sec["root"])
    status, _ = raw_exchange(sec, f"PUT {href} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data) + 100}\r\n\r\n".encode()
                             + data + b"x" * 100)
    assert status == 413 and snapshot(sec["root"]) == before
    response, _ = request(sec, "PUT", href, data)
    assert response.status == 200
    response, _ = request(sec, "PUT", href, data)  # a ticket is used once
    assert response.status == 403
    assert api.model_info("alice/public-model")


def test_request_input_never_reaches_a_header_unescaped(sec):
    response, data = request(sec, "GET", "/api/models/alice/nothing%0d%0aSet-Cookie:%20pwned=1/tree/main")
    assert response.status in (400, 404) and response.getheader("Set-Cookie") is None
    assert all("\r" not in v and "\n" not in v for _, v in response.getheaders())
    # A 404 for a non-Latin-1 file name is a JSON answer, not a dropped connection.
    response, data = request(sec, "GET", "/alice/public-model/resolve/main/%E2%9C%93-%E4%B8%AD.txt")
    assert response.status == 404 and "EntryNotFound" == response.getheader("X-Error-Code")
    assert "\\u2713" in response.getheader("X-Error-Message")
    assert json.loads(data)["error"].startswith("✓-中.txt not found")


@pytest.mark.parametrize("line", [b"GARBAGE", b"GET /x HTTP/x.y", b"GET /x HTTP/9.9", b"GET " + b"a" * 70000 + b" HTTP/1.1"])
def test_malformed_request_line_gets_a_json_4xx(sec, line):
    status, data = raw_exchange(sec, line + b"\r\nHost: x\r\n\r\n")
    assert 400 <= status < 500 and b'{"error"' in data


def test_idle_and_slow_clients_are_cut(sec):
    host, port = sec["server"].httpd.server_address[:2]
    with socket.create_connection((host, port), timeout=10) as idle:  # says nothing at all
        start = time.monotonic()
        assert idle.recv(1) == b"" and time.monotonic() - start < 5
    with socket.create_connection((host, port), timeout=10) as slow:  # trickles its headers
        slow.sendall(b"GET /api/models/alice/public-model HTTP/1.1\r\nHost: x\r\n")
        start, closed = time.monotonic(), False
        while time.monotonic() - start < 6:
            try:
                slow.sendall(b"X-Slow: 1\r\n")
            except OSError:
                closed = True
                break
            time.sleep(0.2)
        assert closed and time.monotonic() - start < 4
    with socket.create_connection((host, port), timeout=10) as slow_body:  # announces a body, sends a trickle
        slow_body.sendall(b"POST /api/repos/create HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Authorization: Bearer tok-alice\r\nContent-Length: 100000\r\n\r\n")
        start, closed = time.monotonic(), False
        while time.monotonic() - start < 8:
            try:
                slow_body.sendall(b" ")
                if slow_body.recv(1, socket.MSG_DONTWAIT) == b"":
                    closed = True
                    break
            except BlockingIOError:
                pass
            except OSError:
                closed = True
                break
            time.sleep(0.2)
        assert closed and time.monotonic() - start < 5


def test_private_flag_from_the_real_client_is_honoured(sec):
    alice = HfApi(endpoint=sec["url"], token="tok-alice")
    alice.create_repo("acme/secret-plans", private=True)  # huggingface_hub sends visibility: private
    assert alice.model_info("acme/secret-plans").private is True
    assert HfApi(endpoint=sec["url"], token="tok-carol").model_info("acme/secret-plans").id  # org member reads
    for token in (False, "tok-bob"):
        with pytest.raises(RepositoryNotFoundError):
            HfApi(endpoint=sec["url"], token=token).model_info("acme/secret-plans")
    assert HfApi(endpoint=sec["url"], token="tok-admin").model_info("acme/secret-plans").id


def test_admin_may_move_a_version_tag_and_read_stats(sec):
    admin = HfApi(endpoint=sec["url"], token="tok-admin")
    bob = HfApi(endpoint=sec["url"], token="tok-bob")
    sha = bob.upload_file(path_or_fileobj=b"1", path_in_repo="a.txt", repo_id="bob/bob-model").oid
    bob.create_tag("bob/bob-model", tag="v2.0.0", revision=sha)
    with pytest.raises(HfHubHTTPError) as info:
        bob.delete_tag("bob/bob-model", tag="v2.0.0")
    assert info.value.response.status_code == 403
    admin.delete_tag("bob/bob-model", tag="v2.0.0")
    response, data = request(sec, "GET", "/_admin/stats", token="tok-admin")
    assert response.status == 200 and json.loads(data)["commits"] >= 1


def test_concurrent_commits_are_all_kept(sec):
    api = HfApi(endpoint=sec["url"], token="tok-alice")
    api.create_repo("alice/busy")
    errors = []

    def commit(i: int) -> None:
        try:
            api.upload_file(path_or_fileobj=f"{i}".encode(), path_in_repo=f"f{i}.txt", repo_id="alice/busy")
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=commit, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert {f"f{i}.txt" for i in range(8)} <= set(api.list_repo_files("alice/busy"))
    assert len(api.list_repo_commits("alice/busy")) == 9


def test_a_second_server_on_the_same_root_is_refused(sec, tmp_path):
    before = snapshot(sec["root"])
    with pytest.raises(StorageError, match="in use by another quantbuild hub server"):
        HubServer(sec["root"])
    cli = subprocess.run([str(VENV_BIN / "quantbuild"), "hub", "seed", "--root", str(sec["root"]), "alice/x",
                          str(tmp_path)], capture_output=True, text=True)
    assert cli.returncode == 2 and cli.stderr.startswith("error: ") and "Traceback" not in cli.stderr
    assert len(cli.stderr.strip().splitlines()) == 1
    assert snapshot(sec["root"]) == before


def test_tokens_file_readable_by_others_is_refused(tmp_path):
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("tok-x: {user: x, role: write}\n")
    os.chmod(tokens, 0o644)
    cli = subprocess.run([str(VENV_BIN / "quantbuild"), "hub", "serve", "--root", str(tmp_path / "r"), "--port", "0",
                          "--tokens-file", str(tokens)], capture_output=True, text=True, timeout=60)
    assert cli.returncode == 2 and "chmod 600" in cli.stderr and len(cli.stderr.strip().splitlines()) == 1


def test_tls(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    with HubServer(tmp_path / "root", tokens=TOKENS, certfile=cert, keyfile=key) as server:
        server.seed("alice/tls", {"config.json": "{}"})
        assert server.url.startswith("https://")
        host, port = server.httpd.server_address[:2]
        context = ssl.create_default_context(cafile=str(cert))
        conn = http.client.HTTPSConnection(host, port, context=context, timeout=10)
        body = json.dumps({"operation": "upload", "objects": [{"oid": "d" * 64, "size": 3}]})
        conn.request("POST", "/alice/tls.git/info/lfs/objects/batch", body=body,
                     headers={"Authorization": "Bearer tok-alice", **J})
        response = conn.getresponse()
        href = json.loads(response.read())["objects"][0]["actions"]["upload"]["href"]
        assert response.status == 200 and href.startswith(f"https://{host}:{port}/_lfs/")
        conn.close()
        # a plain-HTTP client gets nothing, and the server keeps serving
        with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
            plain = http.client.HTTPConnection(host, port, timeout=5)
            plain.request("GET", "/api/models/alice/tls")
            plain.getresponse().read()
        conn = http.client.HTTPSConnection(host, port, context=context, timeout=10)
        conn.request("GET", "/api/models/alice/tls")
        assert conn.getresponse().status == 200


def test_forwarded_scheme_is_honoured_only_when_trusted(sec):
    body = json.dumps({"operation": "upload", "objects": [{"oid": "e" * 64, "size": 3}]}).encode()
    headers = {**J, "X-Forwarded-Proto": "https", "Host": "hub.example.org"}
    _, data = request(sec, "POST", "/alice/public-model.git/info/lfs/objects/batch", body, "tok-alice", headers)
    assert json.loads(data)["objects"][0]["actions"]["upload"]["href"].startswith("http://hub.example.org/_lfs/")
    sec["server"].httpd.trust_proxy = True
    try:
        _, data = request(sec, "POST", "/alice/public-model.git/info/lfs/objects/batch", body, "tok-alice", headers)
        assert json.loads(data)["objects"][0]["actions"]["upload"]["href"].startswith("https://hub.example.org/_lfs/")
    finally:
        sec["server"].httpd.trust_proxy = False
    status, data = raw_exchange(sec, b"POST /alice/public-model.git/info/lfs/objects/batch HTTP/1.1\r\n"
                                     b"Host: evil.example/x?\r\nAuthorization: Bearer tok-alice\r\n"
                                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    href = json.loads(data.split(b"\r\n\r\n", 1)[1])["objects"][0]["actions"]["upload"]["href"]
    assert status == 200 and "evil" not in href and href.startswith("http://127.0.0.1:")


def test_real_client_round_trip_still_works(sec, tmp_path):
    """The hardening refuses attacks, not the real client: upload a folder with an LFS file, download it."""
    from huggingface_hub import snapshot_download

    api = HfApi(endpoint=sec["url"], token="tok-alice")
    api.create_repo("acme/roundtrip")
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / "w.safetensors").write_bytes(os.urandom(200_000))
    (tmp_path / "up" / "config.json").write_text("{}")
    api.upload_folder(folder_path=tmp_path / "up", repo_id="acme/roundtrip")
    api.create_tag("acme/roundtrip", tag="v0.1.0")
    down = snapshot_download("acme/roundtrip", revision="v0.1.0", endpoint=sec["url"], token="tok-carol",
                             local_dir=tmp_path / "down")
    assert (Path(down) / "w.safetensors").read_bytes() == (tmp_path / "up" / "w.safetensors").read_bytes()
