"""Parameter counts and sizes count shared storage (a tied embedding / lm_head) once."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgesmith import api as es
from edgesmith.models.complexity import count_params, size_bytes
from edgesmith.models.inspect import inspect_variant
from edgesmith.models.loader import save_pt2
from edgesmith.models.variant import Variant
from edgesmith.specs import TensorSpec


class TiedLM(nn.Module):
    """A toy LM whose output head is its embedding, as SmolLM2's lm_head is."""

    def __init__(self, vocab: int = 50, dim: int = 8):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(self.embed(ids))


def tied_variant() -> Variant:
    torch.manual_seed(0)
    return Variant(name="tied", module=TiedLM().eval(), inputs=[TensorSpec("ids", (1, 4), "int64")],
                   outputs=[TensorSpec("logits", (1, 4, 50), "float32")],
                   example={"ids": np.arange(4, dtype=np.int64)[None]}, source={"reference": "test"})


def test_tied_weights_count_once_live_and_after_a_pt2_round_trip(tmp_path):
    variant = tied_variant()
    assert count_params(variant.module) == 50 * 8 and size_bytes(variant.module) == 50 * 8 * 4
    path = save_pt2(variant, tmp_path / "tied.pt2")
    loaded = es.load(str(path))
    # torch.export gives the two names two parameter objects over one storage
    params = dict(loaded.module.named_parameters(remove_duplicate=False))
    assert len(params) == 2 and len({p.data_ptr() for p in params.values()}) == 1
    assert count_params(loaded.module) == 50 * 8
    info = inspect_variant(loaded)
    assert info["params"] == 50 * 8 and info["size_bytes"] == 50 * 8 * 4


def test_distinct_weights_are_still_counted_apart():
    variant = tied_variant()
    variant.module.head.weight = nn.Parameter(variant.module.embed.weight.detach().clone())
    assert count_params(variant.module) == 2 * 50 * 8
