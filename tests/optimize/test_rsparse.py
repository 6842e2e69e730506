"""R-Sparse: exact limits of the layer, the pass's budget and measured sparsity, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgesmith import api as es
from edgesmith.errors import BadInputError, UsageError
from edgesmith.optimize.rsparse import budget, threshold
from edgesmith.optimize.rsparse.layers import RSparseLinear


def _linear(d_in: int = 24, d_out: int = 16, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(d_in, d_out)
    with torch.no_grad():
        layer.bias.normal_()
    return layer


def test_threshold_zero_equals_dense():
    layer, x = _linear(), torch.randn(3, 5, 24)
    sparse = RSparseLinear(layer, threshold=0.0, rank=0)
    with torch.no_grad():
        assert torch.equal(sparse(x), layer(x))


def test_full_rank_equals_dense_at_any_threshold():
    layer, x = _linear(), torch.randn(3, 5, 24, dtype=torch.float64)
    layer = layer.double()
    sparse = RSparseLinear(layer, threshold=1.0, rank=16)
    with torch.no_grad():
        ref, got = layer(x), sparse(x)
        assert float((got - ref).abs().max() / ref.abs().max()) < 1e-12
        # the limit is not trivial: the same threshold without the low-rank part drops channels
        assert float((RSparseLinear(layer, 1.0, 0)(x) - ref).abs().max() / ref.abs().max()) > 1e-2


def test_sparsity_is_counted_not_assumed():
    layer = _linear()
    sparse = RSparseLinear(layer, threshold=float("inf"), rank=4)  # no channel active: only the rank is paid
    sparse.counting = True
    sparse(torch.randn(2, 3, 24))
    assert sparse.macs == [6 * 4 * (24 + 16), 6 * 24 * 16]


def test_data_fitted_low_rank_beats_the_weights_own_svd_on_the_inactive_inputs():
    torch.manual_seed(3)
    layer = nn.Linear(48, 40, bias=False).double()
    sparse = RSparseLinear(layer, threshold=0.0, rank=0)
    # correlated inputs: a few latent directions, so the inactive part has structure to fit
    x = (torch.randn(4000, 3, dtype=torch.float64) @ torch.randn(3, 48, dtype=torch.float64)
         + 0.05 * torch.randn(4000, 48, dtype=torch.float64))
    t = float((x * sparse.scale).abs().median())
    rest = torch.where((x * sparse.scale).abs() > t, torch.zeros_like(x), x)

    def error() -> float:
        approx = (rest @ sparse.down) @ sparse.up.T
        return float(((rest @ layer.weight.T - approx) ** 2).mean())

    sparse.configure(t, 3)
    plain = error()
    sparse.fit_low_rank(rest.T @ rest / len(rest))
    fitted = error()
    assert fitted < 0.9 * plain
    sparse.configure(t, 40)  # full rank stays exact after a fit
    sparse.fit_low_rank(rest.T @ rest / len(rest))
    assert error() < 1e-20


@pytest.mark.parametrize("rho,expected", [(1.0, (12, 0)), (0.0, (0, 4)), (0.95, (12, 0)), (0.5, (7, 2))])
def test_budget_spends_the_same_macs(rho, expected):
    c, r = budget(24, 16, 0.5, rho)
    assert (c, r) == expected
    assert c * 16 + r * (24 + 16) <= 0.5 * 24 * 16


@pytest.fixture(scope="module")
def calibration(tmp_path_factory, tiny_llama):
    path = tmp_path_factory.mktemp("rsparse") / "ids.npz"
    np.savez(path, input_ids=np.random.default_rng(1).integers(0, 97, (8, 32)).astype(np.int64))
    return path


def test_pass_reaches_its_target_sparsity(tiny_llama, calibration):
    sparse = es.optimize(tiny_llama, [f"rsparse:sparsity=0.5,text={calibration},seq_len=32,samples=8"])
    report = sparse.passes[-1]["report"]
    assert report["layers"] == 14  # 7 Linears per layer, lm_head left dense
    assert abs(report["achieved_sparsity"] - 0.5) <= 0.02, report["achieved_sparsity"]
    assert sum(isinstance(m, RSparseLinear) for m in sparse.module.modules()) == 14
    nll = report["calibration_nll"]  # what the sparsity cost, on the same windows
    assert 0 < nll["dense"] <= nll["sparse"] + 0.05, nll


def test_sparsity_zero_all_sparse_is_the_dense_model(tiny_llama, calibration):
    same = es.optimize(tiny_llama, [f"rsparse:sparsity=0,rho=1,text={calibration},seq_len=32,samples=8"])
    assert same.passes[-1]["report"]["achieved_sparsity"] == 0.0
    ids = torch.from_numpy(tiny_llama.example["input_ids"])
    with torch.no_grad():
        assert torch.equal(same.module(ids), tiny_llama.module(ids))


@pytest.mark.parametrize("spec,error,text", [
    ("rsparse:sparsity=1", UsageError, "sparsity=1.0 is outside [0, 1)"),
    ("rsparse:sparsity=-0.1", UsageError, "sparsity=-0.1 is outside [0, 1)"),
    ("rsparse:rho=2", UsageError, "rho=2.0 is outside [0, 1]"),
    ("rsparse:lowrank=asvd", UsageError, "lowrank='asvd' is not svd or data"),
])
def test_bad_options_are_refused(spec, error, text, tiny_llama):
    with pytest.raises(error) as info:
        es.optimize(tiny_llama, [spec])
    assert text in str(info.value)


def test_calibration_text_too_short_says_how_much_is_needed(tiny_llama, calibration):
    with pytest.raises(BadInputError, match="gives 8 window\\(s\\) of 32 tokens \\(256 tokens\\); the thresholds need "
                                            "samples=20 x seq_len=32 = 640 tokens"):
        es.optimize(tiny_llama, [f"rsparse:text={calibration},seq_len=32,samples=20"])


def test_a_model_that_is_not_a_language_model_is_refused():
    with pytest.raises(BadInputError, match="digits-mlp is not a language model"):
        es.optimize(es.load("zoo:digits-mlp"), ["rsparse"])


def test_search_is_never_worse_than_uniform_and_its_result_is_reused(tiny_llama, calibration, tmp_path):
    rho_file = tmp_path / "rho.json"
    spec = f"rsparse:sparsity=0.5,text={calibration},seq_len=32,samples=8"
    searched = es.optimize(tiny_llama, [f"{spec},search=3,population=4,search_samples=4,rho_file={rho_file}"])
    report = searched.passes[-1]["report"]
    assert report["search"]["loss"] <= report["search"]["uniform_loss"]
    assert report["search"]["history"] == sorted(report["search"]["history"], reverse=True)  # elitist: never worse
    assert abs(report["achieved_sparsity"] - 0.5) <= 0.02
    reused = es.optimize(tiny_llama, [f"{spec},rho_file={rho_file}"]).passes[-1]["report"]
    assert [r["rho"] for r in reused["per_layer"]] == [r["rho"] for r in report["per_layer"]]
    with pytest.raises(BadInputError, match="was searched for sparsity 0.5, not 0.4"):
        es.optimize(tiny_llama, [f"{spec.replace('0.5', '0.4')},rho_file={rho_file}"])


def test_thresholds_never_sit_on_a_calibration_value():
    values = torch.tensor([0.1, 0.2, 0.2, 0.2, 0.4, 0.5], dtype=torch.float32)
    assert threshold(values, 0.5) == pytest.approx(0.3)  # the tie at 0.2 is stepped over
    assert threshold(values, 1.0) == 0.0 and threshold(values, 0.0) == float("inf")
    assert threshold(values, 0.01) == pytest.approx(0.5)  # nothing above the largest value
    assert all(threshold(values, k / 10) not in values.tolist() for k in range(1, 10) if threshold(values, k / 10) < 0.5)


@pytest.mark.parametrize("target", ["onnx", "mlx"])
def test_the_sparse_model_exports_with_parity(tiny_llama, calibration, tmp_path, target):
    # layer 0 sees the same embedding rows in calibration and here: a threshold on one of them
    # flipped a channel under MLX's rounding before thresholds were put between values
    sparse = es.optimize(tiny_llama, [f"rsparse:sparsity=0.5,text={calibration},seq_len=32,samples=8"])
    bundle, parity = es.export(sparse, tmp_path, target=target)
    assert parity.passed, parity.summary()
