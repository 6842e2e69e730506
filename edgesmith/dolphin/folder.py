"""A trained Dolphin pair on disk: train into a folder, load it back, export it as two bundles.

A Dolphin folder holds ``dolphin.pt`` (the trained memory, projector and adapters, the options and
the pair's identity: see :meth:`Dolphin.save`), ``dolphin.json`` (the encoder and decoder MODEL
references, the options and the training report, for people and scripts) and ``checkpoint/last.pt``
while training. Loading a folder loads the two models from their references and refuses a file
trained for another pair. Exporting a folder writes its pair as two bundles
(:func:`edgesmith.dolphin.export.export_pair`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

from edgesmith.errors import BadInputError, OutputExistsError
from edgesmith.dolphin.export import export_pair
from edgesmith.dolphin.model import Dolphin, read_file
from edgesmith.dolphin.options import DolphinOptions

WEIGHTS = "dolphin.pt"
RECORD = "dolphin.json"


def build(decoder: str, options: DolphinOptions | None = None, encoder: str | None = None):
    """Load the decoder (and encoder) MODEL references and pair them (untrained)."""
    from edgesmith.models.loader import load_model
    from edgesmith.models.variant_folder import is_variant_folder

    if any(is_variant_folder(ref) for ref in (decoder, encoder) if ref):
        import edgesmith.optimize  # noqa: F401  (its passes register the module classes a variant folder names)
    dec = load_model(decoder)
    enc = load_model(encoder) if encoder else None
    return Dolphin(dec, options or DolphinOptions(), enc, _tokenizer(dec), _tokenizer(enc) if enc else None)


def _tokenizer(variant):
    from edgesmith.models.hf import tokenizer_for

    return tokenizer_for(variant) if variant.source.get("tokenizer") else None


def train_folder(decoder: str, out: str | Path, options: DolphinOptions | None = None, encoder: str | None = None,
                 resume: bool = False, force: bool = False,
                 progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Build a pair, train it on ``options.text`` and write the Dolphin folder ``out``.

    Returns:
        The record written to ``dolphin.json`` (references, options, pair, training report).

    Raises:
        OutputExistsError: ``out`` already holds a trained pair and neither ``force`` nor ``resume``.
    """
    from edgesmith.eval.lm import text_source
    from edgesmith.dolphin.train import train, training_windows

    out = Path(out)
    if (out / WEIGHTS).exists() and not (force or resume):
        raise OutputExistsError(f"{out} already holds a trained Dolphin pair", hint="add --force to train it again")
    options = options or DolphinOptions()
    options.check()
    dolphin = build(decoder, options, encoder)
    windows = training_windows(dolphin, text_source(options.text), options.context + options.continuation)
    report = train(dolphin, windows, str(out / "checkpoint"), resume=resume, force=force, progress=progress)
    record = {"format": "edgesmith-dolphin/1", "decoder": decoder, "encoder": encoder,
              "options": dataclasses.asdict(options), "pair": dolphin.pair, "training": report,
              "windows": len(windows)}
    dolphin.save(out / WEIGHTS, record)
    tmp = out / (RECORD + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(out / RECORD)
    return record


def load_folder(folder: str | Path):
    """The trained pair in a Dolphin folder (its models loaded from the references it records).

    Raises:
        BadInputError: No Dolphin folder there, or its file does not fit the models the references load now.
    """
    folder = Path(folder)
    if not (folder / WEIGHTS).is_file():
        raise BadInputError(f"{folder} holds no trained Dolphin pair ({WEIGHTS} is missing)",
                            hint="train one with: edgesmith dolphin train MODEL -o DIR")
    state = read_file(folder / WEIGHTS)
    record = state.get("report") or {}
    if "decoder" not in record:
        raise BadInputError(f"{folder / WEIGHTS} does not record its models", hint="train it again")
    dolphin = build(record["decoder"], DolphinOptions(**state["options"]), record.get("encoder"))
    dolphin.load_trained(folder / WEIGHTS)
    dolphin.record = record
    return dolphin.eval()


def export_folder(folder: str | Path, out: str | Path, target: str = "onnx", name: str | None = None,
                  force: bool = False):
    """Export a Dolphin folder's pair as two bundles (see :func:`~edgesmith.dolphin.export.export_pair`).

    The example context is the first 64 tokens of the evaluation text's test split, the example
    prompt a short question.

    Returns:
        ``[(bundle, parity), (bundle, parity)]``: encoder, then decoder.

    Raises:
        BadInputError: No Dolphin folder there (see :func:`load_folder`).
    """
    from edgesmith.data.datasets import eval_text

    dolphin = load_folder(folder)
    context = dolphin.encoder_tokenizer(eval_text("test"), add_special_tokens=False)["input_ids"][:64]
    prompt = dolphin.decoder_tokenizer("What does it say?", add_special_tokens=False)["input_ids"]
    stem = name or f"{str(dolphin.record['decoder']).split(':')[-1].split('/')[-1]}-dolphin"
    return export_pair(dolphin, out, context, prompt, stem, target=target, force=force,
                       reference=f"dolphin:{Path(folder).name}")
