"""What the passes that train share: their data, their loss and their loop.

Data (``train=`` / ``data=`` / ``text=`` of a pass) is one of:

- the name of the offline dataset a zoo model was trained on (``sklearn-digits``): its
  training split, labelled, with the test split held out;
- an ``.npz`` holding one array per model input (samples along the first axis), or images
  in the layout of :mod:`edgesmith.data.images` (``x_train``/``y_train``...) for a model
  taking one image;
- an image folder (one sub-folder per class);
- for a model with a tokenizer, text: ``devils-dictionary`` or a UTF-8 file, cut into windows.

The loss (:class:`Objective`) is the next-token cross-entropy for a language model, else
distillation from the original model's outputs (KL of the softmax for ``(N, K)`` logits,
mean squared error otherwise), plus cross-entropy on labels where the data has them. The
loop (:class:`Trainer`) is AdamW with a linear warm-up over a tenth of the steps and a
cosine down to a tenth, a progress callback and an atomic checkpoint every few steps.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgesmith.errors import BadInputError, UsageError
from edgesmith.training.checkpoint import Checkpoint


@dataclass
class TrainSet:
    """Model inputs to train on, labels where known, and a held-out test split where there is one."""

    feeds: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    test_feeds: dict[str, np.ndarray] | None = None
    test_labels: np.ndarray | None = None

    @property
    def samples(self) -> int:
        return len(next(iter(self.feeds.values())))


def feeds_from(variant, source: str, owner: str, seq_len: int, samples: int | None = None,
               what: str = "training", arrays: bool = False) -> dict[str, np.ndarray]:
    """Model inputs from ``source``: an ``.npz`` (one array per input; ``arrays``: whatever its name),
    else text cut into token windows. An empty source gives the variant's example inputs.

    Raises:
        BadInputError: An unreadable file, a missing array, text for a model without a tokenizer.
    """
    if not source:
        return variant.example
    if arrays or source.endswith(".npz"):
        from edgesmith.arrays import load_arrays

        found = load_arrays(source, f"{what} data for {owner}")
        names = [s.name for s in variant.inputs]
        missing = [n for n in names if n not in found]
        if missing:
            raise BadInputError(f"{owner}: {what} data {source} has no array {missing[0]!r}",
                                hint=f"store one array per model input: {', '.join(names)}")
        return {n: found[n][:samples] for n in names}
    from edgesmith.models.hf import tokenizer_for
    from edgesmith.eval.lm import lm_feeds, text_source, token_windows

    return lm_feeds(variant, token_windows(tokenizer_for(variant), text_source(source), seq_len, samples))


def training_set(variant, source: str, owner: str, seq_len: int = 128, samples: int | None = None) -> TrainSet:
    """The :class:`TrainSet` behind ``source`` (see the module docstring for what it may be)."""
    from edgesmith.data.datasets import dataset_split

    if source and source == variant.source.get("dataset"):
        x_train, x_test, y_train, y_test = dataset_split(source)
        return _images(variant, x_train, y_train, x_test, y_test)
    image_input = len(variant.inputs) == 1 and len(variant.inputs[0].shape) == 4
    if image_input and (Path(source).is_dir() or _image_npz(source)):
        from edgesmith.data.images import load_image_data

        data = load_image_data(source, tuple(variant.inputs[0].shape[1:]))
        return _images(variant, data.x_train, data.y_train, data.x_test, data.y_test)
    return TrainSet(feeds_from(variant, source, owner, seq_len, samples))


def objective_for(variant, options, name: str, samples: int | None = None) -> tuple[TrainSet, Objective]:
    """The data and loss of a pass that trains on ``options.train`` (or ``options.data``, as ``--data`` fills it).

    Args:
        variant: The original variant.
        options: The pass options (``train``, ``data``, ``seq_len``, ``batch``, ``label_weight``).
        name: The pass, in messages.
        samples: At most this many text windows.

    Raises:
        UsageError: No training data was given (says how to give it).
        BadInputError: Data the model cannot take, or fewer samples than one batch.
    """
    owner = f"pass {name!r}"
    source = options.train or options.data
    if not source:
        raise UsageError(f"{owner} trains: give train=DATA",
                         hint=f"e.g. -p {name}:train=sklearn-digits for the digits zoo models, an .npz or image "
                              "folder (--data), or train=devils-dictionary for a model with a tokenizer")
    data = training_set(variant, source, owner, options.seq_len, samples)
    objective = Objective(variant, data, owner, options.label_weight)
    if objective.samples < options.batch:
        raise BadInputError(f"{owner}: {objective.samples} training samples, fewer than one batch of {options.batch}",
                            hint="give more training data or a smaller batch")
    return data, objective


def held_out_accuracy(variant, module, data: TrainSet, before: str, after: str) -> dict[str, Any] | None:
    """Held-out accuracy of the original and the converted model, where the data has labelled test samples."""
    if data.test_labels is None:
        return None
    return {before: round(accuracy(variant.module, data.test_feeds, data.test_labels, variant), 4),
            after: round(accuracy(module, data.test_feeds, data.test_labels, variant), 4),
            "samples": len(data.test_labels)}


def _image_npz(source: str) -> bool:
    if not source.endswith(".npz") or not Path(source).is_file():
        return False
    import zipfile

    try:
        with np.load(source, allow_pickle=False) as z:
            return bool({"x_train", "x", "images"} & set(z.files))
    except (OSError, ValueError, EOFError, NotImplementedError, zipfile.BadZipFile):
        return False  # not an image archive; the caller's reader says what is wrong with it


def _images(variant, x_train, y_train, x_test, y_test) -> TrainSet:
    name = variant.inputs[0].name
    return TrainSet({name: x_train}, y_train, {name: x_test}, y_test)


class Objective:
    """Batches of a training set and the loss of a model on one.

    Args:
        variant: The original variant (its inputs name the feeds; its module is the teacher).
        data: Inputs (a :class:`TrainSet`, or a dict of arrays: no labels).
        owner: Named in messages (``pass 'prepbn'``).
        label_weight: Share of the loss given to the labels' cross-entropy when there are labels.

    Raises:
        BadInputError: An array whose shape the input does not take.
    """

    def __init__(self, variant, data, owner: str, label_weight: float = 0.5):
        self.variant, self.owner = variant, owner
        data = data if isinstance(data, TrainSet) else TrainSet(data)
        self.feeds, self.labels, self.label_weight = data.feeds, data.labels, label_weight
        for spec in variant.inputs:
            got = self.feeds[spec.name].shape
            fixed = [(axis, d) for axis, d in enumerate(spec.shape)  # a language model takes any window length
                     if axis > 0 and axis not in spec.dynamic and variant.task != "lm"]
            if len(got) != len(spec.shape) or any(got[axis] != d for axis, d in fixed):
                raise BadInputError(f"{owner}: data for input {spec.name!r} has shape {tuple(got)}; "
                                    f"{variant.name} takes {spec.describe()}",
                                    hint="store one array per input, samples along the first axis")
        self.samples = data.samples
        self.lm = variant.task == "lm"
        names = [s.name for s in variant.inputs]
        self.ids = names.index("input_ids") if "input_ids" in names else 0

    def args(self, index) -> list:
        """The module's positional arguments for samples ``index``."""
        import torch

        return [torch.from_numpy(np.ascontiguousarray(self.feeds[s.name][index])) for s in self.variant.inputs]

    def targets(self, args, index=None) -> dict[str, Any]:
        """What the loss compares with: the next tokens, or the original model's outputs (and labels)."""
        import torch

        from edgesmith.models.variant import flatten_outputs

        if self.lm:
            return {"tokens": args[self.ids][:, 1:]}
        with torch.no_grad():
            outputs = [t.detach() for t in flatten_outputs(self.variant.module(*args))]
        labels = torch.from_numpy(self.labels[index]) if self.labels is not None and index is not None else None
        return {"outputs": outputs, "labels": labels}

    def loss(self, module, args, targets):
        """The loss of ``module`` on one batch (a scalar tensor)."""
        import torch
        from torch.nn import functional as F

        from edgesmith.models.variant import flatten_outputs

        outputs = flatten_outputs(module(*args))
        if self.lm:
            logits = outputs[0][:, :-1]
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets["tokens"].reshape(-1))
        total = 0.0
        for out, ref in zip(outputs, targets["outputs"]):
            if out.is_floating_point() and out.dim() == 2 and out.shape[-1] > 1:
                total = total + F.kl_div(torch.log_softmax(out, -1), torch.softmax(ref, -1), reduction="batchmean")
            elif out.is_floating_point():
                total = total + F.mse_loss(out, ref)
        if targets.get("labels") is not None:
            total = (1 - self.label_weight) * total + self.label_weight * F.cross_entropy(outputs[0], targets["labels"])
        return total

    def batch_loss(self, module, index):
        """The loss of ``module`` on samples ``index`` (a scalar tensor, ready for ``backward``)."""
        args = self.args(index)
        return self.loss(module, args, self.targets(args, index))

    def evaluate(self, module, index, batch: int = 8) -> float:
        """Mean loss of ``module`` over samples ``index``, without gradients."""
        import torch

        total, count = 0.0, 0
        with torch.no_grad():
            for start in range(0, len(index), batch):
                part = index[start:start + batch]
                args = self.args(part)
                total += float(self.loss(module, args, self.targets(args, part))) * len(part)
                count += len(part)
        return max(total / max(count, 1), 0.0)  # a KL of equal outputs can round below zero


def accuracy(module, feeds: dict[str, np.ndarray], labels: np.ndarray, variant, batch: int = 256) -> float:
    """Top-1 accuracy of ``module``'s first output on ``feeds`` against ``labels``."""
    import torch

    from edgesmith.models.variant import flatten_outputs

    right = 0
    with torch.no_grad():
        for start in range(0, len(labels), batch):
            args = [torch.from_numpy(np.ascontiguousarray(feeds[s.name][start:start + batch])) for s in variant.inputs]
            right += int((flatten_outputs(module(*args))[0].argmax(-1).numpy() == labels[start:start + batch]).sum())
    return right / max(len(labels), 1)


class Trainer:
    """The loop the training passes share: AdamW, warm-up + cosine, progress, checkpoints, resume.

    Args:
        owner: The pass (``matformer``), in messages.
        module: The model; the parameters in ``named`` train, every other is frozen.
        named: ``[(name, parameter)]`` to train.
        options: ``steps``, ``lr``, ``seed`` and ``save_every``.
        checkpoint: Where progress is saved; ``state``: its content when resuming, else None.
        extra: Further state saved with every checkpoint (``orders`` of a MatFormer run).
        progress: Called as ``progress(description, step, steps)``.
    """

    def __init__(self, owner: str, module, named: list, options, checkpoint: Checkpoint,
                 state: dict[str, Any] | None, extra: dict[str, Any] | None = None,
                 progress: Callable[[str, int, int], None] | None = None):
        import torch

        self.owner, self.module, self.named, self.o = owner, module, named, options
        self.checkpoint, self.extra, self.progress = checkpoint, extra or {}, progress
        for p in module.parameters():
            p.requires_grad_(False)
        for _, p in named:
            p.requires_grad_(True)
        self.params = [p for _, p in named]
        self.optimizer = torch.optim.AdamW(self.params, lr=options.lr, weight_decay=0.0)
        steps, warmup = options.steps, max(1, options.steps // 10)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: (s + 1) / warmup if s < warmup else
            0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup))))
        self.generator = torch.Generator().manual_seed(options.seed)
        self.history: list[list[float]] = []
        self.start = 0
        if state is not None:
            with torch.no_grad():
                for name, p in named:
                    p.copy_(state["weights"][name])
                buffers = dict(module.named_buffers())
                for name, b in state.get("buffers", {}).items():
                    buffers[name].copy_(b)
            self.optimizer.load_state_dict(state["optimizer"])
            self.schedule.load_state_dict(state["schedule"])
            self.generator.set_state(state["generator"])
            self.history = [list(h) for h in state["history"]]
            self.start = int(state["step"])

    def batch_index(self, samples: int, batch: int) -> np.ndarray:
        """A random batch of sample indices (from the run's seeded generator)."""
        import torch

        return torch.randperm(samples, generator=self.generator)[:batch].numpy()

    def run(self, step: Callable[[int], list[float]], describe: Callable[[list[float]], str]) -> dict[str, Any]:
        """Train from the start (or the resumed step) to ``steps``.

        Args:
            step: ``step(i) -> losses``: computes the losses of step ``i`` and calls ``backward``;
                the trainer clips, steps the optimizer and the schedule.
            describe: The progress line for a step's losses.

        Returns:
            steps, resumed_at, trained_parameters, the mean first and last five losses, seconds.
        """
        import torch

        began = time.perf_counter()
        self.module.train()
        try:
            for i in range(self.start, self.o.steps):
                losses = step(i)
                torch.nn.utils.clip_grad_norm_(self.params, 1.0)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.schedule.step()
                self.history.append(losses)
                if self.progress:
                    self.progress(describe(losses), i + 1, self.o.steps)
                if (i + 1) % self.o.save_every == 0 or i + 1 == self.o.steps:
                    self.save(i + 1)
        finally:
            self.module.eval()
            for p in self.module.parameters():
                p.requires_grad_(False)

        def mean(rows):
            return [round(sum(r[k] for r in rows) / len(rows), 4) for k in range(len(rows[0]))] if rows else []

        return {"steps": self.o.steps, "resumed_at": self.start,
                "trained_parameters": sum(p.numel() for p in self.params),
                "loss_first": mean(self.history[:5]), "loss_last": mean(self.history[-5:]),
                "seconds": round(time.perf_counter() - began, 1)}

    def save(self, step: int) -> None:
        """Checkpoint the trained weights, buffers (BatchNorm statistics), optimizer, schedule, generator and history at ``step``."""
        self.checkpoint.save({"step": step, **self.extra, "weights": {n: p.detach() for n, p in self.named},
                              "buffers": {n: b.detach() for n, b in self.module.named_buffers()},
                              "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                              "generator": self.generator.get_state(), "history": self.history})
