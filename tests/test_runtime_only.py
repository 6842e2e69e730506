"""The device-side install: verify, run and profile bundles with none of the build stack importable.

``pip install edgesmith`` is the runtime only (numpy, click, rich, pyyaml, onnxruntime; a target's
runtime from its extra); torch, onnx, onnxscript and safetensors are the ``build`` extra. A subprocess
whose ``sitecustomize`` makes the build stack unimportable before anything else runs stands in for
that install: bundles exported here by the normal path must verify, run and profile there, and a
build-side command must exit 5 with the ``pip install`` line to run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgesmith import api as es
from edgesmith.bundle import Bundle

BUILD_STACK = ("torch", "torchvision", "onnx", "onnxscript", "transformers", "safetensors", "coremltools", "hls4ml")

# Runs before anything the interpreter imports for the command: every import of a blocked package
# (and its submodules) fails as it does where the package is not installed.
_SITECUSTOMIZE = f'''
import sys


class _BuildStackBlocker:
    blocked = {BUILD_STACK!r}

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.blocked:
            raise ModuleNotFoundError(f"No module named {{name!r}} (runtime-only install)", name=name)
        return None


sys.meta_path.insert(0, _BuildStackBlocker())
'''


@pytest.fixture(scope="module")
def runtime_only_env(tmp_path_factory) -> dict[str, str]:
    """The environment of a process that cannot import the build stack."""
    site = tmp_path_factory.mktemp("runtime-only-site")
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, HF_HUB_OFFLINE="1")


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runtime-only-bundles")


def _export(out: Path, target: str) -> Path:
    bundle, parity = es.export(es.load("zoo:digits-cnn"), out, target=target)
    assert parity.passed
    return bundle.path


@pytest.fixture(scope="module")
def onnx_bundle(out) -> Path:
    return _export(out, "onnx")


@pytest.fixture(scope="module", params=["onnx", "mlx"])
def bundle(request, out, onnx_bundle) -> Path:
    """A digits-cnn bundle for each target, exported here (with the build stack) by the normal path."""
    if request.param == "onnx":
        return onnx_bundle
    if importlib.util.find_spec("mlx") is None:
        pytest.skip("mlx is not installed here (pip install 'edgesmith[mlx]')")
    return _export(out, "mlx")


def _edgesmith(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgesmith.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_build_stack_is_blocked(runtime_only_env, tmp_path):
    code = ("import importlib\nfor name in %r:\n    try:\n        importlib.import_module(name)\n"
            "    except ModuleNotFoundError:\n        continue\n    raise SystemExit(name + ' imported')\n"
            "print('blocked')") % (BUILD_STACK,)
    proc = subprocess.run([sys.executable, "-c", code], env=runtime_only_env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "blocked", proc.stdout + proc.stderr


def test_verify(runtime_only_env, bundle, tmp_path):
    proc = _edgesmith(runtime_only_env, "verify", str(bundle), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)[str(bundle)]
    assert result["passed"] and result["tier"] == "verified", result


def test_run(runtime_only_env, bundle, tmp_path):
    inputs, reference = Bundle.open(bundle).golden()
    np.savez(tmp_path / "digits.npz", **inputs)
    proc = _edgesmith(runtime_only_env, "run", str(bundle), "--inputs", "digits.npz", "-o", "logits.npz",
                      cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    batch = next(iter(inputs.values())).shape[0]
    assert f"logits: shape [{batch}, 10] float32" in proc.stdout and "wrote logits.npz" in proc.stdout
    with np.load(tmp_path / "logits.npz") as got:
        np.testing.assert_allclose(got["logits"], reference["logits"], atol=1e-4, rtol=0)


def test_profile_on_the_host(runtime_only_env, bundle, tmp_path):
    """Measured here; the host prediction of an onnx bundle reads the graph with onnx, so it is left out, saying why."""
    proc = _edgesmith(runtime_only_env, "profile", str(bundle), "--runs", "5", "--warmup", "1", "--json",
                      cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    (entry,) = doc["entries"]
    assert entry["mode"] == "measured" and entry["device"] == "host" and len(entry["samples_ms"]) == 5
    if bundle.suffix == ".onnx":
        (skipped,) = doc["not_predicted"]
        assert "pip install 'edgesmith[build]'" in skipped["reason"]


def test_build_side_commands_name_the_extra(runtime_only_env, tmp_path):
    """Export needs the build stack: exit 5 and the pip line, not a traceback."""
    proc = _edgesmith(runtime_only_env, "export", "zoo:digits-cnn", "-o", "out", cwd=tmp_path)
    assert proc.returncode == 5, proc.stderr
    assert "pip install 'edgesmith[build]'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_prediction_names_the_extra(runtime_only_env, onnx_bundle, tmp_path):
    """Predicting for another device reads the ONNX graph: exit 5 and the pip line."""
    proc = _edgesmith(runtime_only_env, "profile", str(onnx_bundle), "-d", "jetson-orin-nano", cwd=tmp_path)
    assert proc.returncode == 5, proc.stderr
    assert "onnx is not installed" in proc.stderr and "pip install 'edgesmith[build]'" in proc.stderr


def test_a_missing_library_maps_to_its_extra(monkeypatch):
    """The CLI's mapping: an absent optional library is exit 5 with its extra; anything else stays a bug."""
    from edgesmith import errors

    absent = {"torch", "transformers"}
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in absent else real_find_spec(name, *a))
    for name, extra in [("torch", "build"), ("torch.export", "build"), ("transformers", "hf")]:
        err = errors.missing_library(ModuleNotFoundError(f"No module named {name!r}", name=name))
        assert err.exit_code == 5 and err.hint == f"pip install 'edgesmith[{extra}]'", name
    assert errors.missing_library(ModuleNotFoundError("No module named 'numpy.nope'", name="numpy.nope")) is None
    assert errors.missing_library(ModuleNotFoundError("No module named 'onnx.nope'", name="onnx.nope")) is None
    assert errors.missing_library(ValueError("torch")) is None


def test_generate_from_ids(runtime_only_env, tiny_llama, out, tmp_path):
    """A generation bundle generates with no torch, transformers or onnx: tokens as with the build stack."""
    bundle, parity = es.export(tiny_llama, out, target="onnx")
    assert parity.passed
    want = es.generate(bundle.path, ids=[5, 17, 42], max_new_tokens=8, ignore_eos=True).text
    proc = _edgesmith(runtime_only_env, "generate", str(bundle.path), "--ids", "5,17,42", "-n", "8", "--ignore-eos",
                      cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == want and "8 tokens" in proc.stderr


@pytest.mark.slow
def test_generate_text_with_smollm2(runtime_only_env, smollm2_onnx, tmp_path):
    """Issue 24's acceptance command, in the runtime install: the tokenizer and chat template need no transformers."""
    prompt = "The capital of France is"
    want = es.generate(smollm2_onnx, prompt, max_new_tokens=20).text
    proc = _edgesmith(runtime_only_env, "generate", str(smollm2_onnx), "--prompt", prompt, "--max-new-tokens", "20",
                      cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == want.strip()
    chat = _edgesmith(runtime_only_env, "generate", str(smollm2_onnx), "--chat", "--prompt", "Say hi.", "-n", "8",
                      cwd=tmp_path)
    assert chat.returncode == 0 and chat.stdout.strip(), chat.stderr
