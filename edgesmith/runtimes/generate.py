"""Text generation from a language-model bundle, over any runtime that has it, without torch.

A generation bundle (a decoder LM exported with its KV cache, see the manifest's
``generation`` record) holds one graph for the prefill and the decode steps, the
tokenizer (``tokenizer.json``, read by the ``tokenizers`` library), the chat template
(rendered with Jinja2 in a sandbox, as transformers does), end-of-sequence ids and the
source's generation defaults. :class:`Generator` runs the prompt once (the prefill,
which gives the first token: time to first token), then one step per new token, each
reading the cache the previous one returned. On ONNX Runtime the cache stays in the
runtime's own buffers between steps (IO binding), on MLX as MLX arrays; other runtimes
pass numpy arrays.

Sampling: ``temperature`` 0 is greedy (the argmax, what parity compares); above 0 the
logits are divided by it, cut to the ``top_k`` most likely and the smallest set whose
probability reaches ``top_p``, and drawn with a seeded numpy generator.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgesmith.bundle import Bundle
from edgesmith.errors import BadInputError, RuntimeUnavailableError, UsageError
from edgesmith.runtimes.kv import empty_cache, step_feeds


@dataclasses.dataclass
class Sampling:
    """How the next token is chosen, and when generation stops.

    Attributes:
        max_new_tokens: New tokens at most.
        temperature: 0 for greedy decoding; higher is more random.
        top_k: Sample among the k most likely tokens (0: all).
        top_p: Sample among the most likely tokens whose probabilities add up to p (1: all).
        seed: Seed of the sampler (the same seed, prompt and bundle give the same text).
        stop: Strings that end the generation (the text is cut before them).
        ignore_eos: Go on past end-of-sequence tokens (fixed-length runs: parity, benchmarks).
    """

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    @classmethod
    def resolve(cls, defaults: dict[str, Any], **given) -> "Sampling":
        """Sampling from the values given (None: not given), else the bundle's generation defaults.

        The source model's defaults apply only where it samples (``do_sample``); a model
        without them decodes greedily, as transformers' ``generate`` does.
        """
        values = {k: v for k, v in given.items() if v is not None}
        if defaults.get("do_sample") and "temperature" not in values:
            for key in ("temperature", "top_k", "top_p"):
                if key in defaults and key not in values:
                    values[key] = defaults[key]
            values.setdefault("temperature", 1.0)
        if "max_new_tokens" not in values and defaults.get("max_new_tokens"):
            values["max_new_tokens"] = int(defaults["max_new_tokens"])
        values["stop"] = tuple(values.get("stop", ()))
        sampling = cls(**values)
        sampling.check()
        return sampling

    def check(self) -> None:
        """Raise :class:`UsageError` naming the first value out of range."""
        if self.max_new_tokens < 1:
            raise UsageError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not self.temperature >= 0:  # also NaN
            raise UsageError(f"temperature must be 0 (greedy) or more, got {self.temperature}",
                             hint="use 0 for greedy decoding, 0.7 for varied text")
        if self.top_k < 0:
            raise UsageError(f"top_k must be 0 (all tokens) or more, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise UsageError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclasses.dataclass
class Generation:
    """One generation's text, tokens and timings.

    Attributes:
        text: The new text (without the prompt, cut before a stop string).
        prompt_tokens: Token ids of the prompt (after the chat template, if any).
        tokens: The new token ids.
        stop_reason: ``eos`` (an end-of-sequence token), ``stop`` (a stop string), ``length``
            (``max_new_tokens``) or ``context`` (the bundle's maximum context).
        ttft_s: Seconds from the prompt's tokens to the first new token (the prefill).
        decode_s: Seconds of the decode steps after the first token.
        decode_steps: Decode steps run (one per token after the first, the last one's EOS included).
        timing: ``measured``, or ``emulated`` where a stand-in ran the bundle (the Core ML evaluator
            off macOS): its times are then not the target's speed.
    """

    text: str
    prompt_tokens: list[int]
    tokens: list[int]
    stop_reason: str
    ttft_s: float
    decode_s: float
    decode_steps: int = 0
    timing: str = "measured"

    @property
    def ms_per_token(self) -> float | None:
        """Mean time of a decode step (None when the first token ended it)."""
        return 1000 * self.decode_s / self.decode_steps if self.decode_steps else None

    @property
    def tokens_per_s(self) -> float | None:
        """Decode tokens per second after the first token."""
        ms = self.ms_per_token
        return 1000 / ms if ms else None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``generate --json``)."""
        return {"text": self.text, "prompt_tokens": len(self.prompt_tokens), "tokens": self.tokens,
                "new_tokens": len(self.tokens), "stop_reason": self.stop_reason,
                "ttft_ms": round(1000 * self.ttft_s, 3),
                "ms_per_token": None if self.ms_per_token is None else round(self.ms_per_token, 3),
                "tokens_per_s": None if self.tokens_per_s is None else round(self.tokens_per_s, 2),
                "timing": self.timing}


def generation_record(bundle: Bundle) -> dict[str, Any]:
    """The manifest's ``generation`` record, or a clear refusal for a bundle that cannot generate."""
    record = bundle.manifest.generation
    why = [n for n in (bundle.manifest.options or {}).get("notes", []) if n.startswith("prefill-only bundle")]
    if not record and why:  # the exporter said why this model's bundle holds only its prefill graph
        raise BadInputError(f"{bundle.path.name} is not a generation bundle: {why[0]}",
                            hint="`edgesmith run` runs its prefill graph on given inputs")
    if not record:
        what = "a language model exported before generation bundles" if bundle.manifest.task == "lm" else \
            f"a {bundle.manifest.task} model"
        raise BadInputError(f"{bundle.path.name} is not a generation bundle: it holds {what}",
                            hint="export a decoder LM (task lm) to onnx, mlx or coreml to get one; "
                                 "`edgesmith run` runs any bundle on given inputs")
    return record


class Generator:
    """Generates text with a generation bundle.

    Args:
        bundle: A generation bundle (path or opened).
        threads: Runtime threads (0: the runtime's default).
        binding: Keep the KV cache in the runtime's buffers between steps where the runtime
            can (ONNX Runtime's IO binding, MLX arrays); false passes numpy arrays every step.

    Raises:
        BadInputError: The bundle is not a generation bundle, or fails verification.
        RuntimeUnavailableError: Its runtime, or the ``tokenizers`` library, is missing here.
    """

    def __init__(self, bundle: str | Path | Bundle, threads: int = 0, binding: bool = True):
        from edgesmith.runtimes import open_runtime

        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
        self.record = generation_record(self.bundle)
        self.runtime = open_runtime(self.bundle, threads)
        self.threads = threads
        self.binding = binding
        self.tokenizer = None
        if self.record.get("tokenizer"):
            try:
                from tokenizers import Tokenizer
            except ImportError:
                raise RuntimeUnavailableError("the tokenizers library is not installed (edgesmith's core install "
                                              "has it)", hint="pip install tokenizers") from None
            self.tokenizer = Tokenizer.from_file(str(self.bundle.file(self.record["tokenizer"])))
        self.max_context = self.record.get("max_context")
        self.eos = set(self.record.get("eos_token_ids") or [])

    # -- prompts -------------------------------------------------------------------------------

    def encode(self, prompt: str, chat: bool = False, template: str | None = None, system: str | None = None) -> list[int]:
        """Token ids of a prompt, through the chat template when ``chat`` (or a ``template`` is given).

        Raises:
            BadInputError: The bundle has no tokenizer, no chat template, or the template fails.
        """
        if self.tokenizer is None:
            raise BadInputError(f"{self.bundle.path.name} has no tokenizer (its source model came without one)",
                                hint="give token ids instead: --ids 1,2,3 (api.generate(bundle, ids=[...]))")
        if chat or template:
            prompt = self.render_chat([*([{"role": "system", "content": system}] if system else []),
                                       {"role": "user", "content": prompt}], template)
            return self.tokenizer.encode(prompt, add_special_tokens=False).ids
        # a Dolphin decoder's prompt follows its memories: no BOS, as the pair's own ask tokenizes it
        return self.tokenizer.encode(prompt, add_special_tokens=not self.record.get("memories")).ids

    def render_chat(self, messages: list[dict[str, str]], template: str | None = None) -> str:
        """The chat template applied to ``messages``, ending with the assistant's turn opened."""
        template = template or self.record.get("chat_template")
        if not template:
            raise BadInputError(f"{self.bundle.path.name} has no chat template (its tokenizer did not ship one)",
                                hint="give one with --chat-template FILE (a Jinja template), or prompt without --chat")
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise jinja2.exceptions.TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
        env.globals["raise_exception"] = raise_exception
        special = self.record.get("special_tokens", {})
        try:
            return env.from_string(template).render(messages=messages, add_generation_prompt=True,
                                                    bos_token=special.get("bos", ""), eos_token=special.get("eos", ""))
        except jinja2.exceptions.TemplateError as exc:
            raise BadInputError(f"the chat template of {self.bundle.path.name} cannot be used: {exc}",
                                hint="give a Jinja chat template with --chat-template FILE") from None

    def decode(self, ids: list[int]) -> str:
        """Text of token ids (special tokens left out); ids joined by spaces without a tokenizer."""
        if self.tokenizer is None:
            return " ".join(map(str, ids))
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # -- generation ----------------------------------------------------------------------------

    def generate(self, prompt_ids: list[int], sampling: Sampling | None = None,
                 on_text: Callable[[str], None] | None = None, memories: np.ndarray | None = None,
                 context: str | None = None, encoder: str | Path | None = None) -> Generation:
        """Generate after ``prompt_ids``, calling ``on_text`` with each new piece of text as it comes.

        Args:
            memories: ``(1, K, D)`` vectors that go before the prompt, for a bundle whose record has
                ``memories`` (a Dolphin decoder; :meth:`compress` makes them from a context).
            context, encoder: The context's text instead of ``memories``, and the encoder bundle
                that compresses it (see :meth:`compress`).

        Raises:
            BadInputError: The prompt is empty or does not fit the bundle's maximum context; memories
                missing, not taken, or of the wrong shape.
            UsageError: A sampling value out of range.
        """
        sampling = sampling or Sampling()
        sampling.check()
        prompt_ids = [int(t) for t in prompt_ids]
        if not prompt_ids:
            raise BadInputError("the prompt is empty: there is nothing to continue",
                                hint="give some text (or token ids)")
        if context is not None:
            memories = self.compress(context, encoder=encoder)
        extra, later = self._memory_feeds(memories)
        slots = extra["memories"].shape[1] if extra else 0
        if self.max_context and len(prompt_ids) + slots >= self.max_context:
            raise BadInputError(f"the prompt is {len(prompt_ids)} tokens; {self.bundle.path.name} takes at most "
                                f"{self.max_context} (its maximum context) including the new tokens",
                                hint="shorten the prompt")
        rng = np.random.default_rng(sampling.seed)
        capacity = len(prompt_ids) + slots + sampling.max_new_tokens
        stepper = self._stepper(min(capacity, self.max_context) if self.max_context else capacity)
        tokens: list[int] = []
        shown = ""
        reason = "length"
        steps = 0
        start = time.perf_counter()
        logits = _step(stepper, np.asarray([prompt_ids], np.int64), 0, extra)
        first = None
        position = len(prompt_ids) + slots  # the memories are cached positions too
        while True:
            token = choose(logits, sampling, rng)
            first = first or time.perf_counter()
            if token in self.eos and not sampling.ignore_eos:
                reason = "eos"
                break
            tokens.append(token)
            if on_text or sampling.stop:  # the text so far: only where someone reads it every step
                text = self.decode(tokens)
                cut = _stop_at(text, sampling.stop)
                if cut is not None:
                    text, reason = text[:cut], "stop"
                if on_text and not text.endswith("\ufffd") and len(text) > len(shown):  # not mid-character
                    on_text(text[len(shown):])
                    shown = text
            if reason == "stop" or len(tokens) >= sampling.max_new_tokens:
                break
            if self.max_context and position >= self.max_context:
                reason = "context"
                break
            logits = _step(stepper, np.asarray([[token]], np.int64), position, later)
            position += 1
            steps += 1
        end = time.perf_counter()
        text = self.decode(tokens)
        cut = _stop_at(text, sampling.stop)
        text = text[:cut] if cut is not None else text
        if on_text and len(text) > len(shown):
            on_text(text[len(shown):])
        return Generation(text=text, prompt_tokens=prompt_ids, tokens=tokens, stop_reason=reason,
                          ttft_s=first - start, decode_s=end - first, decode_steps=steps,
                          timing=getattr(self.runtime, "timing", "measured"))

    def compress(self, context: str | None = None, ids: list[int] | None = None,
                 encoder: str | Path | None = None) -> np.ndarray:
        """The memories ``(1, K, D)`` of a context (text, or encoder token ids), by the pair's encoder bundle.

        Args:
            context: The context's text (tokenized with the context tokenizer the bundle holds).
            ids: Encoder token ids instead of text.
            encoder: The encoder bundle; None: the one the record names, beside this bundle.

        Raises:
            BadInputError: Not a Dolphin decoder bundle; no encoder bundle there; an empty context or
                one longer than the encoder's window; text without a context tokenizer.
        """
        spec = self.record.get("memories")
        if spec is None:
            raise BadInputError(f"{self.bundle.path.name} takes no context (it is not a Dolphin decoder bundle)",
                                hint="export a Dolphin pair with `edgesmith dolphin export`")
        path = Path(encoder) if encoder else self.bundle.path.parent / (spec.get("encoder_bundle") or "")
        if not encoder and not spec.get("encoder_bundle") or not path.is_dir():
            raise BadInputError(f"no encoder bundle for {self.bundle.path.name} at {path}",
                                hint="give it with --encoder (api.generate(..., encoder=PATH)): the "
                                     "NAME-encoder bundle `edgesmith dolphin export` wrote beside the decoder")
        if ids is None:
            if not spec.get("context_tokenizer"):
                raise BadInputError(f"{self.bundle.path.name} has no context tokenizer (the pair came without one)",
                                    hint="give the context as encoder token ids")
            try:
                from tokenizers import Tokenizer
            except ImportError:
                raise missing_extra("tokenizers", "runtime") from None
            tokenizer = Tokenizer.from_file(str(self.bundle.file(spec["context_tokenizer"])))
            ids = tokenizer.encode(context or "", add_special_tokens=False).ids
        if not ids or len(ids) > spec["window"]:
            raise BadInputError(f"a context of {len(ids)} tokens; the encoder reads 1 to {spec['window']}",
                                hint="give some context, or split a long document")
        from edgesmith.runtimes import open_runtime

        runtime = open_runtime(Bundle.open(path), self.threads)
        return runtime.run({"input_ids": np.asarray([ids], np.int64)})["memories"]

    def _memory_feeds(self, memories) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The prefill's and the decode steps' extra feeds: the memories, then none of them (empty)."""
        spec = self.record.get("memories")
        if spec is None:
            if memories is not None:
                raise BadInputError(f"{self.bundle.path.name} takes no memories (it is not a Dolphin decoder)",
                                    hint="generate without a context")
            return {}, {}
        if memories is None:
            raise BadInputError(f"{self.bundle.path.name} is a Dolphin decoder: it needs the memories of a context",
                                hint="give --context FILE (api.generate(..., context=TEXT)); the encoder bundle "
                                     f"{spec.get('encoder_bundle') or 'NAME-encoder'} compresses it")
        memories = np.asarray(memories, np.float32)
        if memories.shape != (1, spec["slots"], spec["dim"]):
            raise BadInputError(f"memories of shape {memories.shape}; {self.bundle.path.name} takes "
                                f"(1, {spec['slots']}, {spec['dim']})", hint="make them with its encoder bundle")
        return {"memories": memories}, {"memories": np.zeros((1, 0, spec["dim"]), np.float32)}

    def _stepper(self, capacity: int | None = None):
        stateful = "state" in self.record.get("cache", {})  # the cache lives in the model: no numpy form
        make = getattr(self.runtime, "kv_stepper", None) if self.binding or stateful else None
        return (make(self.record, capacity) if make else None) or NumpyStepper(self.runtime, self.record)


def _step(stepper, ids: np.ndarray, start: int, extra: dict[str, np.ndarray]) -> np.ndarray:
    # only a bundle with memories passes extra feeds: a runtime's stepper without them still serves the rest
    return stepper.step(ids, start, extra) if extra else stepper.step(ids, start)


def _stop_at(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None


def choose(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> int:
    """The next token from the last position's logits (``(vocab,)``)."""
    if sampling.temperature == 0:
        return int(np.argmax(logits))
    scores = logits.astype(np.float64) / sampling.temperature
    if sampling.top_k and sampling.top_k < scores.size:
        kth = np.partition(scores, -sampling.top_k)[-sampling.top_k]
        scores = np.where(scores >= kth, scores, -np.inf)
    probs = np.exp(scores - scores.max())
    probs /= probs.sum()
    if sampling.top_p < 1:
        order = np.argsort(-probs)
        keep = np.cumsum(probs[order]) - probs[order] < sampling.top_p  # the smallest set reaching top_p
        mask = np.zeros_like(probs, bool)
        mask[order[keep]] = True
        probs = np.where(mask, probs, 0)
        probs /= probs.sum()
    return int(rng.choice(probs.size, p=probs))


class NumpyStepper:
    """Steps any runtime with numpy feeds: the presents it returns are the next step's pasts."""

    def __init__(self, runtime, record: dict[str, Any]):
        self.runtime = runtime
        self.record = record
        self.cache = empty_cache(record)

    def step(self, ids: np.ndarray, start: int, extra: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Run one step (``extra``: more feeds, a Dolphin decoder's memories); return the last logits ``(vocab,)``."""
        out = self.runtime.run({**step_feeds(ids, start), **(extra or {}), **self.cache})
        self.cache = {name: out["present" + name[4:]] for name in self.cache}
        return out["logits"][0, -1]
