"""LoRA adapters on the projections of a Dolphin encoder, and folding them back for export.

The decoder stays frozen; with ``lora=R`` the encoder's q/k/v/o and gate/up/down projections each
get a rank-R adapter (Hu et al., arXiv 2106.09685) that trains beside the memory tokens and projector.
"""

from __future__ import annotations

import copy

import torch

from edgesmith.errors import BadInputError

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALinear(torch.nn.Module):
    """``base(x) + (x A^T) B^T * alpha / rank``: ``B`` starts at zero, so training starts from the base layer.

    Args:
        base: The Linear to adapt (kept as it is).
        rank: The adapter's rank.
        generator: Seeds ``A``.
    """

    def __init__(self, base, rank: int, generator):
        super().__init__()
        self.base, self.rank, self.scale = base, rank, 2.0  # alpha = 2 * rank
        self.lora_a = torch.nn.Parameter(torch.randn(rank, base.in_features, generator=generator)
                                         / base.in_features ** 0.5)
        self.lora_b = torch.nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x):
        return self.base(x) + (x @ self.lora_a.T) @ self.lora_b.T * self.scale

    def merged(self):
        """The plain Linear with the adapter folded in (for export)."""
        out = copy.deepcopy(self.base)
        with torch.no_grad():
            out.weight += (self.lora_b @ self.lora_a) * self.scale
        return out


def add_lora(body, rank: int, generator) -> int:
    """Wrap the projections of every block of ``body`` in LoRA adapters; returns how many were wrapped.

    Raises:
        BadInputError: The blocks have none of the projections adapters go on.
    """
    count = 0
    for block in body.layers:
        for parent in list(block.modules()):
            for name, child in list(parent.named_children()):
                if name in LORA_TARGETS and isinstance(child, torch.nn.Linear):
                    setattr(parent, name, LoRALinear(child, rank, generator))
                    count += 1
    if not count:
        raise BadInputError("dolphin: lora found no q/k/v/o/gate/up/down projections in the encoder",
                            hint="use lora=0 for this encoder")
    return count


def merge_lora(module) -> None:
    """Fold every LoRA adapter under ``module`` into its Linear, in place."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                setattr(parent, name, child.merged())
