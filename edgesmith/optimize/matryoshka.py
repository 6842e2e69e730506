"""Matryoshka embeddings: truncate a sentence encoder's embedding to its first ``dim`` coordinates.

Matryoshka Representation Learning (Kusupati et al., 2022) trains an encoder so that
every prefix of its embedding is itself a good embedding; the deployed model then
returns only the first ``m`` coordinates, re-normalised, which cuts index memory and
similarity cost by ``d / m``. This pass makes the deployable model::

    before:  tokens -> encoder -> hidden (B, T, d)
    after:   tokens -> encoder -> pool over tokens (mean under the mask, or CLS) -> [:, :m] -> L2-normalise -> (B, m)

It is exact for what it claims (the first ``m`` coordinates of the pooled embedding,
re-normalised); how much retrieval quality survives depends on whether the encoder
was trained nested. An encoder without a recorded Matryoshka training gets a note.
"""

from __future__ import annotations

import dataclasses

import torch

from edgesmith.errors import BadInputError, UsageError
from edgesmith.optimize.base import PASSES, Pass
from edgesmith.options import option

POOLINGS = ("mean", "cls", "none")


@dataclasses.dataclass
class MatryoshkaOptions:
    """Options of the ``matryoshka`` pass.

    Each field's help is its ``help`` metadata (:func:`edgesmith.options.option`).
    """

    dim: int = option(128, "Embedding coordinates kept (the first ``dim``), at least 1 and at most the model's width.")
    pooling: str = option("mean", "``mean`` (over the tokens the ``attention_mask`` input keeps; "
                                  "sentence-transformers' default, all-MiniLM-L6-v2's), ``cls`` (the first token), "
                                  "or ``none`` (the model already returns one embedding per input).")
    normalize: bool = option(True, "L2-normalise the truncated embedding (cosine similarity becomes a dot product).")
    train: str = option("", "Make the encoder nested first, on these sentences: ``devils-dictionary`` (the "
                            "evaluation text's ``train`` sentences, apart from the ones figures are measured on) or "
                            "a text file with one sentence per line. The encoder learns, for every nested size in "
                            "``dims``, to reproduce the pairwise cosine similarities of its own original full "
                            "embedding (distillation from itself).")
    dims: str = option("", "Nested sizes trained, ``/``-separated (default: ``dim``, doubling up to the full width).")
    epochs: int = option(3, "Passes over the sentences.")
    lr: float = option(5e-5, "Adam learning rate.")
    batch: int = option(32, "Sentences per step.")

    def __post_init__(self):
        if self.dim < 1:
            raise UsageError(f"pass 'matryoshka': dim={self.dim} must be at least 1")
        if self.pooling not in POOLINGS:
            raise UsageError(f"pass 'matryoshka': pooling={self.pooling!r} is not one of {', '.join(POOLINGS)}")
        if self.epochs < 1 or self.batch < 2 or not self.lr > 0:
            raise UsageError("pass 'matryoshka': epochs >= 1, batch >= 2 and lr > 0 are needed")
        for item in filter(None, self.dims.split("/")):
            if not item.isdigit() or int(item) < 1:
                raise UsageError(f"pass 'matryoshka': dims entry {item!r} is not a positive integer",
                                 hint="write dims=64/128/384")


class Truncated(torch.nn.Module):
    """An encoder whose output is pooled, cut to ``dim`` coordinates and (optionally) re-normalised."""

    def __init__(self, encoder, dim: int, pooling: str, normalize: bool, mask_index: int | None):
        super().__init__()
        self.encoder = encoder
        self.dim = dim
        self.pooling = pooling
        self.normalize = normalize
        self.mask_index = mask_index

    def forward(self, *args):
        hidden = self.encoder(*args)
        if self.pooling == "mean":
            mask = args[self.mask_index].unsqueeze(-1).to(hidden.dtype)
            emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        elif self.pooling == "cls":
            emb = hidden[:, 0]
        else:
            emb = hidden
        emb = emb[..., : self.dim]
        return _unit(emb) if self.normalize else emb


@PASSES.register
class Matryoshka(Pass):
    """Pool, truncate to ``dim`` coordinates and re-normalise a sentence encoder's embedding (Matryoshka)."""

    name = "matryoshka"
    Options = MatryoshkaOptions

    def _apply_impl(self, variant, module):
        from edgesmith.models.variant import run_module
        from edgesmith.specs import TensorSpec

        o = self.options
        names = [s.name for s in variant.inputs]
        out = variant.outputs[0]
        rank = 3 if o.pooling != "none" else 2
        if len(variant.outputs) != 1 or len(out.shape) != rank:
            raise BadInputError(f"{self.owner} needs one output of rank {rank} "
                                f"({'batch, tokens, width' if rank == 3 else 'batch, width'}); {variant.name} "
                                f"returns {', '.join(s.describe() for s in variant.outputs)}",
                                hint="use pooling=none for a model that returns one embedding per input")
        width = out.shape[-1]
        if o.dim > width:
            raise self.refuse(f"dim={o.dim} exceeds {variant.name}'s embedding width {width}")
        if o.pooling == "mean" and "attention_mask" not in names:
            raise self.refuse(f"mean pooling needs an attention_mask input; {variant.name} takes {', '.join(names)}",
                              hint="use pooling=cls or none")
        mask_index = names.index("attention_mask") if o.pooling == "mean" else None
        encoder, report = variant.module, {}
        if o.train:
            dims = [int(d) for d in o.dims.split("/") if d] or _doubling(o.dim, width)
            if max(dims) > width:
                raise self.refuse(f"dims {dims} exceed the embedding width {width}")
            encoder, report = self._train(variant, dims, mask_index)
        module = Truncated(encoder, o.dim, o.pooling, o.normalize, mask_index).eval()
        nested = bool(o.train) or any(p.get("name") == "matryoshka" and p.get("params", {}).get("train")
                                      for p in variant.passes)
        if not nested and o.dim < width:
            self.notes.append(f"matryoshka: {variant.name} was not trained nested; its first {o.dim} of "
                                 f"{width} coordinates may keep less than a Matryoshka-trained model's would")
        batch_axis = {0: out.dynamic[0]} if 0 in out.dynamic else {}
        example = run_module(module, variant.inputs, None, variant.example)
        self.outputs = [TensorSpec("sentence_embedding", tuple(next(iter(example.values())).shape), "float32", batch_axis)]
        return module, {"dim": o.dim, "width": width, "pooling": o.pooling, "normalize": o.normalize,
                        "nested": nested, **report}

    def _train(self, variant, dims: list[int], mask_index: int | None):
        """Fine-tune a copy of the encoder so that every prefix in ``dims`` keeps its full embedding's similarities."""
        import copy

        from edgesmith.models.hf import tokenizer_for

        o = self.options
        sentences = _sentences(o.train)
        if len(sentences) < o.batch:
            raise self.refuse(f"{len(sentences)} training sentences, fewer than one batch of {o.batch}",
                              hint="give more sentences or a smaller batch")
        tok = tokenizer_for(variant)
        width = variant.outputs[0].shape[-1]
        teacher = Truncated(variant.module, width, o.pooling, True, mask_index).eval()
        student = Truncated(copy.deepcopy(variant.module), width, o.pooling, False, mask_index).eval()
        params = [p for p in student.parameters() if p.is_floating_point()]
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=o.lr)
        order = torch.Generator().manual_seed(0)
        steps = o.epochs * (len(sentences) // o.batch)
        losses, step = [], 0
        for _ in range(o.epochs):
            perm = torch.randperm(len(sentences), generator=order).tolist()
            for start in range(0, len(perm) - o.batch + 1, o.batch):
                args = _token_args(tok, [sentences[i] for i in perm[start:start + o.batch]], variant.inputs)
                with torch.no_grad():
                    target = teacher(*args)
                    target_sim = target @ target.T
                emb = student(*args)
                loss = sum(torch.nn.functional.mse_loss(_unit(emb[:, :m]) @ _unit(emb[:, :m]).T, target_sim)
                           for m in dims) + torch.nn.functional.mse_loss(_unit(emb), target)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
                step += 1
                if self.progress:
                    self.progress("matryoshka training", step, steps)
        for p in params:
            p.requires_grad_(False)
        head = sum(losses[:5]) / len(losses[:5])
        tail = sum(losses[-5:]) / len(losses[-5:])
        return student.encoder.eval(), {"train": {"sentences": len(sentences), "dims": dims, "steps": step,
                                                  "loss_first": head, "loss_last": tail}}


def _unit(x):
    """F.normalize's arithmetic, in ops every target translates (MLX has no vector-norm op)."""
    return x / (x * x).sum(-1, keepdim=True).sqrt().clamp(min=1e-12)


def _doubling(dim: int, width: int) -> list[int]:
    dims = []
    while dim < width:
        dims.append(dim)
        dim *= 2
    return [*dims, width]


def _sentences(spec: str) -> list[str]:
    from edgesmith.data.datasets import EVAL_TEXT, eval_sentences

    if spec == EVAL_TEXT:
        return eval_sentences("train")
    try:
        with open(spec, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"pass 'matryoshka': cannot read training sentences {spec}: {exc}",
                            hint=f"give a text file (one sentence per line) or {EVAL_TEXT}") from None


def _token_args(tok, sentences: list[str], inputs) -> list:
    enc = tok(sentences, return_tensors="pt", padding=True, truncation=True, max_length=128)
    return [enc[s.name] if s.name in enc else torch.zeros_like(enc["input_ids"]) for s in inputs]
