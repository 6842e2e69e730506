"""Train the zoo model ``digits-vit`` and write its weights and card.

Run from the repository root::

    python scripts/train_digits_vit.py

Same data, split, seed handling and one-pixel shift augmentation as ``train_digits_cnn.py``
(a transformer of 16 tokens has no translation invariance of its own); AdamW with weight decay;
deterministic, about a minute on a 2-core CPU. Writes ``weights/digits_vit.safetensors``
and ``weights/digits_vit.json`` next to ``edgesmith/models/digits_vit.py``.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from edgesmith.models import digits_vit  # noqa: E402
from edgesmith.models.datasets import digits_split  # noqa: E402
from train_digits_cnn import accuracy, shift  # noqa: E402

SEED = 0
EPOCHS = 200
BATCH_SIZE = 64
LEARNING_RATE = 3e-3


def main() -> None:
    """Train, evaluate on the held-out split, write the weights and the card."""
    from safetensors.torch import save_file

    start = time.perf_counter()
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    x_train, x_test, y_train, y_test = digits_split()
    images, labels = torch.from_numpy(x_train), torch.from_numpy(y_train)
    generator = torch.Generator().manual_seed(SEED)
    model = digits_vit.build(pretrained=False).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.05)
    steps = EPOCHS * -(-len(images) // BATCH_SIZE)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=LEARNING_RATE, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(EPOCHS):
        model.train()
        order = torch.randperm(len(images), generator=generator)
        total = 0.0
        for begin in range(0, len(order), BATCH_SIZE):
            index = order[begin: begin + BATCH_SIZE]
            loss = loss_fn(model(shift(images[index], generator)), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(index)
        if (epoch + 1) % 20 == 0:
            print(f"epoch {epoch + 1:3d}  loss {total / len(order):.4f}")
    test_accuracy = accuracy(model, x_test, y_test)
    print(f"test accuracy {test_accuracy:.4f} on {len(y_test)} held-out digits ({time.perf_counter() - start:.1f} s)")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(digits_vit.WEIGHTS_PATH))
    card = {
        "name": "digits-vit",
        "dataset": "scikit-learn digits (8x8)",
        "split": {"method": "sklearn.model_selection.train_test_split, stratified", "test_size": 0.2,
                  "random_state": 0, "train_samples": len(y_train)},
        "seed": SEED,
        "epochs": EPOCHS,
        "params": sum(p.numel() for p in model.parameters()),
        "test_accuracy": round(test_accuracy, 4),
        "test_samples": len(y_test),
        "command": "python scripts/train_digits_vit.py",
    }
    digits_vit.CARD_PATH.write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote {digits_vit.WEIGHTS_PATH.name}, {digits_vit.CARD_PATH.name}")


if __name__ == "__main__":
    main()
