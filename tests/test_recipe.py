"""Recipes: the example recipes load, the demo's recipe reproduces the demo, bad recipes are named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgesmith.pipeline.demo import demo_recipe
from edgesmith.pipeline.recipe import load_recipe
from testkit import cli, snapshot

EXAMPLES = Path(__file__).resolve().parents[1] / "edgesmith" / "examples"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_recipe_is_valid(path, capsys):
    code, out, err = cli(capsys, "run", path, "--check")
    assert code == 0, err
    assert "valid" in out


def test_the_example_recipe_is_the_demo():
    example, demo = load_recipe(EXAMPLES / "demo.yaml"), demo_recipe()
    for key in ("model", "variants", "targets", "devices", "runs", "warmup", "target_options", "data"):
        assert getattr(example, key) == getattr(demo, key), key
    assert len([d for d in example.devices if d != "host"]) >= 3


def test_the_demo_recipe_runs_end_to_end(capsys, tmp_path):
    out = tmp_path / "demo"
    code, stdout, err = cli(capsys, "run", EXAMPLES / "demo.yaml", "-o", out, "--json")
    assert code == 0, err
    result = json.loads(stdout)
    assert sorted(Path(b).name for b in result["bundles"]) == [
        "digits-cnn-reparam.onnx", "digits-cnn-reparam.torch", "digits-cnn.onnx", "digits-cnn.torch"]
    assert all(p["passed"] for p in result["parity"].values())
    doc = json.loads((out / "profile.json").read_text())
    modes = {(e["name"], e["target"], e["device"]): e["mode"] for e in doc["entries"]}
    assert len(modes) == 2 * 2 * 4
    assert {m for (_, _, d), m in modes.items() if d == "host"} == {"measured"}
    assert {m for (_, _, d), m in modes.items() if d != "host"} == {"predicted"}
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    # a second run refuses to overwrite, and --force runs it over
    code, _, err = cli(capsys, "run", EXAMPLES / "demo.yaml", "-o", out)
    assert code == 3 and "exists" in err
    code, _, err = cli(capsys, "run", EXAMPLES / "demo.yaml", "-o", out, "--force")
    assert code == 0, err


BASE = "model: zoo:digits-cnn\ntargets: [onnx]\n"


@pytest.mark.parametrize("body, named", [
    (BASE + "devics: [host]\n", ["unknown key 'devics'", "did you mean 'devices'"]),
    (BASE + "profile: {rusn: 3}\n", ["profile", "unknown key 'rusn'", "did you mean 'runs'"]),
    (BASE + "variants:\n  - passes: [reparam]\n  - passes: [repram]\n", ["variants[1].passes[0]", "'repram'"]),
    (BASE + "passes: ['distill:studnet=lsnet_t']\n", ["passes[0]", "studnet"]),
    (BASE + "variants:\n  - nmae: x\n", ["variants[0]", "unknown key 'nmae'", "did you mean 'name'"]),
    ("model: zoo:digits-cnn\ntargets: [onnx, coreml2]\n", ["targets[1]", "unknown target 'coreml2'"]),
    (BASE + "devices: [host, jetson-orin-nan]\n", ["devices[1]", "unknown device 'jetson-orin-nan'"]),
    (BASE + "profile: {runs: many}\n", ["profile.runs", "'many'"]),
    ("targets: [onnx]\n", ["needs a 'model'"]),
    (BASE + "devices: [host\n", ["not valid YAML"]),
])
def test_a_bad_recipe_is_named_and_nothing_runs(body, named, capsys, tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(body)
    before = snapshot(tmp_path)
    code, _, err = cli(capsys, "run", recipe, "-o", tmp_path / "out")
    assert code == 3, err
    assert "Traceback" not in err
    line = next(ln for ln in err.splitlines() if ln.startswith("error:"))
    hint = err[err.index(line):]
    for name in named:
        assert name in hint, (name, err)
    assert str(recipe) in line
    assert snapshot(tmp_path) == before  # validated before any work: nothing written


def test_recipe_paths_are_relative_to_the_recipe(tmp_path):
    folder = tmp_path / "proj"
    folder.mkdir()
    (folder / "my-board.yaml").write_text(
        (Path(__file__).resolve().parents[1] / "edgesmith/devices/catalog/raspberry-pi-5.yaml").read_text()
        .replace("name: raspberry-pi-5", "name: my-board"))
    (folder / "r.yaml").write_text(BASE + "devices: [host, my-board]\ndevice_files: [my-board.yaml]\n")
    recipe = load_recipe(folder / "r.yaml")
    assert recipe.devices == ["host", "my-board"] and Path(recipe.device_files[0]).parent == folder
    assert recipe.out == "r-out"


def test_a_recipe_host_row_has_the_peak_memory_of_a_standalone_profile(capsys, tmp_path):
    # the recipe's process has already loaded, exported and checked the model: only a fresh
    # child measures what the bundle costs, so its figure must match a profile of its own
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: zoo:digits-cnn\ntargets: [onnx]\ndevices: [host]\nprofile: {runs: 5, warmup: 1}\n")
    code, _, err = cli(capsys, "run", recipe, "-o", tmp_path / "out")
    assert code == 0, err
    (row,) = json.loads((tmp_path / "out" / "profile.json").read_text())["entries"]
    code, stdout, err = cli(capsys, "profile", row["bundle"], "--runs", "5", "--warmup", "1", "--json")
    assert code == 0, err
    (alone,) = json.loads(stdout)["entries"]
    assert row["peak_memory_mb"] > 1 and alone["peak_memory_mb"] > 1
    assert row["peak_memory_mb"] == pytest.approx(alone["peak_memory_mb"], rel=0.2)
