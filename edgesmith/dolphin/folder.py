"""A trained Dolphin pair on disk: train into a folder, load it back, export it as two bundles.

A Dolphin folder holds ``dolphin.pt`` (the trained memory, projector and adapters, the options and
the pair's identity: see :meth:`Dolphin.save`), ``dolphin.json`` (the encoder and decoder MODEL
references, the options and the training report, for people and scripts) and ``checkpoint/last.pt``
while training. Loading a folder loads the two models from their references and refuses a file
trained for another pair.

Export writes two bundles with parity each: ``NAME-encoder`` (context ids -> ``memories``, the
encoder, memory tokens and projector; any LoRA adapters folded into their Linears) and
``NAME-decoder`` (``memories`` + prompt ids -> ``logits``, the splice and the decoder). Run the
first once per document and feed its output to the second with each question.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgesmith.errors import BadInputError, OutputExistsError
from edgesmith.dolphin.model import Dolphin, DolphinOptions, merge_lora, read_file

WEIGHTS = "dolphin.pt"
RECORD = "dolphin.json"


def build(decoder: str, options: DolphinOptions | None = None, encoder: str | None = None):
    """Load the decoder (and encoder) MODEL references and pair them (untrained)."""
    from edgesmith import api

    dec = api.load(decoder)
    enc = api.load(encoder) if encoder else None
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


def _modules():
    import torch

    class Compress(torch.nn.Module):
        """Context ids -> memories (the encoder side of a Dolphin pair)."""

        def __init__(self, dolphin):
            super().__init__()
            self.dolphin = dolphin

        def forward(self, input_ids):
            return self.dolphin.encode(input_ids, torch.ones_like(input_ids))

    class Answer(torch.nn.Module):
        """Memories + prompt ids -> logits (the decoder side: ``[memories] + prompt``)."""

        def __init__(self, dolphin):
            super().__init__()
            self.dolphin = dolphin

        def forward(self, memories, input_ids):
            embeds = torch.cat([memories, self.dolphin.decoder.get_input_embeddings()(input_ids)], 1)
            return self.dolphin.decoder(inputs_embeds=embeds, use_cache=False).logits

    return Compress, Answer


def export_folder(folder: str | Path, out: str | Path, target: str = "onnx", name: str | None = None,
                  force: bool = False):
    """Export a Dolphin folder's pair as two bundles (see :func:`export_pair`); the example context is the
    first 64 tokens of the evaluation text's test split, the example prompt a short question."""
    from edgesmith.data.datasets import eval_text

    dolphin = load_folder(folder)
    context = dolphin.encoder_tokenizer(eval_text("test"), add_special_tokens=False)["input_ids"][:64]
    prompt = dolphin.decoder_tokenizer("What does it say?", add_special_tokens=False)["input_ids"]
    stem = name or f"{str(dolphin.record['decoder']).split(':')[-1].split('/')[-1]}-dolphin"
    return export_pair(dolphin, out, context, prompt, stem, target=target, force=force,
                       reference=f"dolphin:{Path(folder).name}")


def export_pair(dolphin, out: str | Path, context: list[int], prompt: list[int], name: str, target: str = "onnx",
                force: bool = False, reference: str = "dolphin"):
    """Export a pair as ``NAME-encoder`` and ``NAME-decoder`` bundles, each parity-checked.

    Args:
        dolphin: The (trained) pair; left unchanged (LoRA adapters are folded into a copy).
        out: Bundles go to ``OUT/NAME-encoder.TARGET`` and ``OUT/NAME-decoder.TARGET``.
        context: Example context (encoder ids; golden data, the sequence axis stays dynamic).
        prompt: Example prompt (decoder ids).
        name: Bundle name stem.
        target: Export target (``onnx``; others where they take the graphs).
        force: Overwrite existing bundles.
        reference: Recorded as the bundles' source.

    Returns:
        ``[(bundle, parity), (bundle, parity)]``: encoder, then decoder.
    """
    import torch

    from edgesmith import api
    from edgesmith.models.variant import Variant
    from edgesmith.specs import TensorSpec

    export_copy = copy.copy(dolphin)
    export_copy._modules = dict(dolphin._modules)
    export_copy.encoder = copy.deepcopy(dolphin.encoder) if dolphin.lora_layers else dolphin.encoder
    merge_lora(export_copy.encoder)
    compress, answer = _modules()
    context = np.asarray([context], dtype=np.int64)
    prompt = np.asarray([prompt], dtype=np.int64)
    with torch.no_grad():
        memories = export_copy.compress(torch.from_numpy(context)).numpy()
    k, dim = memories.shape[1:]
    vocab = dolphin.decoder.config.vocab_size
    source = {"reference": reference, "format": "dolphin", "sha256": "", "pair": dolphin.pair}
    dyn = {0: "batch", 1: "sequence"}
    encoder = Variant(name=f"{name}-encoder", module=compress(export_copy).eval(),
                      inputs=[TensorSpec("input_ids", context.shape, "int64", dyn)],
                      outputs=[TensorSpec("memories", (1, k, dim), "float32", {0: "batch"})],
                      example={"input_ids": context}, source=dict(source), task="encoder")
    decoder = Variant(name=f"{name}-decoder", module=answer(export_copy).eval(),
                      inputs=[TensorSpec("memories", (1, k, dim), "float32", {0: "batch"}),
                              TensorSpec("input_ids", prompt.shape, "int64", dyn)],
                      outputs=[TensorSpec("logits", (1, k + prompt.shape[1], vocab), "float32", dyn)],
                      example={"memories": memories, "input_ids": prompt}, source=dict(source), task="lm")
    return [api.export(v, out, target=target, force=force) for v in (encoder, decoder)]
