"""The device catalog: every shipped file is valid and sourced; bad files and names are refused by name."""

from __future__ import annotations

import json

import pytest
import yaml

from edgesmith import api as es
from edgesmith.cli import main
from edgesmith.devices.catalog import CATALOG_DIR, KINDS, get_device, list_devices, load_device_file
from edgesmith.errors import BadInputError, UsageError

VALID = {
    "name": "my-board", "title": "My board (4x Cortex-A55)", "kind": "cpu",
    "peak_tflops": {"fp32": 0.05, "int8": 0.2}, "memory_bandwidth_gbs": 12.8, "memory_gb": 4,
    "power_w": 5, "targets": ["onnx"], "runtimes": ["onnxruntime"], "sources": ["my datasheet"],
    "notes": "fp32: 4 cores x 1.8 GHz x 8 FLOP/cycle",
}


def _write(tmp_path, data, name="my-board.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_catalog_has_real_sourced_devices():
    devices = list_devices()
    assert devices[0].name == "host"
    catalog = devices[1:]
    assert len(catalog) >= 10, [d.name for d in catalog]
    assert {d.kind for d in catalog} >= {"cpu", "gpu", "fpga"}
    for d in catalog:
        assert d.kind in KINDS and d.title and d.sources, d.name
        assert d.peak_tflops and d.memory_bandwidth_gbs and d.memory_gb and d.power_w, d.name
        assert d.origin.endswith(f"{d.name}.yaml")
        assert any(s.startswith("http") for s in d.sources), f"{d.name}: cite the vendor's page"
    assert len(list(CATALOG_DIR.glob("*.yaml"))) == len(catalog)


def test_user_device_file(tmp_path, capsys):
    path = _write(tmp_path, VALID)
    board = get_device("my-board", [path])
    assert board.peak_tflops == {"fp32": 0.05, "int8": 0.2} and board.targets == ("onnx",)
    assert main(["devices", "list", "--device-file", str(path), "--json"]) == 0
    names = [d["name"] for d in json.loads(capsys.readouterr().out)]
    assert names[0] == "host" and names[-1] == "my-board"
    # `show --yaml` writes a file that loads back to the same device
    assert main(["devices", "show", "my-board", "--device-file", str(path), "--yaml"]) == 0
    copy = _write(tmp_path, capsys.readouterr().out, "copy.yaml")
    assert load_device_file(copy) == board


@pytest.mark.parametrize("change, match", [
    ({"memory_bandwith_gbs": 1}, "unknown key 'memory_bandwith_gbs'.*memory_bandwidth_gbs"),
    ({"kind": "tpu"}, "kind 'tpu'"),
    ({"peak_tflops": {"fp64": 1.0}}, "precision 'fp64'"),
    ({"peak_tflops": {"fp32": -1}}, "peak_tflops.fp32"),
    ({"memory_gb": "lots"}, "memory_gb"),
    ({"targets": ["onnx", "tflite"]}, "targets has unknown 'tflite'"),
    ({"runtimes": ["onnxruntime", "tflite"]}, "runtimes has unknown 'tflite'"),
    ({"targets": ["onnx", 3]}, "targets has unknown 3"),
    ({"name": "My Board"}, "My Board"),
])
def test_malformed_device_file_names_the_problem(tmp_path, change, match):
    path = _write(tmp_path, {**VALID, **change})
    with pytest.raises(BadInputError, match=match) as info:
        es.devices([path])  # targets and runtimes are checked against the registries where a device is used
    assert str(path) in str(info.value)


def test_a_device_file_may_name_a_plugins_target_and_runtime(tmp_path, monkeypatch):
    from edgesmith.export import EXPORTERS
    from edgesmith.runtimes import RUNTIMES

    monkeypatch.setitem(EXPORTERS._items, "tflite", object)  # as a plugin's entry point would register it
    monkeypatch.setitem(RUNTIMES._items, "tflite-runtime", object)
    path = _write(tmp_path, {**VALID, "targets": ["tflite"], "runtimes": ["tflite-runtime"]})
    assert es.device("my-board", [path]).targets == ("tflite",)
    assert load_device_file(path).runtimes == ("tflite-runtime",)  # reading a file knows no registry


def test_missing_key_and_bad_yaml(tmp_path):
    data = dict(VALID)
    del data["power_w"]
    with pytest.raises(BadInputError, match="missing key 'power_w'"):
        load_device_file(_write(tmp_path, data))
    with pytest.raises(BadInputError, match="not valid YAML"):
        load_device_file(_write(tmp_path, "name: [unclosed", "bad.yaml"))
    with pytest.raises(BadInputError, match="cannot read"):
        load_device_file(tmp_path / "none.yaml")


def test_a_user_file_cannot_shadow_a_catalog_device(tmp_path):
    path = _write(tmp_path, {**VALID, "name": "host"})
    with pytest.raises(BadInputError, match="already defined"):
        list_devices([path])


def test_unknown_device_suggests_close_names(capsys):
    name = list_devices()[1].name
    with pytest.raises(UsageError, match=f"did you mean.*{name}"):
        get_device(name[:-1] + "x")
    assert main(["devices", "show", "no-such-device"]) == 2
    assert "no-such-device" in capsys.readouterr().err


def test_profile_refuses_unknown_devices_and_predicts_catalog_ones(tmp_path):
    variant = es.load("zoo:digits-cnn")
    bundle, _ = es.export(variant, tmp_path, target="onnx")
    with pytest.raises(UsageError, match="unknown device 'jetsn'"):
        es.profile([bundle.path], device="jetsn", runs=2)
    catalog = list_devices()[1]
    (entry,) = es.profile([bundle.path], device=catalog.name, runs=2)["entries"]
    assert entry["device"] == catalog.name and entry["mode"] == "predicted" and entry["samples_ms"] == []
