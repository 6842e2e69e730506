"""The R-Sparse decode kernel (torch.ops.edgesmith.rsparse_matvec) against the layer's torch path."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgesmith import kernels
from edgesmith.errors import RuntimeUnavailableError
from edgesmith.optimize.rsparse.layers import RSparseLinear


@pytest.fixture(scope="module")
def op():
    found = kernels.rsparse_matvec()
    assert found is not None, "the kernel library is not built: run `make kernels`"
    return found


def _layer(d_in: int, d_out: int, keep: float, rank: int, bias: bool = True, seed: int = 0) -> RSparseLinear:
    torch.manual_seed(seed)
    linear = nn.Linear(d_in, d_out, bias=bias)
    layer = RSparseLinear(linear, 0.0, 0)
    x = torch.randn(64, d_in)
    values = (x * layer.scale).abs().reshape(-1).sort().values
    layer.configure(float(values[int((1 - keep) * (len(values) - 1))]) if keep < 1 else 0.0, rank)
    return layer.eval()


def _torch_path(layer: RSparseLinear, x: torch.Tensor) -> torch.Tensor:
    layer.kernel = False
    try:
        return layer(x)
    finally:
        layer.kernel = True


def _kernel_calls(fn) -> tuple[torch.Tensor, int]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = fn()
    return out, sum(e.count for e in prof.key_averages() if e.key == "edgesmith::rsparse_matvec")


@pytest.mark.parametrize("d_in,d_out,keep,rank,bias", [
    (576, 576, 0.5, 7, False), (37, 131, 0.3, 5, True), (150, 23, 0.9, 0, True), (64, 64, 0.0, 12, False),
    (96, 200, 1.0, 0, True),
])
def test_kernel_equals_the_layers_torch_path(op, d_in, d_out, keep, rank, bias):
    layer = _layer(d_in, d_out, keep, rank, bias)
    for seed in range(3):
        x = torch.randn(1, 1, d_in, generator=torch.Generator().manual_seed(seed))
        y, calls = _kernel_calls(lambda: layer(x))
        assert calls == 1
        ref = _torch_path(layer, x)
        assert y.shape == ref.shape == (1, 1, d_out)
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def test_threshold_zero_and_no_rank_is_the_dense_layer(op):
    torch.manual_seed(1)
    linear = nn.Linear(300, 70)
    layer = RSparseLinear(linear, 0.0, 0).eval()
    x = torch.randn(1, 300)
    torch.testing.assert_close(layer(x), linear(x), rtol=1e-5, atol=1e-5)


def test_more_than_one_token_and_training_use_the_torch_path(op):
    layer = _layer(40, 30, 0.5, 3)
    _, calls = _kernel_calls(lambda: layer(torch.randn(2, 40)))
    assert calls == 0
    _, calls = _kernel_calls(lambda: layer(torch.randn(1, 40, requires_grad=True)))
    assert calls == 0


def test_counted_macs_are_the_same_on_both_paths(op):
    layer = _layer(128, 64, 0.4, 6)
    x = torch.randn(1, 128)
    counts = []
    for kernel in (True, False):
        layer.kernel, layer.counting, layer.macs = kernel, True, [0, 0]
        layer(x)
        counts.append(list(layer.macs))
    assert counts[0] == counts[1] and 0 < counts[0][0] < counts[0][1]


def test_decode_of_a_sparse_llama_matches_with_and_without_the_kernel(op, tiny_llama):
    from edgesmith.optimize.rsparse import targets

    module = tiny_llama.module.model  # the Hugging Face model inside edgesmith's wrapper
    import copy

    model = copy.deepcopy(module)
    for name, linear in targets(model, "lm_head"):
        model.set_submodule(name, RSparseLinear(linear, 0.0, 0))
    for i, m in enumerate(x for x in model.modules() if isinstance(x, RSparseLinear)):
        m.configure(0.05 * (i % 3), 2)
    ids = torch.from_numpy(tiny_llama.example["input_ids"][:1])

    def decode(kernel: bool):
        for m in model.modules():
            if isinstance(m, RSparseLinear):
                m.kernel = kernel
        with torch.no_grad():
            out = model(ids[:, :4], use_cache=True)
            logits, cache = [out.logits[:, -1]], out.past_key_values
            for t in range(4, ids.shape[1]):
                out = model(ids[:, t:t + 1], past_key_values=cache, use_cache=True)
                logits.append(out.logits[:, -1])
                cache = out.past_key_values
        return torch.stack(logits, 1)

    with_kernel, calls = _kernel_calls(lambda: decode(True))
    assert calls > 0
    torch.testing.assert_close(with_kernel, decode(False), rtol=1e-4, atol=1e-5)


def test_a_missing_library_says_how_to_build_it(monkeypatch, tmp_path):
    monkeypatch.setattr(kernels, "LIBRARY", tmp_path / "absent.so")
    kernels.rsparse_matvec.cache_clear()
    try:
        with pytest.raises(RuntimeUnavailableError, match="not built") as info:
            kernels.require_rsparse_matvec()
        assert "make kernels" in info.value.hint
    finally:
        kernels.rsparse_matvec.cache_clear()


def test_a_failed_build_leaves_no_library(monkeypatch, tmp_path):
    bad = tmp_path / "bad.cpp"
    bad.write_text("this is not C++\n")
    monkeypatch.setattr(kernels, "SOURCE", bad)
    out = tmp_path / "lib.so"
    with pytest.raises(RuntimeUnavailableError, match="bad.cpp failed"):
        kernels.build(out)
    assert not out.exists() and not list(tmp_path.glob("lib.so*"))
