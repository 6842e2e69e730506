"""Measuring on a GPU: which catalog device the GPU here is, PyTorch on CUDA (optionally compiled).

The tests that need an NVIDIA GPU with a CUDA build of torch are reported as skipped, with the
reason, where there is none; the rest check detection and the refusals everywhere.
"""

from __future__ import annotations

import pytest
import torch

from edgesmith import api as es
from edgesmith.devices.catalog import gpu_slug, list_devices, match_gpu
from edgesmith.errors import RuntimeUnavailableError, UsageError, exit_code_for
from edgesmith.profiles.measure import measurable_here, profile_bundle
from edgesmith.runtimes import open_runtime
from edgesmith.runtimes.tensorrt.cuda import gpus

HAS_GPU = bool(gpus())
needs_cuda_torch = pytest.mark.skipif(not torch.cuda.is_available(),
                                      reason="no NVIDIA GPU with a CUDA build of torch here")
without_gpu = pytest.mark.skipif(HAS_GPU, reason="a GPU is here")


@pytest.fixture(scope="module")
def torch_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu")
    variant = es.load("zoo:digits-cnn")
    es.export(variant, out, target="onnx")  # the graph its GPU prediction reads
    return es.export(variant, out, target="torch")[0]


@pytest.mark.parametrize("cuda_name,device", [
    ("NVIDIA H100 80GB HBM3", "nvidia-h100"),
    ("NVIDIA H200", "nvidia-h200"),
    ("NVIDIA H2000 Ada", None),  # not an H200: the match ends at a word boundary
    ("Orin", None),
])
def test_a_cuda_name_is_matched_to_its_catalog_device(cuda_name, device):
    found = match_gpu(cuda_name, list_devices())
    assert (found.name if found else None) == device
    assert gpu_slug(cuda_name) == cuda_name.lower().replace(" ", "-")


@without_gpu
def test_without_a_gpu_only_the_host_is_measured(torch_bundle):
    assert measurable_here() == {"host": "cpu"}
    with pytest.raises(UsageError) as info:
        profile_bundle(torch_bundle.path, device="nvidia-h100", runs=1)
    assert "cannot measure on device 'nvidia-h100' here" in str(info.value) and "measurable here: host" in str(info.value)
    # asked to predict it instead, it is predicted
    assert es.profile([torch_bundle.path], device="nvidia-h100")["entries"][0]["mode"] == "predicted"


@pytest.mark.skipif(torch.cuda.is_available(), reason="torch sees a CUDA GPU here")
def test_torch_on_cuda_without_a_gpu_is_exit_5(torch_bundle):
    with pytest.raises(RuntimeUnavailableError) as info:
        open_runtime(torch_bundle.path, accelerator="cuda")
    assert exit_code_for(info.value) == 5 and "no CUDA GPU" in str(info.value)


def test_accelerators_and_compiling_are_checked(torch_bundle, tmp_path):
    with pytest.raises(RuntimeUnavailableError, match="cannot run digits-cnn.torch on npu"):
        open_runtime(torch_bundle.path, accelerator="npu")
    onnx_bundle = torch_bundle.path.parent / "digits-cnn.onnx"
    with pytest.raises(UsageError, match="nothing to compile"):
        open_runtime(onnx_bundle, compiled=True)


def test_compiled_torch_on_the_host_matches_eager(torch_bundle):
    """torch.compile is the same code path on the CPU as on a GPU (inductor), measured like eager."""
    entry = profile_bundle(torch_bundle.path, device="host", runs=3, warmup=1, compiled=True, layers=False)
    assert entry.mode == "measured" and entry.latency_ms.p50 > 0 and entry.warmup >= 3
    runtime = open_runtime(torch_bundle.path, compiled=True)
    inputs, outputs = runtime.bundle.golden()
    import numpy as np

    np.testing.assert_allclose(runtime.run(inputs)["logits"], outputs["logits"], atol=1e-4, rtol=0)


@needs_cuda_torch
@pytest.mark.parametrize("compiled", [False, True])
def test_torch_bundle_measured_on_the_gpu(torch_bundle, compiled):
    here = [d for d in measurable_here() if d != "host"]
    doc = es.profile([torch_bundle.path], device=here[-1], runs=20, compiled=compiled)
    entry = doc["entries"][0]
    assert entry["mode"] == "measured" and entry["device"] == here[-1] and entry["latency_ms"]["p50"] > 0
    if here[-1] != "cuda:0":  # a catalog device: its prediction and error beside the measurement
        assert entry["prediction"]["error"] is not None
