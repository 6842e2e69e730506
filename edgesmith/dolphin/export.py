"""A Dolphin pair as two bundles: the encoder side (context -> memories) and the decoder side.

``NAME-encoder`` maps context ids to ``memories`` (the encoder, memory tokens and projector; any
LoRA adapters folded into their Linears); ``NAME-decoder`` maps ``memories`` + prompt ids to
``logits`` (the splice and the decoder). Run the first once per document and feed its output to
the second with each question. Each bundle is parity-checked against the pair. On onnx, the
decoder bundle is a generation bundle with a KV cache that takes the memories in its prefill
(:mod:`edgesmith.dolphin.generation`): ``edgesmith generate DECODER --context FILE --prompt Q``
runs both bundles, without torch.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from edgesmith.dolphin.generation import step_variant
from edgesmith.dolphin.lora import merge_lora
from edgesmith.export import get_exporter
from edgesmith.models.variant import Variant
from edgesmith.specs import TensorSpec


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
    export_copy = copy.copy(dolphin)
    export_copy._modules = dict(dolphin._modules)
    export_copy.encoder = copy.deepcopy(dolphin.encoder) if dolphin.lora_layers else dolphin.encoder
    merge_lora(export_copy.encoder)
    context = np.asarray([context], dtype=np.int64)
    prompt = np.asarray([prompt], dtype=np.int64)
    with torch.no_grad():
        memories = export_copy.compress(torch.from_numpy(context)).numpy()
    k, dim = memories.shape[1:]
    vocab = dolphin.decoder.config.vocab_size
    source = {"reference": reference, "format": "dolphin", "sha256": "", "pair": dolphin.pair}
    dyn = {0: "batch", 1: "sequence"}
    encoder = Variant(name=f"{name}-encoder", module=Compress(export_copy).eval(),
                      inputs=[TensorSpec("input_ids", context.shape, "int64", dyn)],
                      outputs=[TensorSpec("memories", (1, k, dim), "float32", {0: "batch"})],
                      example={"input_ids": context}, source=dict(source), task="encoder")
    encoded = get_exporter(target).export(encoder, out, force=force)
    if target != "onnx":  # the generation loop feeds memories through ONNX Runtime's stepper only (mlx: not yet)
        decoder = Variant(name=f"{name}-decoder", module=Answer(export_copy).eval(),
                          inputs=[TensorSpec("memories", (1, k, dim), "float32", {0: "batch"}),
                                  TensorSpec("input_ids", prompt.shape, "int64", dyn)],
                          outputs=[TensorSpec("logits", (1, k + prompt.shape[1], vocab), "float32", dyn)],
                          example={"memories": memories, "input_ids": prompt}, source=dict(source), task="lm")
    else:
        decoder = step_variant(export_copy, memories, prompt, f"{name}-decoder", source, encoded[0].path.name)
    return [encoded, get_exporter(target).export(decoder, out, force=force)]
