"""edgesmith view: a bundle's model served by Netron on localhost, loaded in headless Chromium."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import urllib.request

import pytest

from edgesmith import api as es
from edgesmith.cli import main
from edgesmith.view import model_file, serve, stop

if importlib.util.find_spec("netron") is None and not os.environ.get("CI"):
    pytest.skip("netron (the view extra) is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles")
    variant = es.load("zoo:digits-cnn")
    return {t: es.export(variant, out, target=t)[0].path for t in ("onnx", "torch", "mlx")}


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def test_the_model_file_of_each_kind_of_bundle(bundles):
    assert model_file(bundles["onnx"]).name == "model.onnx"
    assert model_file(bundles["torch"]).name == "model.pt2"
    assert model_file(bundles["onnx"] / "model.onnx") == bundles["onnx"] / "model.onnx"


def test_netron_serves_the_page_and_the_exact_model(bundles, tmp_path):
    url = serve(bundles["onnx"])
    try:
        assert url.startswith("http://127.0.0.1:")
        page = _get(url).decode()
        assert '<meta name="file" content="/data/model.onnx">' in page and "netron" in page.lower()
        assert _get(url + "data/model.onnx") == (bundles["onnx"] / "model.onnx").read_bytes()
        exe = shutil.which("chromium")
        if exe is None:
            if os.environ.get("CI"):
                pytest.fail("chromium is not on PATH and CI is set: the Netron page cannot be checked")
            pytest.skip("chromium is not installed")
        proc = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                               f"--user-data-dir={tmp_path / 'chrome'}", "--enable-logging=stderr", "--v=0",
                               "--virtual-time-budget=5000", "--dump-dom", url],
                              capture_output=True, text=True, timeout=90)
        assert proc.returncode == 0, proc.stderr[-2000:]
        dom = proc.stdout
        # Netron's own application rendered its toolbar and knows which model to open
        assert 'class="toolbar"' in dom and '<meta name="file" content="/data/model.onnx">' in dom
        errors = [ln for ln in proc.stderr.splitlines() if "CONSOLE" in ln and "Uncaught" in ln]
        assert errors == []
    finally:
        stop(url)
    with pytest.raises(OSError):
        _get(url)


def test_formats_netron_cannot_show_are_named(bundles, tmp_path, capsys):
    assert main(["view", str(bundles["mlx"]), "--no-browser"]) == 2
    err = capsys.readouterr().err
    assert "cannot show a mlx bundle" in err and "-t onnx" in err
    assert main(["view", str(tmp_path / "nope.onnx"), "--no-browser"]) == 3
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("x")
    assert main(["view", str(tmp_path / "notes.txt"), "--no-browser"]) == 2


def test_cli_view_prints_the_url_and_serves_until_stopped(bundles):
    proc = subprocess.Popen([sys.executable, "-m", "edgesmith.cli", "view", str(bundles["torch"]), "--no-browser"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        assert _get(url + "data/model.pt2") == (bundles["torch"] / "model.pt2").read_bytes()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
