"""Matryoshka embeddings: truncate a sentence encoder's embedding to its first ``dim`` coordinates.

Matryoshka Representation Learning (Kusupati et al., 2022) trains an encoder so that
every prefix of its embedding is itself a good embedding; the deployed model then
returns only the first ``m`` coordinates, re-normalised, which cuts index memory and
similarity cost by ``d / m``. This pass makes the deployable model::

    before:  tokens -> encoder -> hidden (B, T, d)
    after:   tokens -> encoder -> pool over tokens (mean under the mask, or CLS) -> [:, :m] -> L2-normalise -> (B, m)

It is exact for what it claims (the first ``m`` coordinates of the pooled embedding,
re-normalised); how much retrieval quality survives depends on whether the encoder
was trained nested. An encoder without a recorded Matryoshka training gets a note.
"""

from __future__ import annotations

import dataclasses

import torch

from edgesmith.errors import BadInputError, UsageError
from edgesmith.optimize import PASSES, Pass

POOLINGS = ("mean", "cls", "none")


@dataclasses.dataclass
class MatryoshkaOptions:
    """Options of the ``matryoshka`` pass.

    Attributes:
        dim: Embedding coordinates kept (the first ``dim``), at least 1 and at most the model's width.
        pooling: ``mean`` (over the tokens the ``attention_mask`` input keeps; sentence-transformers'
            default, all-MiniLM-L6-v2's), ``cls`` (the first token), or ``none`` (the model already
            returns one embedding per input).
        normalize: L2-normalise the truncated embedding (cosine similarity becomes a dot product).
    """

    dim: int = 128
    pooling: str = "mean"
    normalize: bool = True

    def __post_init__(self):
        if self.dim < 1:
            raise UsageError(f"pass 'matryoshka': dim={self.dim} must be at least 1")
        if self.pooling not in POOLINGS:
            raise UsageError(f"pass 'matryoshka': pooling={self.pooling!r} is not one of {', '.join(POOLINGS)}")


class Truncated(torch.nn.Module):
    """An encoder whose output is pooled, cut to ``dim`` coordinates and (optionally) re-normalised."""

    def __init__(self, encoder, dim: int, pooling: str, normalize: bool, mask_index: int | None):
        super().__init__()
        self.encoder = encoder
        self.dim = dim
        self.pooling = pooling
        self.normalize = normalize
        self.mask_index = mask_index

    def forward(self, *args):
        hidden = self.encoder(*args)
        if self.pooling == "mean":
            mask = args[self.mask_index].unsqueeze(-1).to(hidden.dtype)
            emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        elif self.pooling == "cls":
            emb = hidden[:, 0]
        else:
            emb = hidden
        emb = emb[..., : self.dim]
        if not self.normalize:
            return emb
        # F.normalize's arithmetic, in ops every target translates (MLX has no vector-norm op)
        return emb / (emb * emb).sum(-1, keepdim=True).sqrt().clamp(min=1e-12)


@PASSES.register("matryoshka")
class Matryoshka(Pass):
    """Pool, truncate to ``dim`` coordinates and re-normalise a sentence encoder's embedding (Matryoshka)."""

    name = "matryoshka"
    Options = MatryoshkaOptions

    def _apply_impl(self, variant):
        from edgesmith.models.variant import run_module
        from edgesmith.specs import TensorSpec

        o = self.options
        names = [s.name for s in variant.inputs]
        out = variant.outputs[0]
        rank = 3 if o.pooling != "none" else 2
        if len(variant.outputs) != 1 or len(out.shape) != rank:
            raise BadInputError(f"pass 'matryoshka' needs one output of rank {rank} "
                                f"({'batch, tokens, width' if rank == 3 else 'batch, width'}); {variant.name} "
                                f"returns {', '.join(s.describe() for s in variant.outputs)}",
                                hint="use pooling=none for a model that returns one embedding per input")
        width = out.shape[-1]
        if o.dim > width:
            raise BadInputError(f"pass 'matryoshka': dim={o.dim} exceeds {variant.name}'s embedding width {width}")
        if o.pooling == "mean" and "attention_mask" not in names:
            raise BadInputError(f"pass 'matryoshka': mean pooling needs an attention_mask input; "
                                f"{variant.name} takes {', '.join(names)}", hint="use pooling=cls or none")
        mask_index = names.index("attention_mask") if o.pooling == "mean" else None
        module = Truncated(variant.module, o.dim, o.pooling, o.normalize, mask_index).eval()
        nested = any(p.get("name") == "matryoshka" and p.get("params", {}).get("train") for p in variant.passes)
        if not nested and o.dim < width:
            self.notes.append(f"matryoshka: {variant.name} was not trained nested; its first {o.dim} of "
                                 f"{width} coordinates may keep less than a Matryoshka-trained model's would")
        batch_axis = {0: out.dynamic[0]} if 0 in out.dynamic else {}
        example = run_module(module, variant.inputs, None, variant.example)
        self.outputs = [TensorSpec("sentence_embedding", tuple(next(iter(example.values())).shape), "float32", batch_axis)]
        return module, {"dim": o.dim, "width": width, "pooling": o.pooling, "normalize": o.normalize,
                        "nested": nested}
