"""Train the zoo model ``digits-mlp`` and write its weights and card.

Run from the repository root::

    python scripts/train_digits_mlp.py

Same data, split and seed handling as ``train_digits_cnn.py`` (no shift augmentation: a perceptron
has no translation invariance to learn from it);
deterministic, a few seconds on a 2-core CPU. Writes ``weights/digits_mlp.safetensors``
and ``weights/digits_mlp.json`` next to ``edgesmith/models/zoo/digits_mlp.py``.
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

from edgesmith.models import digits_mlp  # noqa: E402
from edgesmith.data.datasets import digits_split  # noqa: E402
from train_digits_cnn import accuracy, shift  # noqa: E402

SEED = 0
EPOCHS = 60
BATCH_SIZE = 64
LEARNING_RATE = 3e-3


def train(model_module, name: str, epochs: int, make_optimizer, augment: bool = False) -> None:
    """Train ``model_module.build()`` on the digits split, evaluate, write its weights and card.

    Args:
        model_module: The zoo model's module (``build``, ``WEIGHTS_PATH``, ``CARD_PATH``).
        name: The zoo name (``digits-mlp``); the card names ``scripts/train_<name>.py`` as its command.
        epochs: Passes over the training split.
        make_optimizer: ``make_optimizer(parameters) -> torch.optim.Optimizer``.
        augment: One-pixel random shifts (``train_digits_cnn.shift``) of every batch.
    """
    from safetensors.torch import save_file

    start = time.perf_counter()
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    x_train, x_test, y_train, y_test = digits_split()
    images, labels = torch.from_numpy(x_train), torch.from_numpy(y_train)
    generator = torch.Generator().manual_seed(SEED)
    model = model_module.build(pretrained=False).train()
    optimizer = make_optimizer(model.parameters())
    steps = epochs * -(-len(images) // BATCH_SIZE)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=LEARNING_RATE, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(images), generator=generator)
        total = 0.0
        for begin in range(0, len(order), BATCH_SIZE):
            index = order[begin: begin + BATCH_SIZE]
            batch = shift(images[index], generator) if augment else images[index]
            loss = loss_fn(model(batch), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(index)
        if (epoch + 1) % 20 == 0:
            print(f"epoch {epoch + 1:3d}  loss {total / len(order):.4f}")
    test_accuracy = accuracy(model, x_test, y_test)
    print(f"test accuracy {test_accuracy:.4f} on {len(y_test)} held-out digits ({time.perf_counter() - start:.1f} s)")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(model_module.WEIGHTS_PATH))
    card = {
        "name": name,
        "dataset": "scikit-learn digits (8x8)",
        "split": {"method": "sklearn.model_selection.train_test_split, stratified", "test_size": 0.2,
                  "random_state": 0, "train_samples": len(y_train)},
        "seed": SEED,
        "epochs": epochs,
        "params": sum(p.numel() for p in model.parameters()),
        "test_accuracy": round(test_accuracy, 4),
        "test_samples": len(y_test),
        "command": f"python scripts/train_{name.replace('-', '_')}.py",
    }
    model_module.CARD_PATH.write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote {model_module.WEIGHTS_PATH.name}, {model_module.CARD_PATH.name}")


def main() -> None:
    """Train, evaluate on the held-out split, write the weights and the card."""
    train(digits_mlp, "digits-mlp", EPOCHS,
          lambda params: torch.optim.Adam(params, lr=LEARNING_RATE, weight_decay=1e-4))


if __name__ == "__main__":
    main()
