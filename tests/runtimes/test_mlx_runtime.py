"""The MLX runtime: runs without torch, says when MLX is missing, and is profiled like the others."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("mlx.core")

from edgesmith import api as es  # noqa: E402
from edgesmith.profiles.measure import profile_bundle  # noqa: E402
from edgesmith.runtimes import open_runtime  # noqa: E402

# Make torch (and the exporters) unimportable before anything else is imported.
_BLOCK = "import sys\nsys.modules['torch'] = None\nsys.modules['edgesmith.export'] = None\n"


def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("mlx-runtime")
    bundle, _ = es.export(es.load("zoo:digits-cnn"), out, target="mlx")
    return bundle


def test_mlx_bundle_runs_without_torch(bundle):
    code = _BLOCK + textwrap.dedent(f"""
        import numpy as np
        from edgesmith.runtimes import open_runtime, check_bundle
        rt = open_runtime({str(bundle.path)!r})
        inputs, reference = rt.bundle.golden()
        out = rt.run(inputs)
        assert np.abs(out["logits"] - reference["logits"]).max() < 1e-4
        x = np.random.default_rng(0).uniform(0, 1, (7, 1, 8, 8)).astype(np.float32)
        assert rt.run({{"image": x}})["logits"].shape == (7, 10)  # the dynamic batch, without torch
        result = check_bundle({str(bundle.path)!r})
        assert result.passed and result.tier == "verified", result.failures
        assert sys.modules.get("torch") is None, "torch was imported"
        assert sys.modules.get("edgesmith.export") is None, "the exporters were imported"
        assert not any(m.startswith("torch.") for m in sys.modules), "a torch submodule was imported"
        assert "mlx.core" in sys.modules
        print("ok", result.summary())
    """)
    proc = _run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok PASS [verified")


def test_missing_mlx_is_unavailable(bundle):
    """Where MLX is missing, opening an MLX bundle exits with code 5 and the pip line, not a traceback."""
    code = _BLOCK + "sys.modules['mlx'] = None\nsys.modules['mlx.core'] = None\n" + textwrap.dedent(f"""
        from edgesmith.errors import RuntimeUnavailableError, exit_code_for
        from edgesmith.runtimes import open_runtime
        try:
            open_runtime({str(bundle.path)!r})
        except RuntimeUnavailableError as exc:
            print("code", exit_code_for(exc), exc)
    """)
    proc = _run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("code 5") and "pip install 'edgesmith[mlx]'" in proc.stdout, proc.stdout


def test_threads_option_is_accepted(bundle):
    inputs, reference = open_runtime(bundle.path).bundle.golden()
    got = open_runtime(bundle.path, threads=1).run(inputs)
    np.testing.assert_allclose(got["logits"], reference["logits"], atol=1e-4, rtol=0)


def test_profiled_like_the_others(bundle):
    profile = profile_bundle(bundle.path, warmup=1, runs=3)
    assert profile.runtime == "mlx" and profile.target == "mlx" and profile.mode == "measured"
    assert len(profile.samples_ms) == 3 and all(s > 0 for s in profile.samples_ms)
    assert profile.parity["tier"] == "verified" and profile.file_size_bytes > 0
