"""``digits-mlp``: a three-layer perceptron for the scikit-learn 8x8 digits.

The zoo's fully connected model, the kind FPGA trigger and sensing systems run:
flatten, linear(64->64)-ReLU, linear(64->32)-ReLU, linear(32->10). Trained offline
by ``scripts/train_digits_mlp.py`` on the same split as ``digits-cnn``.

Input ``image``: float32 ``(B, 1, 8, 8)``, pixel values divided by 16 into
``[0, 1]`` (the same input as ``digits-cnn``). Output: logits ``(B, 10)``.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

WEIGHTS_PATH = Path(__file__).parent / "weights" / "digits_mlp.safetensors"
CARD_PATH = Path(__file__).parent / "weights" / "digits_mlp.json"


def build(pretrained: bool = True) -> nn.Sequential:
    """Build the model in eval mode, with the committed weights unless ``pretrained`` is false."""
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 64), nn.ReLU(),
        nn.Linear(64, 32), nn.ReLU(),
        nn.Linear(32, 10),
    )
    if pretrained:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(WEIGHTS_PATH)), strict=True)
    return model.eval()
