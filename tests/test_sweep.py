"""Sweeps: jobs from options and recipes, the process pool, a local Ray cluster, failures, the CLI."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from edgesmith.cli import main
from edgesmith.errors import UsageError
from edgesmith.pipeline.recipe import load_recipe
from edgesmith.pipeline.sweep import expand, jobs_from_options, job_label, run_sweep, validate_jobs

EXAMPLES = Path(__file__).resolve().parents[1] / "edgesmith" / "examples"
DEVICES = ["host", "jetson-orin-nano"]


def _six_jobs(**kw):
    return jobs_from_options(["zoo:digits-cnn"], ["none", "reparam"], ["onnx", "torch", "mlx"], DEVICES,
                             runs=3, warmup=1, **kw)


def test_jobs_are_the_product_and_their_bundles_do_not_collide():
    jobs = jobs_from_options(["zoo:digits-cnn", "zoo:lsnet-t"], ["none", "reparam+distill:student=lsnet_t"],
                             ["onnx", "torch"], DEVICES)
    assert len(jobs) == 2 * 2 * 2
    assert all(j.devices == DEVICES and len(j.variants) == 1 and len(j.targets) == 1 for j in jobs)
    assert len({job_label(j) for j in jobs}) == len(jobs)
    assert jobs[2].variants[0].passes == ["reparam", "distill:student=lsnet_t"]
    recipe = load_recipe(EXAMPLES / "demo.yaml")
    assert [job_label(j) for j in expand(recipe)] == [
        "digits-cnn -> onnx", "digits-cnn -> torch", "digits-cnn-reparam -> onnx", "digits-cnn-reparam -> torch"]


def test_jobs_are_checked_before_anything_runs():
    with pytest.raises(UsageError, match="repram"):
        validate_jobs(jobs_from_options(["zoo:digits-cnn"], ["repram"], ["onnx"], ["host"]))
    with pytest.raises(UsageError, match="jetson-orin-nan"):
        validate_jobs(jobs_from_options(["zoo:digits-cnn"], ["none"], ["onnx"], ["jetson-orin-nan"]))


def _check(results, doc, out):
    assert all(r.ok for r in results), [r.error for r in results]
    assert len(results) == 6 and len(doc["jobs"]) == 6
    keys = {(Path(e["bundle"]).name, e["device"]): e["mode"] for e in doc["entries"]}
    assert len(keys) == 6 * 2  # every job measured on host and predicted on the Jetson
    assert {m for (_, d), m in keys.items() if d == "host"} == {"measured"}
    assert {m for (_, d), m in keys.items() if d != "host"} == {"predicted"}
    assert all((out / Path(r.bundle).name / "manifest.json").is_file() for r in results)
    # each worker has loaded and exported before it profiles: the figure comes from a fresh child
    assert all(e["peak_memory_mb"] > 1 for e in doc["entries"] if e["device"] == "host")


def test_a_sweep_of_six_jobs_in_the_process_pool(tmp_path):
    results, doc = run_sweep(_six_jobs(), tmp_path / "out", workers=2)
    _check(results, doc, tmp_path / "out")


def test_a_sweep_of_six_jobs_on_a_local_ray_cluster(tmp_path):
    if importlib.util.find_spec("ray") is None:
        if os.environ.get("CI"):
            pytest.fail("ray is not installed and CI is set: the Ray sweep cannot be checked")
        pytest.skip("ray is not installed")
    seen = []
    results, doc = run_sweep(_six_jobs(), tmp_path / "out", ray_address="local",
                             progress=lambda label, done, total: seen.append((done, total)))
    _check(results, doc, tmp_path / "out")
    assert seen[-1] == (6, 6)


def test_a_failed_job_is_reported_and_the_others_finish(tmp_path):
    jobs = jobs_from_options(["zoo:digits-cnn", "zoo:no-such-model"], ["none"], ["onnx"], ["host"], runs=3,
                             warmup=1)
    results, doc = run_sweep(jobs, tmp_path / "out", workers=2)
    good, bad = results
    assert good.ok and good.doc["entries"]
    assert not bad.ok and bad.exit_code in (2, 3) and "no-such-model" in bad.error
    assert [j["ok"] for j in doc["jobs"]] == [True, False]
    assert [Path(e["bundle"]).name for e in doc["entries"]] == ["digits-cnn.onnx"]


def test_cli_sweep_end_to_end_with_a_failing_job(tmp_path, capsys):
    out = tmp_path / "sweep"
    code = main(["sweep", "-m", "zoo:digits-cnn", "-m", "zoo:no-such-model", "-d", "host", "-d", "raspberry-pi-5",
                 "--runs", "3", "-o", str(out), "--json"])
    captured = capsys.readouterr()
    assert code in (2, 3), captured.err
    data = json.loads(captured.out)
    assert [j["ok"] for j in data["jobs"]] == [True, False]
    assert "1 of 2 jobs failed; the first: zoo:no-such-model -> onnx" in captured.err
    doc = json.loads((out / "profile.json").read_text())
    assert {e["device"] for e in doc["entries"]} == {"host", "raspberry-pi-5"}
    assert (out / "report.html").is_file()
    # the profile is not overwritten without --force
    assert main(["sweep", "-m", "zoo:digits-cnn", "-o", str(out)]) == 3
    assert "exists" in capsys.readouterr().err


def test_cli_sweep_needs_jobs_and_ray_installed(tmp_path, capsys, monkeypatch):
    assert main(["sweep", "-o", str(tmp_path / "x")]) == 2
    assert "nothing to sweep" in capsys.readouterr().err
    import edgesmith.pipeline.sweep as sweep_module
    from edgesmith.errors import RuntimeUnavailableError

    def missing(module, extra):
        raise RuntimeUnavailableError(f"{module} is not installed", hint=f"pip install 'edgesmith[{extra}]'")

    monkeypatch.setattr(sweep_module, "require", missing)
    assert main(["sweep", "-m", "zoo:digits-cnn", "--ray-address", "local", "-o", str(tmp_path / "y")]) == 5
    assert "edgesmith[ray]" in capsys.readouterr().err
