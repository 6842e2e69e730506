"""Built-in models, referenced as ``zoo:NAME`` (``edgesmith models list``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from edgesmith.registry import Registry


@dataclass(frozen=True)
class ZooEntry:
    """A built-in model.

    Attributes:
        name: The ``zoo:`` name.
        summary: One line for ``models list``.
        task: ``classifier``, ``encoder``, ``lm`` or ``generic``.
        load: Returns the variant (pretrained where weights ship).
    """

    name: str
    summary: str
    task: str
    load: Callable[[], object]


ZOO: Registry[ZooEntry] = Registry("zoo model", "edgesmith.zoo")


def _digits_cnn():
    import torch

    from edgesmith.bundle import sha256_file
    from edgesmith.models import digits_cnn
    from edgesmith.models.variant import Variant
    from edgesmith.specs import TensorSpec

    module = digits_cnn.build(pretrained=True)
    example = digits_cnn.example_inputs(batch=4)
    with torch.no_grad():
        out = module(torch.from_numpy(example["image"]))
    return Variant(
        name="digits-cnn",
        module=module,
        inputs=[TensorSpec("image", example["image"].shape, "float32", {0: "batch"})],
        outputs=[TensorSpec("logits", tuple(out.shape), "float32", {0: "batch"})],
        example=example,
        source={"reference": "zoo:digits-cnn", "format": "zoo",
                "sha256": sha256_file(digits_cnn.WEIGHTS_PATH)},
        task="classifier",
    )


ZOO.register("digits-cnn")(ZooEntry(
    "digits-cnn",
    "conv-BN-ReLU CNN for 8x8 scikit-learn digits (28k params, 99.4% test accuracy)",
    "classifier",
    _digits_cnn,
))
