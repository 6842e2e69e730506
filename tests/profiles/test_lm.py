"""Tests for language-model profiles: TTFT and tokens/s measured on the host, predicted per device, reported."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgesmith import api as es
from edgesmith.bundle import Bundle
from edgesmith.cli import main
from edgesmith.devices.catalog import get_device
from edgesmith.errors import UsageError
from edgesmith.profiles.cost import graph_costs
from edgesmith.profiles.lm import FIT_LENGTHS, LMSettings, _at, step_costs
from edgesmith.profiles.predict import ATTAINABLE, KIND_OVERHEADS_US, fused_nodes
from edgesmith.profiles.report import write_report
from edgesmith.profiles.report.format import sig
from edgesmith.runtimes.kv import empty_cache, step_feeds

DEVICES = ["host", "jetson-orin-nano", "raspberry-pi-5", "nvidia-h100"]
LENGTHS = (8, 16)
DECODE = 4


@pytest.fixture(scope="module")
def bundle(tiny_llama, tmp_path_factory):
    return es.export(tiny_llama, tmp_path_factory.mktemp("lm"), target="onnx")[0].path


@pytest.fixture(scope="module")
def doc(bundle):
    return es.profile([bundle], device=DEVICES, runs=3, warmup=1, layers=False, prompt_lengths=LENGTHS,
                      decode_tokens=DECODE, lm_runs=2)


def test_host_measured_and_devices_predicted(doc):
    host, *others = doc["entries"]
    assert [e["device"] for e in doc["entries"]] == DEVICES
    lm = host["lm"]
    assert lm["mode"] == "measured" and lm["decode_tokens"] == DECODE and lm["runs"] == 2
    assert [r["prompt_tokens"] for r in lm["rows"]] == list(LENGTHS)
    for row in lm["rows"]:
        assert row["ttft_ms"] > 0 and row["decode_ms_per_token"] > 0 and len(row["decode_samples_ms"]) == 2
        assert row["tokens_per_s"] == pytest.approx(1e3 / row["decode_ms_per_token"])
    for measured, predicted in zip(lm["rows"], lm["prediction"]["rows"]):  # the host's prediction, with its error
        assert predicted["decode_error"] == pytest.approx(
            (predicted["decode_ms_per_token"] - measured["decode_ms_per_token"]) / measured["decode_ms_per_token"])
        assert predicted["ttft_low_ms"] < predicted["ttft_ms"] < predicted["ttft_high_ms"]
    for e in others:
        assert e["mode"] == "predicted" and e["lm"]["mode"] == "predicted"
        assert all(r["tokens_per_s"] > 0 and r["ttft_ms"] > 0 for r in e["lm"]["rows"])
        assert "ttft_samples_ms" not in e["lm"]["rows"][0]


def test_decode_is_weight_and_cache_bytes_over_the_bandwidth(doc, bundle):
    by_device = {e["device"]: e["lm"]["prediction"] for e in doc["entries"]}
    model = onnx.load(str(bundle / "model.onnx"))
    inits = {i.name: numpy_helper.to_array(i).nbytes for i in model.graph.initializer}
    matmul_weights = sum(inits[n] for node in model.graph.node if node.op_type == "MatMul"
                         for n in node.input if n in inits)
    weights = by_device["jetson-orin-nano"]["weight_bytes"]
    # every projection is read once per token, the embedding table only for its one row
    assert matmul_weights <= weights < matmul_weights + 97 * 32 * 4
    kv = 2 * 2 * 2 * 8 * 4  # keys and values x 2 layers x 2 KV heads x head_dim 8 x fp32, per position
    assert by_device["jetson-orin-nano"]["kv_bytes_per_position"] == kv
    for name in ("jetson-orin-nano", "raspberry-pi-5", "nvidia-h100"):
        device = get_device(name)
        p = by_device[name]
        bandwidth = device.memory_bandwidth_gbs * ATTAINABLE["bandwidth"]  # GB/s, from the YAML
        for length, row in zip(LENGTHS, p["rows"]):
            context = length + (DECODE - 1) / 2
            assert row["decode_bound"] == "memory"  # a tiny model at batch 1: bytes, not FLOPs
            assert row["decode_bound_ms"] == pytest.approx((weights + kv * (context + 1)) / (bandwidth * 1e6))
            assert row["decode_ms_per_token"] == pytest.approx(row["decode_bound_ms"] + p["overhead_ms"])
        if device.kind == "gpu":
            op_us, run_us = KIND_OVERHEADS_US["gpu"]
            assert p["overhead_ms"] == pytest.approx((p["nodes"] * op_us + run_us) / 1e3)
    orin, pi = by_device["jetson-orin-nano"]["rows"][0], by_device["raspberry-pi-5"]["rows"][0]
    assert orin["decode_bound_ms"] / pi["decode_bound_ms"] == pytest.approx(
        get_device("raspberry-pi-5").memory_bandwidth_gbs / get_device("jetson-orin-nano").memory_bandwidth_gbs)


def test_step_costs_are_exact_polynomials_of_the_length(bundle):
    costs = step_costs(bundle)
    record = Bundle.open(bundle).manifest.generation
    length = 13  # not one of the fitted lengths
    assert length not in FIT_LENGTHS
    feeds = {**step_feeds(np.zeros((1, length), np.int64), 0), **empty_cache(record)}
    graph = graph_costs(bundle / "model.onnx", feeds)
    skip = graph.folded | fused_nodes(graph.costs, graph.producers, graph.consumers)  # what a runtime runs
    flops = sum(c.flops for c in graph.costs if c.node not in skip)
    assert _at(costs.prefill_flops, length) == pytest.approx(flops, rel=1e-9)
    assert costs.prefill_flops[2] > 0  # attention grows with the square of the prompt


def test_report_shows_ttft_and_tokens_per_s(doc, tmp_path):
    html_path, md_path = write_report([doc], tmp_path / "report.html")
    md, page = md_path.read_text(), html_path.read_text()
    host = doc["entries"][0]["lm"]["rows"][0]
    orin = doc["entries"][1]["lm"]["rows"][0]
    assert "## Language models: time to first token and tokens/s" in md
    line = next(x for x in md.splitlines() if x.startswith("| `tiny-llama.onnx` | host "))
    assert sig(host["ttft_ms"]) in line and sig(host["tokens_per_s"]) in line and "measured" in line
    line = next(x for x in md.splitlines() if x.startswith("| `tiny-llama.onnx` | jetson-orin-nano "))
    assert f"≈{sig(orin['tokens_per_s'])}" in line and "predicted" in line
    assert '<section id="language-models">' in page and "Decode tokens/s per device" in page
    assert "Time to first token per device" in page and "tok/s</text>" in page
    plots = page.count('<svg class="es-plot')
    assert f'data-plots="{plots}"' in page


def test_cli_profile_prints_tokens_per_s_and_refuses_bad_lengths(bundle, tmp_path, capsys):
    out = tmp_path / "p.json"
    assert main(["profile", str(bundle), "-d", "host", "-d", "jetson-orin-nano", "--prompt-lengths", "8,12",
                 "--decode-tokens", "3", "--lm-runs", "1", "--runs", "2", "--no-layers", "-o", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "tokens/s" in shown and "TTFT" in shown and "jetson-orin-nano" in shown
    saved = json.loads(out.read_text())
    assert [r["prompt_tokens"] for r in saved["entries"][1]["lm"]["rows"]] == [8, 12]
    assert main(["profile", str(bundle), "--prompt-lengths", "a,b"]) == 2
    assert "'a,b' is not a comma-separated list" in capsys.readouterr().err
    assert main(["profile", str(bundle), "--prompt-lengths", "60", "--decode-tokens", "10"]) == 2
    err = capsys.readouterr().err
    assert "need 70 positions" in err and "at most 64" in err
    with pytest.raises(UsageError, match="decode tokens must be at least 1"):
        LMSettings(decode_tokens=0).check()


def test_the_default_prompt_is_shortened_to_fit_the_context(bundle):
    doc = es.profile([bundle], device="jetson-orin-nano")  # 128 + 32 decode steps do not fit 64 positions
    assert [r["prompt_tokens"] for r in doc["entries"][0]["lm"]["rows"]] == [64 - 32]
    with pytest.raises(UsageError, match="need 96 positions.*at most 64"):  # asked for: an error, not shortened
        es.profile([bundle], device="jetson-orin-nano", prompt_lengths=[64])
