"""edgesmith view: each target's bundle served by Netron on localhost and drawn in headless Chromium."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from edgesmith import api as es
from edgesmith.cli import netron as es_view
from edgesmith.bundle import Manifest, finalize_manifest
from edgesmith.cli import main
from edgesmith.errors import RuntimeUnavailableError, UsageError
from edgesmith.export import EXPORTERS
from edgesmith.cli.netron import model_file, serve, stop

if importlib.util.find_spec("netron") is None and not os.environ.get("CI"):
    pytest.skip("netron (the view extra) is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def bundle_for(tmp_path_factory):
    """``bundle_for(target)``: zoo:digits-cnn exported to that target, once per module."""
    out = tmp_path_factory.mktemp("bundles")
    made = {}

    def export(target: str) -> Path:
        if target not in made:
            if not made:
                made["variant"] = es.load("zoo:digits-cnn")
            try:
                made[target] = es.export(made["variant"], out, target=target)[0].path
            except RuntimeUnavailableError as exc:
                made[target] = exc
        if isinstance(made[target], RuntimeUnavailableError):
            pytest.skip(f"{target}: {made[target]}")
        return made[target]

    return export


@pytest.fixture(scope="module")
def onnx_bundle(bundle_for):
    return bundle_for("onnx")


@pytest.fixture
def chromium() -> str:
    exe = shutil.which("chromium")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not on PATH and CI is set: the Netron page cannot be checked")
        pytest.skip("chromium is not installed")
    return exe


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


# Runs a program with fd 3 and fd 4 taken from the fds given as the first two arguments.
_ON_FDS_3_4 = ("import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
               "os.execv(sys.argv[3], sys.argv[3:])")


class _DevTools:
    """Headless Chromium driven over the DevTools protocol on a pipe (fds 3 and 4; stdlib only)."""

    def __init__(self, exe: str, profile_dir: Path):
        chrome_reads, self._to = os.pipe()
        self._from, chrome_writes = os.pipe()
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 # every name but 127.0.0.1 resolves to nothing: Netron's page stays off the network
                 "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                 f"--user-data-dir={profile_dir}", "--remote-debugging-pipe", "about:blank"]
        self._log = profile_dir.with_suffix(".log")
        with open(self._log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-c", _ON_FDS_3_4, str(chrome_reads), str(chrome_writes),
                                          exe, *flags], pass_fds=(chrome_reads, chrome_writes),
                                         stdout=log, stderr=log)
        os.close(chrome_reads)
        os.close(chrome_writes)
        self._buffer = b""
        self._id = 0

    def call(self, method: str, session: str | None = None, **params):
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._id:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return reply["result"]

    def _read(self, timeout: float = 30) -> dict:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._from], [], [], timeout)
            chunk = os.read(self._from, 1 << 16) if ready else b""
            assert chunk, f"chromium did not answer: {self._log.read_text(errors='replace')[-2000:]}"
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def close(self):
        try:
            self.call("Browser.close")
            self.proc.wait(timeout=10)
        except (AssertionError, OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            os.close(self._to)
            os.close(self._from)


# What Netron's page is doing: a notice waiting for a click, an error (body class "alert"),
# or the graph drawn (body class "default" and graph nodes).
_PAGE_STATE = """JSON.stringify({
  page: document.body.className,
  message: document.getElementById('message-text').innerText,
  button: document.getElementById('message-button').innerText,
  nodes: document.querySelectorAll('g.graph-node').length,
  texts: Array.from(document.querySelectorAll('#target text'), (t) => t.textContent),
})"""


def _netron_graph(exe: str, url: str, profile_dir: Path, timeout: float = 30) -> list[str]:
    """Open Netron's page at ``url`` in headless Chromium; return the texts of the graph it drew.

    The page first asks to accept its cookies and opens the model after the click, which this
    does as a user would. It then waits in real time for the graph, since Netron lays it out in
    a web worker that Chromium's virtual time (--virtual-time-budget) does not wait for.
    """
    browser = _DevTools(exe, profile_dir)
    try:
        target = browser.call("Target.createTarget", url=url)["targetId"]
        session = browser.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        deadline = time.monotonic() + timeout
        while True:
            result = browser.call("Runtime.evaluate", session, expression=_PAGE_STATE, returnByValue=True)
            state = json.loads(result["result"].get("value") or "{}")
            classes = state.get("page", "").split()
            assert "alert" not in classes, f"Netron failed to open the model: {state['message']}"
            if state.get("message", "").startswith("This app uses cookies") and state.get("button") == "Accept":
                browser.call("Runtime.evaluate", session,
                             expression="document.getElementById('message-button').click()")
            elif "default" in classes and state["nodes"]:
                return state["texts"]
            assert time.monotonic() < deadline, f"Netron drew no graph in {timeout:.0f} s: {state}"
            time.sleep(0.1)
    finally:
        browser.close()


def test_the_onnx_bundle_is_drawn_in_chromium(onnx_bundle, chromium, tmp_path):
    url = serve(onnx_bundle)
    try:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url)
        assert _get(url + "data/model.onnx") == (onnx_bundle / "model.onnx").read_bytes()
        texts = _netron_graph(chromium, url, tmp_path / "chrome")
    finally:
        stop(url)
    # digits-cnn: three convolutions and two fully connected layers, from input "image" to "logits"
    assert texts.count("Conv") == 3 and texts.count("Gemm") == 2
    assert {"image", "logits"} <= set(texts)
    with pytest.raises(OSError):
        _get(url)


# onnx: the test above; hls: refused by name in tests/export/test_hls.py (its export takes a minute)
@pytest.mark.parametrize("target", sorted(set(EXPORTERS.names()) - {"onnx", "hls"}))
def test_every_target_is_drawn_or_refused_by_name(target, bundle_for, chromium, tmp_path):
    bundle = bundle_for(target)
    try:
        shown = model_file(bundle)
    except UsageError as exc:
        assert f"the {target} bundle" in exc.message and "-t onnx" in exc.hint
        return
    url = serve(bundle)
    try:
        texts = _netron_graph(chromium, url, tmp_path / "chrome")
    finally:
        stop(url)
    assert shown.is_relative_to(bundle)
    assert any("conv" in t.lower() for t in texts), texts


def _fake_bundle(path, target, model_file_name):
    """A verified bundle whose model file Netron cannot read (no exporter needed)."""
    path.mkdir()
    (path / model_file_name).write_bytes(b"not a model Netron reads")
    manifest = Manifest(name="digits-cnn", target=target, runtime=target, model_file=model_file_name,
                        precision="fp32", inputs=[], outputs=[], source={"reference": "zoo:digits-cnn"},
                        passes=[{"name": "reparam", "params": {}}])
    return finalize_manifest(path, manifest).path


def test_a_bundle_netron_cannot_show_is_refused_with_what_to_do(tmp_path, capsys):
    bundle = _fake_bundle(tmp_path / "digits-cnn.mlx", "mlx", "model.mlxfn")
    assert main(["view", str(bundle), "--no-browser"]) == 2
    err = capsys.readouterr().err
    assert "cannot show the mlx bundle digits-cnn.mlx (its model.mlxfn)" in err
    assert "edgesmith export zoo:digits-cnn -p reparam -t onnx" in err


def test_bad_paths_exit_with_their_codes(onnx_bundle, tmp_path, capsys):
    assert main(["view", str(tmp_path / "nope.onnx"), "--no-browser"]) == 3
    assert "nope.onnx does not exist" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("x")
    assert main(["view", str(tmp_path / "notes.txt"), "--no-browser"]) == 2
    assert "Netron cannot show notes.txt" in capsys.readouterr().err
    assert main(["view", str(tmp_path), "--no-browser"]) == 3
    assert "is not a bundle" in capsys.readouterr().err
    tampered = shutil.copytree(onnx_bundle, tmp_path / "tampered.onnx")
    with open(tampered / "model.onnx", "ab") as f:
        f.write(b"\0")
    assert main(["view", str(tampered), "--no-browser"]) == 3
    assert "model.onnx was modified after export" in capsys.readouterr().err


def test_a_taken_port_is_a_usage_error(onnx_bundle, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["view", str(onnx_bundle), "--port", str(port), "--no-browser"]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_without_the_view_extra_exit_code_5(onnx_bundle, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "netron", None)  # import netron now raises ImportError
    assert main(["view", str(onnx_bundle), "--no-browser"]) == 5
    assert "pip install 'edgesmith[view]'" in capsys.readouterr().err


def test_a_netron_past_its_shelf_life_is_refused():
    netron = pytest.importorskip("netron")
    es_view._check_netron_age(netron)  # the pinned Netron still opens models today
    with pytest.raises(RuntimeUnavailableError, match="over 180 days ago"):
        es_view._check_netron_age(netron, now=datetime.now(timezone.utc) + timedelta(days=3 * 365))


def test_cli_prints_the_url_and_serves_until_ctrl_c(onnx_bundle):
    proc = subprocess.Popen([sys.executable, "-m", "edgesmith.cli", "view", str(onnx_bundle), "--no-browser"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url), proc.stderr.read() if not url else url
        assert _get(url + "data/model.onnx") == (onnx_bundle / "model.onnx").read_bytes()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with pytest.raises(OSError):
        _get(url)
