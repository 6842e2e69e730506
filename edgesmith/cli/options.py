"""Options and steps shared by the commands that take a MODEL (``export``, ``optimize``, ``inspect``)."""

from __future__ import annotations

import click

from edgesmith.cli.progressbar import progress


def model_options(f):
    """Add the options every command that takes a MODEL shares (``--input``, ``--weights``, ``--gguf``, ``--seq-len``).

    Args:
        f: The command's callback.

    Returns:
        The callback with the options added.
    """
    f = click.option("--seq-len", type=int, help="Example sequence length for language models.")(f)
    f = click.option("--gguf", metavar="FILE", help="GGUF file inside the checkpoint directory.")(f)
    f = click.option("--weights", type=click.Path(dir_okay=False),
                     help="Weights for a py: factory (safetensors, or torch file loaded weights_only).")(f)
    f = click.option("--input", "inputs", multiple=True, metavar="NAME:SHAPE[:DTYPE]",
                     help="Input spec, e.g. image:1x3x224x224:float32 (repeat per input).")(f)
    return f


def load_model(model, inputs, weights, gguf, seq_len):
    """Load a MODEL reference with the :func:`model_options`, showing progress.

    Returns:
        The variant :func:`edgesmith.api.load` returns.
    """
    from edgesmith import api as es

    with progress(f"loading {model}"):
        return es.load(model, inputs=inputs, weights=weights, gguf=gguf, seq_len=seq_len)
