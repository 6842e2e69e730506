"""What a person reads: tables that keep names whole at any width, --format, progress lines, pass figures."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edgesmith.cli import main
from edgesmith.cli.common import Column, DataTable
from edgesmith.cli.progressbar import progress, quiet_progress_bars
from edgesmith.cli.optimize import pass_summary
from testkit import cli

DEVICES = ("host", "jetson-orin-nano", "apple-a17-pro-ane")


def whole(name: str, text: str) -> int:
    """How many times ``name`` appears as a whole word (not inside a longer name)."""
    return len(re.findall(rf"(?<![\w.-]){re.escape(name)}(?![\w.-])", text))


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> list[Path]:
    """digits-cnn under a long name, to onnx and torch: names that cannot share 80 columns with every figure."""
    out = tmp_path_factory.mktemp("cli-common") / "out"
    assert main(["export", "zoo:digits-cnn", "-p", "reparam", "-t", "onnx", "-t", "torch", "--name",
                 "digits-cnn-reparam", "-o", str(out)]) == 0
    return [out / "digits-cnn-reparam.onnx", out / "digits-cnn-reparam.torch"]


def test_profile_piped_at_80_columns_keeps_every_name_whole(bundles):
    """Acceptance: `edgesmith profile ... | cat` with COLUMNS=80 shows whole bundle and device names."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "80"}
    args = [sys.executable, "-m", "edgesmith.cli", "profile", *map(str, bundles), "--runs", "3", "--warmup", "1",
            "--no-layers"]
    for d in DEVICES:
        args += ["-d", d]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    print(proc.stdout)  # shown with -s: the sample in the report of the change
    assert max(len(line) for line in proc.stdout.splitlines()) <= 80, proc.stdout
    for b in bundles:
        assert whole(b.name, proc.stdout) == len(DEVICES), (b.name, proc.stdout)
    for d in DEVICES:
        assert whole(d, proc.stdout) == len(bundles), (d, proc.stdout)
    # off a terminal the progress is one line per stage, with the time since the start
    assert re.search(r"^\[\s*\d+\.\ds\] profiling digits-cnn-reparam.onnx$", proc.stderr, re.M), proc.stderr


def test_parity_table_at_80_columns_and_every_format(capsys, monkeypatch, bundles):
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = cli(capsys, "verify", *bundles)
    assert code == 0, err
    assert max(len(line) for line in out.splitlines()) <= 80
    assert all(whole(b.name, out) == 1 for b in bundles), out
    code, out, _ = cli(capsys, "verify", *bundles, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["bundle"] for r in rows] == [b.name for b in bundles] and {r["result"] for r in rows} == {"PASS"}
    code, plain, _ = cli(capsys, "verify", *bundles, "--format", "plain")
    assert "[green]" not in plain and all(whole(b.name, plain) == 1 for b in bundles)
    code, as_format, _ = cli(capsys, "verify", *bundles, "--format", "json")
    code, as_flag, _ = cli(capsys, "verify", *bundles, "--json")
    assert json.loads(as_format) == json.loads(as_flag)


@pytest.mark.parametrize("width", [30, 50, 80, 120, 200])
def test_table_never_breaks_a_name_at_any_width(width):
    t = DataTable(Column("bundle", key=True), Column("device", key=True), Column("mode", wrap=True),
                  *(Column(c, "right") for c in ("p50", "p90", "predicted (band)", "size")), title="latency")
    names = [("efficientformer-v2-s0-reparam.tensorrt", "apple-a17-pro-ane"), ("digits-cnn.onnx", "host")]
    for bundle, device in names:
        t.add_row(bundle, device, "measured (emulated: not a latency)", "91.1 us", "95.5 us", "60.7 us (52-69)",
                  "127 KiB")
    text = t.render("table", width)
    for bundle, device in names:
        assert whole(bundle, text) == 1 and whole(device, text) == 1, text
    assert "91.1 us" in text and "60.7 us (52-69)" in text  # a figure keeps its unit
    for line in text.splitlines():
        assert len(line) <= max(width, len(names[0][0]) + len(names[0][1]) + 2), text


def test_wide_enough_is_a_table_and_too_narrow_is_a_block_per_row():
    t = DataTable(Column("bundle", key=True), Column("top-1", "right"), title="parity")
    t.add_row("digits-cnn.onnx", "100.0%")
    assert t.render("table", 80).splitlines()[1].split() == ["bundle", "top-1"]
    assert t.render("table", 20).splitlines()[1:] == ["digits-cnn.onnx", "  top-1: 100.0%"]
    assert t.render("plain").splitlines() == ["parity", "bundle            top-1", "digits-cnn.onnx  100.0%"]


def test_progress_off_a_terminal_prints_a_line_per_stage(capsys):
    with progress("loading zoo:digits-cnn") as bar:
        bar.update("distill epoch 1/20 loss 2.31", completed=1, total=20)
        bar.update("distill epoch 2/20 loss 2.05", completed=2, total=20)  # same stage, new figures: no line
        bar.update("saving out/x.pt2")
    lines = capsys.readouterr().err.splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == ["loading zoo:digits-cnn", "distill epoch 1/20 loss 2.31",
                                                         "saving out/x.pt2"]
    assert all(re.match(r"\[\s*\d+\.\ds\] ", line) for line in lines)


def test_a_long_silent_stage_still_prints_lines(capsys, monkeypatch):
    import time

    import edgesmith.cli.progressbar as common

    monkeypatch.setattr(common, "HEARTBEAT_S", 0.2)
    with progress("exporting smollm2-135m to onnx"):
        time.sleep(5.5)  # the heartbeat looks every 5 s
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].endswith("] exporting smollm2-135m to onnx")
    assert lines[1].endswith("] exporting smollm2-135m to onnx (still running)"), lines


def test_third_party_progress_bars_are_silenced_off_a_terminal(monkeypatch):
    for var in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.setenv(var, "")  # records the variable, so the test leaves it as it found it
        monkeypatch.delenv(var)
    quiet_progress_bars()
    assert os.environ["TQDM_DISABLE"] == "1" and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"


@pytest.mark.parametrize("name, report, expected", [
    ("reparam", {"folded": 4, "by_fold": {"bn_conv": 3, "bn_linear": 1}, "constants": 0, "kept": [], "max_abs": 1e-6},
     "4 folds (bn_conv 3, bn_linear 1); outputs unchanged (max_abs 1e-06)"),
    ("prepbn", {"converted": ["a", "b"], "test_accuracy": {"layernorm": 0.975, "repbn": 0.9694, "samples": 360}},
     "2 LayerNorm module(s) converted; test accuracy 97.50% -> 96.94% (-0.56%, 360 held-out samples)"),
    ("sla", {"converted": [{}], "test_accuracy": {"softmax": 0.97, "sla": 0.96, "samples": 360}},
     "1 attention module(s) converted; test accuracy 97.00% -> 96.00% (-1.00%, 360 held-out samples)"),
    ("distill", {"student": "lsnet-t", "student_params": 24427, "teacher_params": 28458, "accuracy": 0.95,
                 "teacher_accuracy": 0.9944, "test_images": 360, "agreement": 0.95},
     "student lsnet-t 24,427 params (teacher 28,458); test accuracy 99.44% (teacher) -> 95.00% (-4.44%, 360 images)"
     "; agrees with the teacher on 95.00%"),
    ("rsparse", {"achieved_sparsity": 0.5018, "target_sparsity": 0.5, "layers": 210,
                 "calibration_nll": {"dense": 2.5, "sparse": 2.75}},
     "achieved sparsity 50.18% (target 50.00%) over 210 layers; calibration loss 2.500 -> 2.750 nats/token (+0.250)"),
    ("matformer", {"ffns": 3, "params_before": 6570, "params_after": 3300}, "3 FFN(s) sliced; params 6,570 -> 3,300 (-49.8%)"),
])
def test_pass_results_print_the_figures_a_user_looks_for(name, report, expected):
    assert pass_summary(name, report) == expected


def test_optimize_prints_figures_not_json(capsys, tmp_path):
    code, out, err = cli(capsys, "optimize", "zoo:digits-mlp", "-p", "matformer:ratio=0.5", "-o", tmp_path / "h.pt2")
    assert code == 0, err
    assert re.search(r"^matformer: \d+ FFN\(s\) sliced; params [\d,]+ -> [\d,]+ \(-\d+\.\d%\)", out, re.M), out
    assert "{" not in out
    code, out, err = cli(capsys, "inspect", tmp_path / "h.pt2")
    assert "pass matformer: " in out and "params" in out  # what the .pt2 remembers, without --json too


def test_examples_copy_works_from_any_folder(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = cli(capsys, "examples", "list")
    assert code == 0 and "demo.yaml" in out and "digits.npz" in out
    code, out, err = cli(capsys, "examples", "copy", "ex")
    assert code == 0, err
    assert {p.name for p in (tmp_path / "ex").iterdir()} == {"demo.yaml", "backbones.yaml", "digits.npz"}
    code, _, err = cli(capsys, "run", "ex/demo.yaml", "--check")
    assert code == 0, err
    assert cli(capsys, "examples", "copy", "ex")[0] == 3  # exists: needs --force
    assert cli(capsys, "examples", "copy", "ex", "--force")[0] == 0
