"""Train the zoo model ``digits-cnn`` and write its weights, samples and card.

Run from the repository root::

    python scripts/train_digits_cnn.py

Data: scikit-learn's bundled 8x8 digits (no download), pixels divided by 16,
a stratified 80/20 train/test split with ``random_state=0``. Training is seeded
and uses deterministic algorithms, so a rerun on the same software rewrites the
same files. Takes a few seconds on a 2-core CPU.

Writes, next to ``edgesmith/models/zoo/digits_cnn.py``:
    weights/digits_cnn.safetensors   the state dict (BN running stats included)
    weights/digits_cnn_samples.npz   64 held-out test images and their labels
    weights/digits_cnn.json          the model card
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

# The script is run as a file, so the repository root is not on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgesmith.models.zoo.digits_cnn import (  # noqa: E402
    CARD_PATH,
    SAMPLES_PATH,
    WEIGHTS_PATH,
    DigitsCNN,
)

SEED = 0
TEST_SIZE = 0.2
SPLIT_STATE = 0
EPOCHS = 40
BATCH_SIZE = 64
LEARNING_RATE = 3e-3
N_SAMPLES = 64


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The digits split that the tests recompute: ``edgesmith.data.datasets.digits_split``.

    Returns:
        ``(x_train, x_test, y_train, y_test)``; images float32 ``(N, 1, 8, 8)``
        in ``[0, 1]``, labels int64 ``(N,)``.
    """
    from edgesmith.data.datasets import digits_split

    return digits_split()


def shift(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to one pixel in each direction, zero-filled.

    Args:
        images: ``(B, 1, 8, 8)``.
        generator: The seeded generator that picks the offsets.

    Returns:
        The shifted images, same shape.
    """
    padded = nn.functional.pad(images, (1, 1, 1, 1))
    offsets = torch.randint(0, 3, (len(images), 2), generator=generator)
    rows = offsets[:, 0, None] + torch.arange(8)  # (B, 8)
    cols = offsets[:, 1, None] + torch.arange(8)
    batch = torch.arange(len(images))[:, None, None]
    return padded[batch, 0, rows[:, :, None], cols[:, None, :]][:, None]


@torch.no_grad()
def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of ``model`` in eval mode.

    Args:
        model: The classifier.
        images: Float32 ``(N, 1, 8, 8)``.
        labels: Int ``(N,)``.

    Returns:
        The fraction of correct predictions.
    """
    model.eval()
    predictions = model(torch.from_numpy(images)).argmax(dim=1).numpy()
    return float((predictions == labels).mean())


def main() -> None:
    """Train, evaluate on the held-out split, and write the three files."""
    from safetensors.torch import save_file

    start = time.perf_counter()
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)

    x_train, x_test, y_train, y_test = load_split()
    train_images = torch.from_numpy(x_train)
    train_labels = torch.from_numpy(y_train)
    generator = torch.Generator().manual_seed(SEED)

    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    steps_per_epoch = -(-len(train_images) // BATCH_SIZE)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=LEARNING_RATE, total_steps=EPOCHS * steps_per_epoch
    )
    loss_fn = nn.CrossEntropyLoss()

    for epoch in range(EPOCHS):
        model.train()
        order = torch.randperm(len(train_images), generator=generator)
        total = 0.0
        for begin in range(0, len(order), BATCH_SIZE):
            index = order[begin : begin + BATCH_SIZE]
            if len(index) < 2:  # BatchNorm1d needs more than one sample per batch.
                continue
            images = shift(train_images[index], generator)
            loss = loss_fn(model(images), train_labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(index)
        if (epoch + 1) % 10 == 0:
            print(f"epoch {epoch + 1:3d}  loss {total / len(order):.4f}")

    test_accuracy = accuracy(model, x_test, y_test)
    seconds = time.perf_counter() - start
    print(f"test accuracy {test_accuracy:.4f} on {len(y_test)} held-out digits ({seconds:.1f} s)")

    WEIGHTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(WEIGHTS_PATH))
    np.savez_compressed(
        SAMPLES_PATH, images=x_test[:N_SAMPLES], labels=y_test[:N_SAMPLES]
    )
    card = {
        "name": "digits-cnn",
        "dataset": "scikit-learn digits (8x8)",
        "split": {
            "method": "sklearn.model_selection.train_test_split, stratified",
            "test_size": TEST_SIZE,
            "random_state": SPLIT_STATE,
            "train_samples": len(y_train),
        },
        "seed": SEED,
        "epochs": EPOCHS,
        "params": sum(p.numel() for p in model.parameters()),
        "test_accuracy": round(test_accuracy, 4),
        "test_samples": len(y_test),
        "command": "python scripts/train_digits_cnn.py",
    }
    CARD_PATH.write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote {WEIGHTS_PATH.name}, {SAMPLES_PATH.name}, {CARD_PATH.name}")


if __name__ == "__main__":
    main()
