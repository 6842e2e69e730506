"""``digits-cnn``: a small conv-BN-ReLU classifier for the scikit-learn 8x8 digits.

The zoo's smallest real model. It is trained offline by
``scripts/train_digits_cnn.py`` on the UCI handwritten digits set shipped with
scikit-learn (Alpaydin & Kaynak, 1998), so every pass and exporter can be
checked against a measured accuracy rather than random weights. Each conv has
a bias *and* a following BatchNorm with trained running statistics, which makes
it a real test of conv-BN folding (Jacob et al., 2018, "Quantization and
Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference").

Input ``image``: float32 ``(B, 1, 8, 8)``, pixel values divided by 16 into
``[0, 1]``. Output: logits ``(B, 10)``. The batch dimension is never hard-coded,
so the model exports with a dynamic batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

WEIGHTS_PATH = Path(__file__).parent / "weights" / "digits_cnn.safetensors"
SAMPLES_PATH = Path(__file__).parent / "weights" / "digits_cnn_samples.npz"
CARD_PATH = Path(__file__).parent / "weights" / "digits_cnn.json"


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    # bias=True on purpose: BN folding must handle a non-zero conv bias.
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=True),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    ]


class DigitsCNN(nn.Module):
    """Conv-BN-ReLU feature extractor and a dense head for 8x8 digit images.

    ``features``: conv(1->16)-BN-ReLU, conv(16->32)-BN-ReLU, maxpool 2,
    conv(32->64)-BN-ReLU, global average pool. ``head``: flatten,
    linear(64->64)-BN-ReLU, linear(64->10).
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn_relu(1, 16),
            *_conv_bn_relu(16, 32),
            nn.MaxPool2d(2),
            *_conv_bn_relu(32, 64),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, 64),
            nn.BatchNorm1d(64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Classify a batch of digit images.

        Args:
            image: Float32 tensor ``(B, 1, 8, 8)`` with values in ``[0, 1]``.

        Returns:
            Logits, float32 ``(B, 10)``.
        """
        return self.head(self.features(image))


def build(pretrained: bool = True) -> DigitsCNN:
    """Build the model in eval mode.

    Args:
        pretrained: Load the committed weights from ``WEIGHTS_PATH``; otherwise
            keep PyTorch's random initialisation.

    Returns:
        The model, in eval mode.
    """
    model = DigitsCNN()
    if pretrained:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(WEIGHTS_PATH)), strict=True)
    return model.eval()


def example_inputs(batch: int = 1) -> dict[str, np.ndarray]:
    """Real held-out test digits, for parity checks and calibration.

    Args:
        batch: How many images; the stored samples are cycled when ``batch``
            exceeds their count.

    Returns:
        ``{"image": float32 array (batch, 1, 8, 8)}``.
    """
    with np.load(SAMPLES_PATH) as samples:
        images = samples["images"]
    index = np.arange(batch) % len(images)
    return {"image": np.ascontiguousarray(images[index], dtype=np.float32)}
