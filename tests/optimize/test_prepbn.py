"""SLAB's RepBN: the ``reparam`` fold into adjacent Linears is exact, and ``prepbn`` converts LayerNorms."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgesmith import api as es
from edgesmith.errors import BadInputError, UsageError
from edgesmith.models.variant import Variant
from edgesmith.optimize.slab.layers import RepBN
from edgesmith.specs import TensorSpec


def _random_repbn(channels: int, gen: torch.Generator) -> RepBN:
    norm = RepBN(channels, eps=1e-3)
    with torch.no_grad():
        norm.bn.running_mean.copy_(torch.randn(channels, generator=gen) * 2)
        norm.bn.running_var.copy_(torch.rand(channels, generator=gen) * 3 + 0.05)
        norm.bn.weight.copy_(torch.randn(channels, generator=gen) * 1.5)
        norm.bn.bias.copy_(torch.randn(channels, generator=gen))
        norm.alpha.fill_(0.37)  # not 1: a fold that drops or mis-scales alpha shows
    return norm


class _Block(nn.Module):
    """Pre-norm transformer block with RepBN: each norm is read by Linears only (folds backward)."""

    def __init__(self, dim: int, heads: int, gen: torch.Generator):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = _random_repbn(dim, gen), _random_repbn(dim, gen)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5).softmax(-1)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))
        return x + self.fc2(nn.functional.gelu(self.fc1(self.norm2(x))))


class _Tokens(nn.Module):
    """Embedding Linear -> RepBN (folds forward, carrying the embedding's bias), blocks, RepBN -> mean -> head."""

    def __init__(self, seed: int = 0, dim: int = 16):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.embed, self.embed_norm = nn.Linear(6, dim), _random_repbn(dim, gen)
        self.blocks = nn.ModuleList(_Block(dim, 2, gen) for _ in range(2))
        self.norm, self.head = _random_repbn(dim, gen), nn.Linear(dim, 5)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen))  # non-zero (upstream) biases

    def forward(self, x):
        x = self.embed_norm(self.embed(x)) * 0.5 + 0.0  # the embedding's only reader is the norm
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(dim=1))


class _PostNorm(nn.Module):
    """BERT-style post-norm: the norm reads a residual sum and feeds the next residual: nothing to fold into."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(3)
        self.fc, self.norm, self.out = nn.Linear(8, 8), _random_repbn(8, gen), nn.Linear(8, 8)

    def forward(self, x):
        x = self.norm(x + self.fc(x))
        return x + self.out(x)


def _variant(module: nn.Module, shape: tuple[int, ...], name: str) -> Variant:
    example = {"x": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    module = module.eval()
    with torch.no_grad():
        out = module(torch.from_numpy(example["x"]))
    return Variant(name=name, module=module,
                   inputs=[TensorSpec("x", shape, "float32", {0: "batch"})],
                   outputs=[TensorSpec("y", tuple(out.shape), "float32", {0: "batch"})],
                   example=example, source={"reference": f"test:{name}", "format": "test", "sha256": ""})


def _norm_nodes(path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node
            if n.op_type in ("LayerNormalization", "BatchNormalization")]


def test_repbn_folds_into_adjacent_linears_exactly(tmp_path):
    module = _Tokens()
    variant = _variant(module, (3, 10, 6), "tokens")
    unfolded, _ = es.export(variant, tmp_path, target="onnx", name="unfolded")
    assert len(_norm_nodes(unfolded.path / "model.onnx")) == 6  # the test can fail: the norms are there before

    folded = es.optimize(variant, ["reparam"])
    report = folded.passes[-1]["report"]
    assert report["by_fold"]["token_norms"] == 6 and report["kept"] == []
    assert any("embed <- embed_norm" in line for line in report["pairs"])  # forward, into the producer
    assert any("norm -> head" in line for line in report["pairs"])  # backward, through the mean over tokens
    rng = np.random.default_rng(1)
    for batch, tokens in ((1, 10), (5, 10)):
        x = torch.from_numpy(rng.standard_normal((batch, tokens, 6)).astype(np.float32))
        with torch.no_grad():
            ref, got = module(x), folded.module(x)
        assert float((got - ref).norm() / ref.norm()) < 1e-5
    bundle, parity = es.export(folded, tmp_path, target="onnx", name="folded")
    assert parity.passed and _norm_nodes(bundle.path / "model.onnx") == []


def test_fold_is_not_a_no_op():
    """Dropping alpha * x (or the upstream bias) from the fold gives a visible error: the check above can fail."""
    module = _Tokens()
    x = torch.randn(2, 10, 6)
    with torch.no_grad():
        ref = module(x)
        for m in module.modules():
            if isinstance(m, RepBN):
                m.alpha.zero_()
        wrong = module(x)
    assert float((wrong - ref).norm() / ref.norm()) > 1e-2


def test_a_norm_without_an_adjacent_linear_stays_and_says_why():
    variant = _variant(_PostNorm(), (2, 5, 8), "post-norm")
    folded = es.optimize(variant, ["reparam"])
    kept = folded.passes[-1]["report"]["kept"]
    assert len(kept) == 1 and kept[0].startswith("RepBN norm stays: its output also feeds add")
    assert "its input comes from add" in kept[0]
    assert kept == folded.notes[-1:]


def test_layernorm_left_in_a_model_is_named():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    folded = es.optimize(_variant(model, (2, 4), "ln"), ["reparam"])
    assert "LayerNorm 1 stays: it computes statistics at run time" in folded.passes[-1]["report"]["kept"][0]


@pytest.mark.parametrize("spec,error,text", [
    ("prepbn", BadInputError, "digits-cnn has no LayerNorm to convert (found: BatchNorm2d x 3, BatchNorm1d x 1)"),
    ("prepbn:decay=0", UsageError, "decay=0.0 is outside (0, 1]"),
])
def test_bad_prepbn_input_is_refused(spec, error, text):
    with pytest.raises(error) as info:
        es.optimize(es.load("zoo:digits-cnn"), [spec])
    assert text in str(info.value)


@pytest.fixture(scope="module")
def digits_vit_prepbn():
    return es.optimize(es.load("zoo:digits-vit"), ["prepbn:train=sklearn-digits"])


def test_digits_vit_with_prepbn_stays_within_a_point_of_layernorm(digits_vit_prepbn):
    report = digits_vit_prepbn.passes[-1]["report"]
    assert report["converted"] == ["blocks.0.norm1", "blocks.0.norm2", "blocks.1.norm1", "blocks.1.norm2", "norm"]
    acc = report["test_accuracy"]
    assert acc["samples"] == 360 and acc["layernorm"] > 0.97
    assert acc["repbn"] >= acc["layernorm"] - 0.01, acc
    assert not any(isinstance(m, nn.LayerNorm) for m in digits_vit_prepbn.module.modules())


@pytest.mark.parametrize("target", ["onnx", "coreml", "mlx"])
def test_folded_digits_vit_exports_without_norms_and_passes_parity(digits_vit_prepbn, target, tmp_path):
    from edgesmith.export import EXPORTERS

    if target not in EXPORTERS:
        pytest.skip(f"{target} is not installed")
    folded = es.optimize(digits_vit_prepbn, ["reparam"])
    assert folded.passes[-1]["report"]["by_fold"]["token_norms"] == 5
    bundle, parity = es.export(folded, tmp_path, target=target)
    assert parity.passed, parity.summary()
    if target == "onnx":
        assert _norm_nodes(bundle.path / "model.onnx") == []


def test_training_data_of_the_wrong_shape_is_refused_and_nothing_written(tmp_path):
    from edgesmith.cli import main

    bad = tmp_path / "bad.npz"
    np.savez(bad, image=np.zeros((64, 1, 7, 7), np.float32))
    out = tmp_path / "x.pt2"
    assert main(["optimize", "zoo:digits-vit", "-p", f"prepbn:train={bad}", "-o", str(out)]) == 3
    assert not out.exists() and not (tmp_path / "x.ckpt").exists()


def test_prepbn_without_training_data_says_how_to_give_it():
    with pytest.raises(UsageError, match="pass 'prepbn' trains: give train=DATA"):
        es.optimize(es.load("zoo:digits-vit"), ["prepbn"])


def test_efficientformer_3d_blocks_convert_and_fold(tmp_path):
    images = tmp_path / "images.npz"
    np.savez(images, x=np.random.default_rng(0).random((8, 3, 224, 224)).astype(np.float32))
    converted = es.optimize(es.load("zoo:efficientformer-l1"), [f"prepbn:train={images},steps=2,batch=4"])
    assert converted.passes[-1]["report"]["converted"] == ["attn_blocks.0.norm1", "attn_blocks.0.norm2", "norm"]
    report = es.optimize(converted, ["reparam"]).passes[-1]["report"]
    assert report["by_fold"]["token_norms"] == 3 and report["kept"] == []


def test_bert_post_norms_convert_and_stay_unfolded_with_the_reason():
    converted = es.optimize(es.load("zoo:all-minilm-l6-v2"),
                            ["prepbn:train=devils-dictionary,steps=2,batch=2,samples=4,seq_len=32"])
    assert len(converted.passes[-1]["report"]["converted"]) == 13  # embeddings + 2 per layer
    kept = es.optimize(converted, ["reparam"]).passes[-1]["report"]["kept"]
    assert len(kept) == 13
    assert kept[1].startswith("RepBN model.encoder.layer.0.attention.output.LayerNorm stays: its output also feeds add")


def test_a_resumed_run_ends_where_the_uninterrupted_one_did(tmp_path):
    spec = f"prepbn:train=sklearn-digits,steps=6,save_every=3,checkpoint={tmp_path / 'ckpt'}"
    base = es.load("zoo:digits-vit")
    first = es.optimize(base, [spec])
    assert (tmp_path / "ckpt" / "last.pt").is_file()
    with pytest.raises(UsageError, match="already holds a prepbn checkpoint"):
        es.optimize(base, [spec])
    resumed = es.optimize(base, [spec + ",resume=true"])
    assert resumed.passes[-1]["report"]["training"]["resumed_at"] == 6
    x = torch.from_numpy(base.example["image"])
    with torch.no_grad():
        assert torch.equal(first.module(x), resumed.module(x))
    with pytest.raises(UsageError, match="made with other options: steps"):
        es.optimize(base, [spec.replace("steps=6", "steps=8") + ",resume=true"])
