"""The hls target: lowering, refused layers, automatic precision, the C simulation and its bundle."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("hls4ml")
pytest.importorskip("sklearn")
if shutil.which("g++") is None:
    pytest.skip("g++ is not installed: the HLS C simulation cannot be compiled", allow_module_level=True)

from torch import nn  # noqa: E402

from edgesmith import api as es  # noqa: E402
from edgesmith.bundle import Bundle  # noqa: E402
from edgesmith.cli import main  # noqa: E402
from edgesmith.errors import BadInputError, ParityError, UsageError, exit_code_for  # noqa: E402
from edgesmith.export import get_exporter  # noqa: E402
from edgesmith.export.hls.graph import lower  # noqa: E402
from edgesmith.export.hls.precision import Fixed, choose_precision  # noqa: E402
from edgesmith.data.datasets import digits_split  # noqa: E402
from edgesmith.models.variant import Variant  # noqa: E402
from edgesmith.runtimes.hls import CSim, build_library  # noqa: E402
from edgesmith.specs import TensorSpec  # noqa: E402


@pytest.fixture(scope="module")
def split():
    return digits_split()


@pytest.fixture(scope="module")
def mlp():
    return es.load("zoo:digits-mlp")


@pytest.fixture(scope="module")
def mlp_bundle(mlp, tmp_path_factory):
    bundle, parity = es.export(mlp, tmp_path_factory.mktemp("hls"), target="hls")
    return bundle, parity


def _agreement(bundle, variant, x) -> float:
    got = es.run(bundle.path, {"image": x})["logits"]
    ref = variant.run({"image": x})["logits"]
    return float(np.mean(got.argmax(1) == ref.argmax(1)))


def test_options_are_checked():
    exporter = get_exporter("hls", {"io": "stream", "reuse_factor": "4", "precision": "ap_fixed<12,4>"})
    assert exporter.options.io == "stream" and exporter.options.reuse_factor == 4
    for bad in ({"io": "serial"}, {"reuse_factor": "0"}, {"precision": "ap_fixed<8>"}, {"backend": "quartus"},
                {"precision": "ap_fixed<8,9>"}, {"project": "1st"}):
        with pytest.raises(UsageError) as info:
            get_exporter("hls", bad)
        assert next(iter(bad)) in str(info.value)


def test_lowering_folds_batchnorm_and_matches_torch():
    variant = es.load("zoo:digits-cnn")
    lowered = lower(variant)
    kinds = [layer.kind for layer in lowered.layers]
    assert kinds.count("conv") == 3 and kinds.count("linear") == 2 and "batchnorm" not in kinds
    assert lowered.layer("features_0").folded == ["features.1"]
    assert lowered.layer("features_10").source_type == "AdaptiveAvgPool2d"  # became a fixed AvgPool2d
    x = torch.from_numpy(variant.example["image"])
    with torch.no_grad():
        np.testing.assert_allclose(lowered.module(x).numpy(), variant.module(x).numpy(), atol=1e-5, rtol=0)
    # the reparam pass's torch.export graph lowers to the same layers
    assert [layer.kind for layer in lower(es.optimize(variant, ["reparam"])).layers] == kinds


def test_mlp_input_flatten_is_absorbed(mlp):
    lowered = lower(mlp)
    assert lowered.input_shape == (64,) and lowered.layers[0].kind == "linear"
    assert lowered.layers[0].name == "layer_1"  # C identifiers for the HLS layer names


def test_lsnet_fails_naming_the_first_unsupported_layer(capsys, tmp_path):
    capsys.readouterr()
    code = main(["export", "zoo:lsnet-t:num_classes=10,image_size=32", "-t", "hls", "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "stages.1.0.0" in err and "(Conv2d)" in err and "groups=64" in err  # LSNet's first depthwise conv
    assert "the hls target converts" in err and "Linear" in err  # the supported list
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(8, 24)
        self.out = nn.Linear(8, 4)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.out(torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v).mean(1)


def test_attention_is_refused_by_name(tmp_path):
    x = np.random.default_rng(0).normal(size=(2, 5, 8)).astype(np.float32)
    module = _Attention().eval()
    with torch.no_grad():
        out = module(torch.from_numpy(x)).numpy()
    variant = Variant("attn", module, [TensorSpec("x", x.shape, "float32")], [TensorSpec("y", out.shape, "float32")],
                      {"x": x}, {"reference": "test"})
    with pytest.raises(BadInputError) as info:
        es.export(variant, tmp_path, target="hls")
    assert exit_code_for(info.value) == 3
    # the first op with no HLS layer, in graph order: splitting q, k, v (before any matrix product)
    assert "layer 'chunk' (_Attention)" in info.value.message and "aten.chunk" in info.value.message
    assert list(tmp_path.iterdir()) == []


def test_fixed_quantize_rounds_and_saturates():
    t = Fixed(6, 3)  # 3 fraction bits, range [-4, 3.875]
    np.testing.assert_array_equal(t.quantize(np.array([0.06, 0.07, -0.07, 9.0, -9.0])),
                                  [0.0, 0.125, -0.125, 3.875, -4.0])
    assert t.hls() == "ap_fixed<6,3,AP_RND,AP_SAT>"


def test_precision_search_meets_its_target_with_narrow_types(mlp, split):
    x_train = split[0][:300]
    plan = choose_precision(lower(mlp), x_train, classify=True, min_top1=0.995, min_snr_db=30.0)
    assert plan.emulated["top1"] >= 0.995 and plan.emulated["snr_db"] >= 30.0
    weights = [p.weight.width for p in plan.layers.values() if p.weight is not None]
    assert len(weights) == 3 and max(weights) < 16  # narrower than hls4ml's default ap_fixed<16,6>
    # a stricter target needs at least as many bits
    strict = choose_precision(lower(mlp), x_train, classify=True, min_top1=0.995, min_snr_db=40.0)
    assert sum(p.weight.width for p in strict.layers.values() if p.weight is not None) > sum(weights)


def test_mlp_bundle_parity_precision_and_estimates(mlp_bundle, mlp, split):
    """Acceptance 1 (MLP): automatic precision, >= 99% top-1 agreement on the whole digits test split."""
    bundle, parity = mlp_bundle
    assert parity.passed and parity.tier == "emulated" and parity.precision == "fixed"
    assert any(o.name.endswith("@batch1437") for o in parity.outputs)  # the whole calibration set was checked
    assert _agreement(bundle, mlp, split[1]) >= 0.99
    info = bundle.manifest.details["hls"]
    assert info["precision_mode"] == "auto" and info["calibration"]["source"] == "sklearn-digits train split"
    assert [row[0] for row in info["precision_table"]] == ["image", "layer_1", "layer_2", "layer_3", "layer_4",
                                                           "layer_5"]
    est = info["estimates"]
    assert est["kind"] == "predicted" and est["latency_cycles"] > 0
    assert {"dsp", "lut", "ff", "bram18"} == set(est["total"]) and est["capacity"]["dsp"] == 1728
    dense = [r for r in est["layers"] if r["class"] == "Dense"]
    assert [r["multipliers"] for r in dense] == [np.count_nonzero(w) for w in (
        mlp.module[1].weight.detach().numpy(), mlp.module[3].weight.detach().numpy(),
        mlp.module[5].weight.detach().numpy())]


def test_profile_predicts_cycles_and_resources_on_fpga_devices(mlp_bundle, tmp_path):
    bundle, _ = mlp_bundle
    est = bundle.manifest.details["hls"]["estimates"]
    doc = es.profile([bundle.path], device=["xilinx-zcu104", "amd-alveo-u280", "raspberry-pi-5"])
    zcu, u280 = doc["entries"]
    assert zcu["mode"] == u280["mode"] == "predicted"
    batch = zcu["batch"]
    cycles = est["latency_cycles"] + (batch - 1) * est["interval_cycles"]  # one sample at a time
    assert zcu["latency_ms"]["p50"] == pytest.approx(cycles * est["clock_ns"] / 1e6)
    res = zcu["prediction"]["resources"]
    assert res["dsp"] == est["total"]["dsp"] and res["part"].startswith("xczu7ev")
    assert res["fits"] == (max(res["utilisation"].values()) <= 1.0)
    assert res["fits"] or any("does not fit xczu7ev" in n for n in zcu["prediction"]["notes"])
    assert res["utilisation"]["dsp"] == pytest.approx(est["total"]["dsp"] / 1728)
    ures = u280["prediction"]["resources"]
    assert ures["part"].startswith("xcu280") and ures["utilisation"]["dsp"] == pytest.approx(est["total"]["dsp"] / 9024)
    assert any("export with --part xcu280" in n for n in u280["prediction"]["notes"])
    assert zcu["layers"] and {lt["op_types"][0] for lt in zcu["layers"]} >= {"Dense"}
    (skipped,) = doc["not_predicted"]
    assert skipped["device"] == "raspberry-pi-5" and "FPGA logic" in skipped["reason"]
    written = es.report([doc], tmp_path / "report.html")
    md = next(p for p in written if p.suffix == ".md").read_text()
    section = md.split("## FPGA resources (predicted)")[1].split("\n## ")[0]
    assert f"{est['total']['dsp']:,}" in section and "xcu280-fsvh2892-2L-e" in section and "fits" in section


def test_cli_flags_map_to_options_and_the_table_is_printed(capsys, tmp_path):
    """--reuse-factor/--clock-ns/--io/--part are the hls options; the chosen precisions are printed."""
    out = tmp_path / "out"
    code = main(["export", "zoo:digits-mlp", "--target", "hls", "--reuse-factor", "4", "--clock-ns", "4",
                 "--part", "xcu280-fsvh2892-2L-e", "-O", "samples=256", "-o", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    info = Bundle.open(out / "digits-mlp.hls").manifest.details["hls"]
    assert (info["reuse_factor"], info["clock_ns"], info["part"]) == (4, 4.0, "xcu280-fsvh2892-2L-e")
    assert "ap_fixed<W,I> per layer (chosen from calibration data)" in printed
    for name, _kind, weight, *_ in info["precision_table"]:
        assert name in printed and weight in printed
    assert f"DSP {info['estimates']['total']['dsp']:,}" in printed and "cycles" in printed
    assert main(["export", "zoo:digits-mlp", "--target", "onnx", "--io", "stream", "-o", str(out)]) == 2
    assert "--io is an option of the hls target" in capsys.readouterr().err
    assert main(["export", "zoo:digits-mlp", "-t", "hls", "--io", "stream", "-O", "io=parallel",
                 "-o", str(out)]) == 2


def test_bundle_holds_project_testbench_and_readme(mlp_bundle):
    bundle, _ = mlp_bundle
    hls = bundle.path / "hls"
    for name in ("build_prj.tcl", "vivado_synth.tcl", "digits_mlp_test.cpp", "firmware/digits_mlp.cpp",
                 "tb_data/tb_input_features.dat", "tb_data/tb_output_predictions.dat"):
        assert (hls / name).is_file(), name
    rows = (hls / "tb_data/tb_input_features.dat").read_text().strip().splitlines()
    assert len(rows) == 4 and len(rows[0].split()) == 64  # the golden inputs, flat
    readme = (bundle.path / "README.md").read_text()
    assert "vitis_hls -f build_prj.tcl" in readme and "emulated" in readme and "not synthesised" in readme
    assert str(bundle.path.parent) not in (hls / "hls4ml_config.yml").read_text()


def test_runtime_needs_neither_torch_nor_the_build_folder(mlp_bundle, mlp, tmp_path):
    bundle, _ = mlp_bundle
    moved = tmp_path / "elsewhere" / bundle.path.name
    shutil.copytree(bundle.path, moved)
    x = mlp.example["image"]
    np.save(tmp_path / "x.npy", x)
    code = textwrap.dedent(f"""
        import sys
        sys.modules['torch'] = None
        sys.modules['edgesmith.export'] = None
        import numpy as np
        from edgesmith.runtimes import check_bundle, open_runtime
        rt = open_runtime({str(moved)!r})
        out = rt.run({{"image": np.load({str(tmp_path / 'x.npy')!r})}})["logits"]
        print(rt.tier, rt.timing, check_bundle({str(moved)!r}).passed, out.argmax(1).tolist())
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    ref = mlp.run()["logits"].argmax(1).tolist()
    assert proc.stdout.strip() == f"emulated emulated True {ref}"


def test_rebuilt_library_computes_the_same(mlp_bundle, tmp_path):
    bundle, _ = mlp_bundle
    work = tmp_path / "proj"
    shutil.copytree(bundle.path / "hls", work)
    library = build_library(work, "digits_mlp")
    x = bundle.golden()[0]["image"]
    shipped = CSim(bundle.path / bundle.manifest.details["hls"]["library"], "digits_mlp", 64, (10,))
    np.testing.assert_array_equal(CSim(library, "digits_mlp", 64, (10,))(x), shipped(x))


def test_default_precision_is_hls4ml_ap_fixed_16_6(mlp, mlp_bundle, tmp_path):
    # hls4ml's default keeps top-1 but its output SNR misses the fixed-point tolerance on the calibration set
    with pytest.raises(ParityError, match="SNR"):
        es.export(mlp, tmp_path, target="hls", options={"precision": "ap_fixed<16,6>"}, keep_failed=True)
    bundle = Bundle.open(tmp_path / "digits-mlp.hls")
    types = bundle.manifest.details["hls"]["types"]
    assert types["layer_1"]["weight"].startswith("ap_fixed<16,6")
    assert bundle.manifest.details["hls"]["precision"] is None
    auto = mlp_bundle[0].manifest.details["hls"]["estimates"]["total"]["dsp"]
    assert auto < bundle.manifest.details["hls"]["estimates"]["total"]["dsp"]  # narrower types, fewer DSPs


def test_digits_cnn_conv_path(tmp_path, split):
    """Acceptance 1 (CNN): conv, pool and dense layers in C simulation, >= 99% agreement on the test split."""
    variant = es.load("zoo:digits-cnn")
    bundle, parity = es.export(variant, tmp_path, target="hls", options={"samples": "400"})
    assert parity.passed
    assert _agreement(bundle, variant, split[1]) >= 0.99
    manifest = json.loads((bundle.path / "manifest.json").read_text())
    assert manifest["details"]["hls"]["calibration"]["samples"] == 400
    assert Bundle.open(bundle.path).manifest.runtime == "hls"
