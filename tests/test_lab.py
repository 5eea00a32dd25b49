"""`make lab` starts JupyterLab headless at the repository root (also as root), a paper notebook opens
through the REST API, a kernel runs a cell through the server's websocket, and the server shuts down."""

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venv"

pytestmark = pytest.mark.skipif(not (VENV / "bin" / "jupyter-lab").exists(), reason="jupyterlab not installed (make env)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(base: str, token: str, path: str, method: str = "GET", body: dict | None = None, timeout: float = 20):
    request = urllib.request.Request(f"{base}{path}", method=method, headers={"Authorization": f"token {token}"},
                                     data=None if body is None else json.dumps(body).encode())
    with urllib.request.urlopen(request, timeout=timeout) as response:
        text = response.read().decode()
        return json.loads(text) if text else None


async def _execute(ws_url: str, token: str, code: str, timeout: float = 30) -> str:
    """Run ``code`` on the kernel behind the server's websocket; return its text/plain result."""
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    conn = await websocket_connect(HTTPRequest(ws_url, headers={"Authorization": f"token {token}"}))
    msg_id = uuid.uuid4().hex
    conn.write_message(json.dumps({
        "header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex, "msg_type": "execute_request",
                   "version": "5.3", "date": ""},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {}, "allow_stdin": False},
    }))
    result, status = None, None
    deadline = time.monotonic() + timeout
    while result is None or status is None:
        raw = await asyncio.wait_for(conn.read_message(), max(0.1, deadline - time.monotonic()))
        assert raw is not None, "the kernel websocket closed"
        msg = json.loads(raw)
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "execute_result":
            result = msg["content"]["data"]["text/plain"]
        elif msg["msg_type"] == "error":
            raise AssertionError(f"the cell failed: {msg['content']['ename']}: {msg['content']['evalue']}")
        elif msg["msg_type"] == "execute_reply":
            status = msg["content"]["status"]
    conn.close()
    assert status == "ok"
    return result


def test_make_lab_serves_the_repository_and_runs_a_kernel(tmp_path):
    stamp = tmp_path / "stamp"
    stamp.touch()  # the environment counts as built: `make lab` must not reinstall anything here
    port = _free_port()
    env = {**os.environ, "JUPYTER_PORT": str(port), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "JUPYTER_DATA_DIR": str(tmp_path / "data"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "ws"),
           "IPYTHONDIR": str(tmp_path / "ipython"), "JUPYTER_PLATFORM_DIRS": "1"}
    env.pop("JUPYTER_TOKEN", None)  # the server makes one and must print it
    log = tmp_path / "lab.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(["make", "--no-print-directory", "lab", f"STAMP={stamp}"], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.3)
            found = re.search(r"(http://127\.0\.0\.1:\d+)/lab\?token=([0-9a-f]+)", log.read_text())
            url = found and found.groups()
        assert url, f"no URL with a token printed; log:\n{log.read_text()[-3000:]}"
        base, token = url  # bound to localhost only, and up even when the tests run as root

        # the repository root: papers/ and results/ are both visible
        root = {item["name"] for item in _api(base, token, "/api/contents")["content"]}
        assert {"papers", "results", "common"} <= root
        listing = _api(base, token, "/api/contents/papers/svarm/notebooks")["content"]
        first = sorted(item["path"] for item in listing if item["name"].endswith(".ipynb"))[0]
        notebook = _api(base, token, f"/api/contents/{first}")
        assert notebook["type"] == "notebook" and notebook["content"]["cells"]

        # open it on a kernel (a session, as JupyterLab does) and run cells over the websocket
        session = _api(base, token, "/api/sessions", "POST",
                       {"path": first, "type": "notebook", "name": Path(first).name, "kernel": {"name": "python3"}})
        kernel_id = session["kernel"]["id"]
        ws = base.replace("http://", "ws://") + f"/api/kernels/{kernel_id}/channels"
        assert asyncio.run(_execute(ws, token, "1+1")) == "2"
        assert asyncio.run(_execute(ws, token, "import os; os.getcwd()")) == repr(str(REPO / Path(first).parent))
        _api(base, token, f"/api/sessions/{session['id']}", "DELETE")

        _api(base, token, "/api/shutdown", "POST")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
    assert proc.returncode == 0


@pytest.mark.parametrize("uid, allow_root", [("0", True), ("1000", False)])
def test_make_lab_allows_root_only_as_root(tmp_path, uid, allow_root):
    """--allow-root only when `id -u` is 0; always localhost, no browser, the repository root."""
    venv, fake_bin = tmp_path / "venv", tmp_path / "fakebin"
    (venv / "bin").mkdir(parents=True)
    fake_bin.mkdir()
    (venv / ".installed").touch()
    log = tmp_path / "args"
    jupyter = venv / "bin" / "jupyter"
    jupyter.write_text(f"#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\" >> '{log}'; done\n")
    fake_id = fake_bin / "id"
    fake_id.write_text(f"#!/bin/sh\necho {uid}\n")
    for script in (jupyter, fake_id):
        script.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["make", "--no-print-directory", "lab", f"VENV={venv}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    args = log.read_text().splitlines()
    assert args[:4] == ["lab", "--ip=127.0.0.1", "--no-browser", f"--ServerApp.root_dir={REPO}"]
    assert ("--allow-root" in args) == allow_root
