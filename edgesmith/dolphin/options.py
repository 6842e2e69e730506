"""How a Dolphin pair (arXiv 2408.15518) is built and trained: :class:`DolphinOptions`.

Plain data with no torch, so the command line derives its ``dolphin train`` flags from it
without loading the build stack.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from edgesmith.errors import UsageError
from edgesmith.options import option

_PROJECTORS = ("linear", "mlp")
_READOUTS = ("memory", "tail")


@dataclasses.dataclass
class DolphinOptions:
    """How a Dolphin pair is built and trained (each field's help is its ``--help`` line)."""

    memory: int = option(
        32,
        "K, the memory tokens (and decoder positions) a context is compressed into (at least 1).",
    )
    encoder_layers: int = option(
        4,
        "With no separate encoder, the encoder is the decoder's first this many blocks (a truncated copy "
        "sharing the token embeddings); with one, its first this many (0: all).",
    )
    projector: str = option(
        "mlp",
        "linear (one Linear, the paper's) or mlp (that Linear plus a GELU MLP beside it, starting at "
        "zero). Before training, the Linear is fitted by least squares to map the encoder's hidden state "
        "at a context position to the decoder's embedding of that token (a \"lens\"), so the decoder "
        "reads token-like vectors from the first step.",
    )
    readout: str = option(
        "tail",
        "What each of the K slots reads from the encoder: memory (the last hidden state at its memory "
        "token, the paper's) or tail (that state beside the hidden state of the i-th of the context's "
        "last K positions; the projector reads both). With frozen LMs and minutes of training the memory "
        "tokens' states barely depend on the context (they attend mostly to the first token), so tail "
        "gives each slot the encoder's view of a recent token from the start.",
    )
    lora: int = option(0, "Rank of LoRA adapters on the encoder's projections (0: the encoder stays frozen).")
    context: int = option(256, "Context tokens of a training window (decoder tokens).")
    continuation: int = option(64, "Tokens the decoder continues from the context's memory in the second stage.")
    reconstruct: int = option(128, "Context tokens the decoder restores from their memory in the first stage.")
    reconstruct_steps: int = option(40, "Steps of the first stage (restore the context from its memory).")
    steps: int = option(160, "Steps of the second stage (continue a document from the memory of its prefix).")
    batch: int = option(4, "Windows per step.")
    lr: float = option(2e-3, "Peak AdamW learning rate (warm-up over a tenth of all steps, cosine down to a tenth).")
    seed: int = option(0, "Seeds the initialisation and the batches.")
    save_every: int = option(20, "Steps between checkpoints.")
    text: str = option(
        "devils-dictionary",
        "Training text: devils-dictionary (the evaluation text's train split) or a UTF-8 file.",
    )

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> DolphinOptions:
        """Options from ``{field name: value}`` (the others keep their defaults).

        Raises:
            UsageError: A name that is not a field (lists the known ones).
        """
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(fields) - set(known))
        if unknown:
            raise UsageError(f"dolphin: unknown option {unknown[0]!r}", hint=f"known: {', '.join(known)}")
        return cls(**fields)

    def check(self) -> None:
        """Raise :class:`UsageError` naming the first option out of range."""
        if self.memory < 1:
            raise UsageError(f"dolphin: memory={self.memory}: K must be at least 1 memory token",
                             hint="the paper uses 32")
        if self.encoder_layers < 0:
            raise UsageError(f"dolphin: encoder_layers={self.encoder_layers} is negative", hint="0 keeps every block")
        if self.projector not in _PROJECTORS:
            raise UsageError(f"dolphin: unknown projector {self.projector!r}", hint=f"use {' or '.join(_PROJECTORS)}")
        if self.readout not in _READOUTS:
            raise UsageError(f"dolphin: unknown readout {self.readout!r}", hint=f"use {' or '.join(_READOUTS)}")
        if self.lora < 0:
            raise UsageError(f"dolphin: lora={self.lora} is negative", hint="0 trains no adapters")
        for name in ("context", "continuation", "reconstruct", "batch", "save_every"):
            if getattr(self, name) < 1:
                raise UsageError(f"dolphin: {name}={getattr(self, name)} must be at least 1")
        if self.reconstruct > self.context:
            raise UsageError(f"dolphin: reconstruct={self.reconstruct} is longer than context={self.context}")
        if self.steps < 0 or self.reconstruct_steps < 0 or self.steps + self.reconstruct_steps < 1:
            raise UsageError("dolphin: give steps >= 0 and reconstruct_steps >= 0, at least one step in all")
        if self.lr <= 0:
            raise UsageError(f"dolphin: lr={self.lr} must be positive")
