"""Train the zoo model ``digits-vit`` and write its weights and card.

Run from the repository root::

    python scripts/train_digits_vit.py

The loop, data, split and seed handling of ``train_digits_mlp.py``, plus the one-pixel shift
augmentation of ``train_digits_cnn.py`` (a transformer of 16 tokens has no translation invariance
of its own) and AdamW with weight decay; 200 epochs; deterministic, about 25 s on an idle 2-core CPU.
Writes ``weights/digits_vit.safetensors`` and ``weights/digits_vit.json`` next to
``edgesmith/models/zoo/digits_vit.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from edgesmith.models import digits_vit  # noqa: E402
from train_digits_mlp import LEARNING_RATE, train  # noqa: E402

EPOCHS = 200


if __name__ == "__main__":
    train(digits_vit, "digits-vit", EPOCHS,
          lambda params: torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=0.05), augment=True)
