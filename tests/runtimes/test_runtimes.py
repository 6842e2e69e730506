"""Every registered runtime: input checks, per-node times, and running a bundle without torch."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from edgesmith import api as es
from edgesmith.errors import BadInputError
from edgesmith.export import EXPORTERS
from edgesmith.parity import compare
from edgesmith.runtimes import RUNTIMES, open_runtime


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, object]:
    """runtime name -> a digits-cnn bundle it runs (one export per exporter)."""
    variant = es.load("zoo:digits-cnn")
    out = tmp_path_factory.mktemp("runtimes")
    found = {}
    for target in EXPORTERS.names():
        options = {"samples": "256"} if target == "hls" else None  # a shorter precision search
        bundle, _ = es.export(variant, out, target=target, options=options)
        found[bundle.manifest.runtime] = bundle
    return found


@pytest.fixture(params=RUNTIMES.names())
def runtime(request, bundles):
    if request.param not in bundles:
        pytest.skip(f"no registered exporter makes {request.param} bundles")
    if request.param == "tensorrt":
        from edgesmith.runtimes.tensorrt import tensorrt_unavailable

        if tensorrt_unavailable():
            pytest.skip(f"TensorRT cannot run here: {tensorrt_unavailable()}")
    return open_runtime(bundles[request.param].path)


def _image(batch: int = 2) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 1, (batch, 1, 8, 8)).astype(np.float32)


def test_every_runtime_has_a_bundle(bundles):
    assert set(bundles) == set(RUNTIMES.names())


def test_runs_golden_inputs(runtime):
    inputs, outputs = runtime.bundle.golden()
    got = runtime.run(inputs)
    assert set(got) == {"logits"}
    _assert_matches(runtime, got["logits"], outputs["logits"])
    # float64 inputs are converted to the manifest's dtype, not refused
    got64 = runtime.run({"image": inputs["image"].astype(np.float64)})
    np.testing.assert_allclose(got64["logits"], got["logits"], atol=1e-6, rtol=0)


def _assert_matches(runtime, got: np.ndarray, ref: np.ndarray) -> None:
    """Within 1e-4 of the golden outputs; fp16 and fixed-point bundles within their tolerance."""
    precision = runtime.bundle.manifest.precision
    if precision in ("fp16", "fixed"):  # Core ML's default; HLS fixed point (top-1 and SNR)
        result = compare({"logits": ref}, {"logits": got}, precision=precision, classify=True)
        assert result.passed, result.failures
    else:
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_missing_input(runtime):
    with pytest.raises(BadInputError, match="missing") as info:
        runtime.run({})
    assert "image" in str(info.value)


def test_extra_input(runtime):
    with pytest.raises(BadInputError, match="unexpected") as info:
        runtime.run({"image": _image(), "mask": np.ones((2, 8), np.float32)})
    assert "mask" in str(info.value)


def test_wrong_rank(runtime):
    with pytest.raises(BadInputError, match="rank"):
        runtime.run({"image": np.zeros((2, 8, 8), np.float32)})


def test_wrong_fixed_dim(runtime):
    with pytest.raises(BadInputError, match="shape") as info:
        runtime.run({"image": np.zeros((2, 3, 8, 8), np.float32)})
    assert "batchx1x8x8" in str(info.value)  # names the axis that may change


def test_node_times(runtime):
    times = runtime.node_times(runtime.prepare({"image": _image()}), runs=3)
    assert isinstance(times, list)
    for t in times:
        assert {"node", "op_type", "scope", "mean_ms"} <= set(t) and t["mean_ms"] >= 0
    if runtime.name == "onnxruntime":
        assert times, "ONNX Runtime has a profiler: node times must not be empty"
        scopes = {t["scope"] for t in times}
        assert any(re.fullmatch(r"(features|head)\.\d+", s) for s in scopes), scopes


# Make torch (and the exporters) unimportable before anything else is imported.
_BLOCK = "import sys\nsys.modules['torch'] = None\nsys.modules['edgesmith.export'] = None\n"


def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_block_really_makes_torch_unimportable():
    """The trick below must be able to fail: with it, importing torch or the exporters raises."""
    proc = _run_python(_BLOCK + "import torch\n")
    assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr
    proc = _run_python(_BLOCK + "import edgesmith.export\n")
    assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr
    proc = _run_python(_BLOCK + "from edgesmith.models.zoo import digits_cnn\n")  # imports torch at the top
    assert proc.returncode != 0 and "torch" in proc.stderr


def test_onnx_bundle_runs_without_torch(bundles):
    bundle = bundles["onnxruntime"]
    code = _BLOCK + textwrap.dedent(f"""
        import numpy as np
        from edgesmith.runtimes import open_runtime, check_bundle
        rt = open_runtime({str(bundle.path)!r})
        inputs, reference = rt.bundle.golden()
        out = rt.run(inputs)
        assert np.abs(out["logits"] - reference["logits"]).max() < 1e-4
        result = check_bundle({str(bundle.path)!r})
        assert result.passed and result.tier == "verified", result.failures
        rt.node_times(rt.prepare(inputs), 2)
        assert sys.modules.get("torch") is None, "torch was imported"
        assert sys.modules.get("edgesmith.export") is None, "the exporters were imported"
        assert not any(m.startswith("torch.") for m in sys.modules), "a torch submodule was imported"
        print("ok", result.summary())
    """)
    proc = _run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok PASS")


def test_torch_runtime_without_torch_is_unavailable(bundles):
    """Where torch is missing, the torch runtime says so with exit code 5, not a traceback."""
    code = _BLOCK + textwrap.dedent(f"""
        from edgesmith.errors import RuntimeUnavailableError, exit_code_for
        from edgesmith.runtimes import open_runtime
        try:
            open_runtime({str(bundles["torch"].path)!r})
        except RuntimeUnavailableError as exc:
            print("code", exit_code_for(exc), exc)
    """)
    proc = _run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("code 5") and "pip install" in proc.stdout


# ---------------------------------------------------------------- the cast rule (issue 22: no silent casts)

@pytest.mark.parametrize("given,declared,values", [
    ("float32", "float32", [0.5]),
    ("float64", "float32", [0.5, -1e30]),      # same kind, narrower, values stay finite
    ("float16", "float32", [0.5]),             # widening
    ("int32", "int64", [7]),
    ("int64", "int32", [-5, 2**31 - 1]),       # narrower int holding every value
    ("uint8", "int64", [255]),
    ("int64", "float32", [3]),                 # a wider kind
    ("bool", "float32", [True]),
    ("bool", "int64", [False]),
])
def test_cast_allowed(given, declared, values):
    import warnings

    from edgesmith.runtimes.base import InputCastNote, cast_input

    arr = np.array(values, dtype=given)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = cast_input(arr, "x", declared)
    assert got.dtype == np.dtype(declared)
    np.testing.assert_array_equal(got, arr.astype(declared))
    notes = [w for w in caught if issubclass(w.category, InputCastNote)]
    assert len(notes) == (given != declared)
    if notes:
        assert given in str(notes[0].message) and declared in str(notes[0].message)


@pytest.mark.parametrize("given,declared,values", [
    ("complex64", "float32", [1 + 2j]),        # lost the imaginary part with exit 0 before
    ("float32", "int64", [1.5]),
    ("float64", "bool", [1.0]),
    ("int64", "bool", [1]),
    ("int64", "int32", [2**40]),               # does not fit
    ("float64", "float16", [1e6]),             # overflows to inf
    ("<U3", "float32", ["abc"]),
    ("|S3", "int64", [b"abc"]),
    ("M8[s]", "int64", [0]),
])
def test_cast_refused(given, declared, values):
    from edgesmith.runtimes.base import CAST_RULE, cast_input

    arr = np.array(values, dtype=given)
    with pytest.raises(BadInputError) as info:
        cast_input(arr, "pixels", declared)
    text = str(info.value)
    assert "pixels" in text and str(np.dtype(given)) in text and declared in text and CAST_RULE in text


def test_api_run_refuses_a_lossy_cast(tmp_path):
    bundle, _ = es.export(es.load("zoo:digits-cnn"), tmp_path, target="onnx")
    with pytest.raises(BadInputError, match="complex128"):
        es.run(bundle.path, {"image": np.ones((2, 1, 8, 8), np.complex128)})
