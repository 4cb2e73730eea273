"""Safe defaults: loopback only, auth, cross-site requests, path escapes, body limits, errors without tracebacks."""

from __future__ import annotations

import base64
import os

import pytest

from sd_lora.cli.main import main
from sd_lora.studio.paths import PathRefused, Roots
from sd_lora.studio.security import Guard


def test_listen_refuses_to_start_without_auth(capsys):
    assert main(["studio", "--listen", "--home", "/nonexistent-never-created"]) == 2
    err = capsys.readouterr().err
    assert "sd-lora studio: error: --listen" in err and "--auth" in err and "Traceback" not in err
    assert main(["studio", "--listen", "--auth", "justuser"]) == 2
    assert "--auth: expected USER:PASSWORD" in capsys.readouterr().err
    assert main(["studio", "--listen", "--token", "short"]) == 2
    assert "at least 16 characters" in capsys.readouterr().err


def test_roots_refuse_escapes(tmp_path):
    root = tmp_path / "data"
    (root / "inside").mkdir(parents=True)
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "key.txt").write_text("secret")
    os.symlink(outside, root / "link")
    os.symlink(root / "inside", root / "fine_link")
    roots = Roots([root])
    assert roots.resolve("data/inside") == (root / "inside").resolve()
    assert roots.resolve("data/fine_link") == (root / "inside").resolve()  # a link that stays inside is fine
    for bad, why in [("data/../secret", "'..'"), ("data/inside/../../secret", "'..'"), (str(outside), "absolute"),
                     ("/etc/passwd", "absolute"), ("data/link/key.txt", "outside the root"),
                     ("secret/key.txt", "not a data root"), ("", "empty"), ("C:/Windows", "absolute")]:
        with pytest.raises(PathRefused, match=why):
            roots.resolve(bad)
    assert roots.client_path(root / "inside") == "data/inside"
    assert roots.client_path(outside) is None


def test_path_escapes_over_http(make_client, data_root, tmp_path):
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "a.png").write_bytes((data_root / "shapes" / "000.png").read_bytes())
    (outside / "a.txt").write_text("do not touch")
    os.symlink(outside, data_root / "escape")
    c = make_client([data_root])
    for path in ["data/../secret", "/etc", str(outside), "data/escape", "data/escape/../shapes/../../secret"]:
        r = c.get("/datasets", params={"path": path})
        assert r.status_code == 403, (path, r.status_code)
        assert "Traceback" not in r.text
    assert c.get("/api/thumb", params={"path": "data/escape/a.png"}).status_code == 403
    assert c.get("/api/captions", params={"path": "data/escape/a.png"}).status_code == 403
    r = c.post("/api/captions", json={"path": "data/escape/a.png", "text": "pwned"})
    assert r.status_code == 403 and "outside the root" in r.json()["error"]
    r = c.post("/api/captions", json={"path": "data/shapes/000.png", "text": "x", "extension": "/../../a.txt"})
    assert r.status_code == 400
    r = c.post("/datasets/replace", data={"path": "data/escape", "find": "do not touch", "replace": "x"})
    assert r.status_code == 403
    assert (outside / "a.txt").read_text() == "do not touch"
    # the new-run form: data paths must lie under a root too
    r = c.post("/runs/new", data={"data.dir": str(outside), "action": "validate"})
    assert r.status_code == 422 and "data.dir: " in r.text and "absolute paths are not accepted" in r.text
    r = c.post("/runs/new", data={"data.dir": "data/escape", "action": "validate"})
    assert r.status_code == 422 and "outside the root" in r.text


def test_run_files_cannot_leave_the_run_folder(make_client, data_root):
    c = make_client([data_root])
    c.post("/runs/new", data={"data.dir": "data/shapes"})
    for rel in ["../../studio.sqlite3", "..%2F..%2Fstudio.sqlite3", "/etc/passwd"]:
        r = c.get(f"/runs/1/files/{rel}")
        assert r.status_code in (404, 422), rel  # 422: the client folded the '..' and the run id is not a number
        assert b"SQLite" not in r.content and b"root:" not in r.content


def test_host_header_must_be_loopback(make_client, data_root):
    c = make_client([data_root], base_url="http://evil.example")
    r = c.get("/runs")
    assert r.status_code == 403 and "127.0.0.1" in r.text
    ok = make_client([data_root], base_url="http://localhost:7860")
    assert ok.get("/runs").status_code == 200


def test_cross_site_requests_are_refused(make_client, data_root):
    c = make_client([data_root])
    caption = data_root / "shapes" / "000.txt"
    before = caption.read_bytes()
    body = {"path": "data/shapes/000.png", "text": "changed"}
    r = c.post("/api/captions", json=body, headers={"origin": "http://evil.example"})
    assert r.status_code == 403 and "cross-site" in r.json()["error"]
    r = c.post("/api/captions", json=body, headers={"origin": "null"})
    assert r.status_code == 403
    r = c.post("/api/captions", json=body, headers={"sec-fetch-site": "cross-site"})
    assert r.status_code == 403
    r = c.post("/runs/new", data={"data.dir": "data/shapes"}, headers={"origin": "http://127.0.0.1.evil.example"})
    assert r.status_code == 403
    assert caption.read_bytes() == before and c.get("/api/runs").json() == []
    r = c.post("/api/captions", json=body, headers={"origin": "http://127.0.0.1", "sec-fetch-site": "same-origin"})
    assert r.status_code == 200 and caption.read_text(encoding="utf-8") == "changed\n"


def test_basic_auth(make_client, data_root):
    c = make_client([data_root], guard=Guard(loopback_only=False, user="ann", password="s3cret"))
    r = c.get("/runs")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
    assert c.get("/sdapi/v1/options").status_code == 401
    assert c.get("/runs", auth=("ann", "wrong")).status_code == 401
    assert c.get("/runs", auth=("ann", "s3cret")).status_code == 200
    assert c.get("/static/studio.css").status_code == 401
    bad = base64.b64encode(b"\xff\xfe").decode()
    assert c.get("/runs", headers={"authorization": f"Basic {bad}"}).status_code == 401


def test_token_auth_header_and_cookie(make_client, data_root):
    token = "t" * 24
    c = make_client([data_root], guard=Guard(loopback_only=False, token=token))
    assert c.get("/runs").status_code == 401
    assert c.get("/runs", headers={"authorization": f"Bearer {token}"}).status_code == 200
    r = c.get(f"/runs?token={token}")
    assert r.status_code == 200 and "HttpOnly" in r.headers["set-cookie"]
    assert c.get("/adapters").status_code == 200  # the cookie now carries it
    c.cookies.clear()
    assert c.get("/adapters").status_code == 401


def test_request_bodies_are_limited(make_client, data_root):
    c = make_client([data_root], guard=Guard(max_body=4096))
    r = c.post("/api/captions", json={"path": "data/shapes/000.png", "text": "x" * 10000})
    assert r.status_code == 413 and "limit" in r.json()["error"]
    assert (data_root / "shapes" / "000.txt").read_text(encoding="utf-8").startswith("shape")


def test_errors_are_messages_not_tracebacks(make_client, data_root, monkeypatch):
    c = make_client([data_root])
    r = c.get("/runs/12345")
    assert r.status_code == 404 and "run 12345 does not exist" in r.text and "<html" in r.text
    r = c.get("/api/runs/12345")
    assert r.status_code == 404 and r.json()["error"] == "run 12345 does not exist"
    r = c.post("/sdapi/v1/txt2img", content=b"not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not JSON" in r.json()["error"]
    r = c.get("/api/thumb")
    assert r.status_code == 422 and "path" in r.json()["error"]
    from sd_lora.studio.app import studio_of

    def broken():
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(studio_of(c.app), "adapters", broken)
    c2 = type(c)(c.app, base_url="http://127.0.0.1", raise_server_exceptions=False)
    r = c2.get("/adapters")
    assert r.status_code == 500 and "internal error: RuntimeError: disk on fire" in r.text
    assert "Traceback" not in r.text and 'File "' not in r.text
