"""Dolphin: a long context read by a small encoder, handed to the main decoder as K memory vectors.

Dolphin (arXiv 2408.15518) treats a long context as a modality of its own. A small encoder LM
reads the context followed by ``K`` trainable memory tokens; its last hidden states at those
``K`` positions go through a projector into the main decoder's embedding space and replace
``K`` placeholder positions of the decoder's prompt. The decoder then pays for ``K`` tokens
instead of the whole context, in prefill time and in KV cache::

    encoder:  [context tokens ...] [m_1 ... m_K]  ->  h_1 ... h_K   (last hidden states)
    decoder:  [P_1 ... P_K] [question tokens]      P_i := projector(h_i)

:class:`Dolphin` holds the pair, the memory embeddings and the projector (``linear``, as in the
paper, or that Linear plus a GELU MLP), optionally LoRA adapters in the encoder; both LMs stay frozen.
Two departures from the paper, both measured (BENCHMARKS.md): the projector's Linear starts as a
least-squares "lens" from the encoder's hidden state at a context token to the decoder's embedding
of that token, and by default (``readout=tail``) each slot reads, beside its memory token's state,
the encoder's state at the i-th of the context's last K positions. With frozen LMs and minutes of
CPU training the memory tokens' own states hardly depend on the context (they attend mostly to the
first token), so the paper's readout (``readout=memory``) learns a domain prompt, not the document.
With the offline models here the encoder is a truncated copy of the decoder (its first
``encoder_layers`` blocks, sharing the token embeddings), which is what makes the compressed
path cheaper: the encoder reads the context through 4 of SmolLM2's 30 blocks.

Batches: contexts are left-padded (with a mask and positions counted from each row's first real
token) so the memory tokens end every row; prompts are left-padded too, so generation (transformers'
``generate`` on ``inputs_embeds``, with the decoder's KV cache) appends to every row at once.
The reference code re-runs both models for every generated token and mishandles batches > 1;
here the context is encoded once and each new token costs one cached decoder step.

Tokenizers: the context goes through the encoder's tokenizer and the question and training
targets through the decoder's, so a pair with different vocabularies works (training windows
are cut in decoder tokens and re-tokenized as text for the encoder). Token-id inputs are checked
against the vocabulary of the side that takes them.

The options are :class:`~edgesmith.dolphin.options.DolphinOptions`; training (:mod:`edgesmith.dolphin.train`),
the folder on disk (:mod:`edgesmith.dolphin.folder`) and export (:mod:`edgesmith.dolphin.export`) build on
this module.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from edgesmith.errors import BadInputError, UsageError
from edgesmith.dolphin.backbone import base_model, causal_lm, describe_pair, fingerprint, truncated_body
from edgesmith.dolphin.lora import add_lora
from edgesmith.dolphin.options import DolphinOptions
from edgesmith.dolphin.projector import Projector
from edgesmith.dolphin.tokens import PLACEHOLDER, check_ids, left_pad, separator

FORMAT = "edgesmith-dolphin/1"


class Dolphin(torch.nn.Module):
    """An encoder LM, K memory embeddings, a projector and a decoder LM (see the module docstring).

    Args:
        decoder: The main causal LM variant (its module holds the transformers model).
        options: :class:`DolphinOptions` (None: the defaults).
        encoder: The encoder causal LM variant; None: a truncated copy of the decoder.
        decoder_tokenizer / encoder_tokenizer: Their tokenizers (None where only token ids are used).
    """

    def __init__(self, decoder, options: DolphinOptions | None = None, encoder=None, decoder_tokenizer=None,
                 encoder_tokenizer=None):
        super().__init__()
        options = options or DolphinOptions()
        options.check()
        self.options = options
        dec_lm = causal_lm(decoder, "decoder")
        enc_variant = encoder if encoder is not None else decoder
        enc_lm = causal_lm(enc_variant, "encoder")
        enc_body = base_model(enc_lm, "encoder")
        layers = options.encoder_layers or len(enc_body.layers)
        self.decoder = dec_lm
        self.encoder = truncated_body(enc_body, layers, copy_blocks=options.lora > 0)
        self.pair = {"encoder": fingerprint(enc_variant, enc_lm, layers),
                     "decoder": fingerprint(decoder, dec_lm)}
        self.decoder_tokenizer = decoder_tokenizer
        self.encoder_tokenizer = encoder_tokenizer if encoder is not None else decoder_tokenizer
        generator = torch.Generator().manual_seed(options.seed)
        enc_dim, dec_dim = enc_lm.config.hidden_size, dec_lm.config.hidden_size
        table = enc_body.embed_tokens.weight.detach()
        pick = torch.randint(0, table.shape[0], (options.memory,), generator=generator)
        self.memory = torch.nn.Parameter(table[pick].clone())  # start as real token embeddings
        reads = 2 * enc_dim if options.readout == "tail" else enc_dim
        self.projector = Projector(reads, dec_dim, options.projector, generator)
        dec_rms = float(dec_lm.get_input_embeddings().weight.detach().float().pow(2).mean().sqrt())
        with torch.no_grad():  # outputs start at the decoder embeddings' scale (until fit_lens)
            self.projector.lens.weight.mul_(dec_rms)
        self.lora_layers = add_lora(self.encoder, options.lora, generator) if options.lora else 0
        for p in list(self.decoder.parameters()) + list(self.encoder.parameters()):
            p.requires_grad_(False)
        for name, p in self.trainable():
            p.requires_grad_(True)

    @property
    def window(self) -> int:
        """The most context tokens the encoder reads (its position limit less the K memory tokens)."""
        return int(self.encoder.config.max_position_embeddings) - self.options.memory

    def trainable(self) -> list:
        """``[(name, parameter)]`` that training changes: memory, projector and any LoRA adapters."""
        return [(n, p) for n, p in self.named_parameters()
                if n == "memory" or n.startswith("projector.") or ".lora_" in n]

    def trained_state(self) -> dict:
        """The trained tensors (what a Dolphin file stores)."""
        return {n: p.detach().clone() for n, p in self.trainable()}

    @torch.no_grad()
    def fit_lens(self, contexts, ridge: float = 1e-3) -> float:
        """Fit the projector's Linear so it maps the encoder's hidden state at each context position to the
        decoder's embedding of that token (ridge least squares); returns the fit's relative residual.

        Args:
            contexts: int64 ``(B, N)`` contexts in encoder ids that are also decoder ids (shared vocabulary).
        """
        dim = self.encoder.config.hidden_size
        hidden = self.encoder(input_ids=contexts, use_cache=False).last_hidden_state.reshape(-1, dim)
        target = self.decoder.get_input_embeddings()(contexts).reshape(len(hidden), -1)
        return self.projector.fit_lens(hidden, target, ridge)

    # ------------------------------------------------------------------ encoder side
    def compress(self, ids, mask=None):
        """Memories of contexts: ``(B, K, decoder hidden)``.

        Args:
            ids: int64 ``(B, N)`` encoder token ids, left-padded where rows differ in length.
            mask: ``(B, N)`` 1 for real tokens (None: all real).

        Raises:
            BadInputError: A context longer than the encoder's window, or an id outside its vocabulary.
        """
        length = ids.shape[1]
        if length > self.window:
            raise BadInputError(f"dolphin: a context of {length} tokens is longer than the encoder's window of "
                                f"{self.window} (position limit {self.encoder.config.max_position_embeddings} "
                                f"less {self.options.memory} memory tokens)",
                                hint=f"give at most {self.window} context tokens, or split the document")
        check_ids(ids, self.encoder.config.vocab_size, "context", "encoder")
        return self.encode(ids, torch.ones_like(ids) if mask is None else mask.to(ids.dtype))

    def encode(self, ids, mask):
        """:meth:`compress` without the checks (what an export traces): ``ids`` and ``mask`` ``(B, N)``."""
        batch = ids.shape[0]
        k = self.options.memory
        embeds = torch.cat([self.encoder.embed_tokens(ids),
                            self.memory[None].expand(batch, -1, -1).to(self.encoder.embed_tokens.weight.dtype)], 1)
        full = torch.cat([mask, torch.ones(batch, k, dtype=mask.dtype)], 1)
        positions = (full.cumsum(-1) - 1).clamp(min=0)
        hidden = self.encoder(inputs_embeds=embeds, attention_mask=full, position_ids=positions,
                              use_cache=False).last_hidden_state
        states = hidden[:, -k:]
        if self.options.readout == "tail":  # beside memory slot i: the i-th of the last K context positions
            context = torch.nn.functional.pad(hidden[:, :-k] * mask[..., None].to(hidden.dtype), (0, 0, k, 0))
            states = torch.cat([states, context[:, -k:]], -1)
        return self.projector(states)

    # ------------------------------------------------------------------ decoder side
    def splice(self, embeds, placeholders, memories):
        """Put memory vectors at the placeholder positions of prompt embeddings.

        Args:
            embeds: ``(B, T, D)`` prompt embeddings.
            placeholders: ``(B, T)`` bool, exactly K True per row (in order: the first takes memory 1).
            memories: ``(B, K, D)``.

        Returns:
            A new ``(B, T, D)`` tensor: ``memories[b, i]`` at row b's i-th placeholder, ``embeds`` elsewhere.

        Raises:
            BadInputError: A row whose placeholder count is not K, or mismatched shapes.
        """
        k = memories.shape[1]
        counts = placeholders.sum(-1)
        if memories.shape[0] != embeds.shape[0] or memories.shape[-1] != embeds.shape[-1] or \
                bool((counts != k).any()):
            raise BadInputError(f"dolphin: splice needs {k} placeholder positions per row and memories of shape "
                                f"(B, K, {embeds.shape[-1]}); got counts {counts.tolist()} and "
                                f"{tuple(memories.shape)}")
        where = placeholders[..., None].expand_as(embeds)
        return embeds.masked_scatter(where, memories.to(embeds.dtype))

    def prompt(self, memories, prompts: list[list[int]]):
        """Left-padded decoder prompts ``[P_1..P_K] + prompt tokens`` with the memories spliced in.

        Returns:
            ``(inputs_embeds (B, T, D), attention_mask (B, T))``.
        """
        k = memories.shape[1]
        rows = [[PLACEHOLDER] * k + list(p) for p in prompts]
        ids, mask = left_pad(rows)
        return self.embed_prompt(ids, memories), mask

    def embed_prompt(self, ids, memories):
        """Decoder embeddings of ``ids`` where :data:`PLACEHOLDER` marks the memory positions."""
        placeholders = ids == PLACEHOLDER
        tokens = ids.masked_fill(placeholders, 0)
        check_ids(tokens, self.decoder.config.vocab_size, "prompt", "decoder")
        return self.splice(self.decoder.get_input_embeddings()(tokens), placeholders, memories)

    def decoder_logits(self, embeds, mask=None, keep: int = 0):
        """Decoder logits for prompt embeddings (``keep``: only the last this many positions; 0: all)."""
        mask = torch.ones(embeds.shape[:2], dtype=torch.long) if mask is None else mask
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return self.decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                            use_cache=False, logits_to_keep=keep).logits

    def continuation_logits(self, memories, targets):
        """Logits predicting each of ``targets`` (``(B, M)`` decoder ids) from ``memories`` and the targets
        before it: ``(B, M, vocab)``."""
        check_ids(targets, self.decoder.config.vocab_size, "target", "decoder")
        embeds = torch.cat([memories, self.decoder.get_input_embeddings()(targets)], 1)
        logits = self.decoder_logits(embeds)
        k = memories.shape[1]
        return logits[:, k - 1:k - 1 + targets.shape[1]]

    @torch.no_grad()
    def generate(self, memories, prompts: list[list[int]], max_new_tokens: int = 48) -> list[list[int]]:
        """Greedy continuations of ``[memories] + prompt`` per row (the decoder's KV cache, one step per token)."""
        embeds, mask = self.prompt(memories, prompts)
        tok = self.decoder_tokenizer
        stop = getattr(tok, "eos_token_id", None) if tok is not None else None
        pad = stop if stop is not None else 0
        out = self.decoder.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                                    do_sample=False, pad_token_id=pad, eos_token_id=stop)
        rows = []
        for row in out.tolist():
            if stop is not None and stop in row:
                row = row[:row.index(stop)]
            rows.append(row)
        return rows

    @torch.no_grad()
    def answer(self, context: str, question: str, max_new_tokens: int = 48, full: bool = False) -> dict[str, Any]:
        """Answer ``question`` about ``context`` (text in, text out), greedily, with the decoder's KV cache.

        Args:
            full: Put the whole context in the decoder's prompt instead of its memories (to compare).

        Returns:
            ``{"answer", "mode", "context_tokens", "prompt_tokens", "new_tokens"}``.

        Raises:
            UsageError: The pair has no tokenizers.
            BadInputError: A context longer than the encoder's window (compressed mode).
        """
        tok = self.decoder_tokenizer
        if tok is None or self.encoder_tokenizer is None:
            raise UsageError("dolphin: this pair was built without tokenizers; give token ids")
        prompt = tok(question, add_special_tokens=False)["input_ids"]
        if full:
            context_ids = tok(context, add_special_tokens=False)["input_ids"]
            ids = [separator(self)] + context_ids + prompt
            out = self.decoder.generate(input_ids=torch.tensor([ids]), max_new_tokens=max_new_tokens,
                                        do_sample=False, pad_token_id=tok.eos_token_id,
                                        eos_token_id=tok.eos_token_id)[0, len(ids):].tolist()
            if tok.eos_token_id in out:
                out = out[:out.index(tok.eos_token_id)]
            prompt_tokens = len(ids)
        else:
            context_ids = self.encoder_tokenizer(context, add_special_tokens=False)["input_ids"]
            out = self.generate(self.compress(torch.tensor([context_ids])), [prompt], max_new_tokens)[0]
            prompt_tokens = self.options.memory + len(prompt)
        return {"answer": tok.decode(out, skip_special_tokens=True), "mode": "full" if full else "compressed",
                "context_tokens": len(context_ids), "prompt_tokens": prompt_tokens, "new_tokens": len(out)}

    def ask(self, context: str, question: str, max_new_tokens: int = 48) -> str:
        """Answer ``question`` about ``context`` through its memories (text in, text out)."""
        return self.answer(context, question, max_new_tokens)["answer"]

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path, report: dict[str, Any] | None = None) -> Path:
        """Write the trained tensors, options and pair to ``path`` (atomically)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"format": FORMAT, "pair": self.pair, "options": dataclasses.asdict(self.options),
                    "weights": self.trained_state(), "report": json.loads(json.dumps(report or {}))}, tmp)
        tmp.replace(path)
        return path

    def load_trained(self, path: str | Path) -> dict[str, Any]:
        """Load a Dolphin file made for this pair; returns its record (options, report).

        Raises:
            BadInputError: Not a Dolphin file, or one trained for another encoder/decoder pair (names both).
        """
        state = read_file(path)
        if state["pair"] != self.pair:
            raise BadInputError(f"dolphin: {path} was trained for another encoder/decoder pair: "
                                f"{describe_pair(state['pair'])}; this one is {describe_pair(self.pair)}",
                                hint="load the models it was trained with, or train this pair")
        mine = dict(self.trainable())
        weights = state["weights"]
        if set(weights) != set(mine) or any(weights[n].shape != mine[n].shape for n in mine):
            raise BadInputError(f"dolphin: {path} holds other tensors than this pair's "
                                f"(memory/projector/lora options differ: {state['options']})",
                                hint="build the pair with the options the file records")
        with torch.no_grad():
            for name, p in mine.items():
                p.copy_(weights[name])
        return state


def read_file(path: str | Path) -> dict[str, Any]:
    """The content of a Dolphin file (``weights_only``); raises :class:`BadInputError` for anything else."""
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is bad input
        raise BadInputError(f"cannot read Dolphin file {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise BadInputError(f"{path} is not a Dolphin file", hint="train one with edgesmith dolphin train")
    return state
