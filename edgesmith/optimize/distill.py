"""Knowledge distillation into a zoo backbone (Hinton, Vinyals & Dean 2015, "Distilling the
Knowledge in a Neural Network").

The student (an EfficientFormer or LSNet from the zoo, optionally narrowed) learns
to match the teacher's temperature-softened logits, plus the labels when the data
has them::

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, label)

    before:  image (B, C, H, W) -> teacher                               -> logits (B, K)
    after:   image (B, C, H, W) -> resize to image_size -> student backbone -> logits (B, K)

The student keeps the teacher's input signature: the resize to the backbone's
size is part of it. The teacher runs on each augmented batch (random shifts of up
to 1/8 of the image), so its soft targets match what the student sees. A
checkpoint is written after every epoch; ``resume=true`` continues from it.
"""

from __future__ import annotations

import dataclasses
import time

from edgesmith.errors import BadInputError, UsageError
from edgesmith.optimize.base import PASSES, Pass
from edgesmith.options import option
from edgesmith.training.checkpoint import Checkpoint

CHECKPOINT_FORMAT = "edgesmith-distill-1"
# Options that change the run, not just how it is driven: a checkpoint resumes only if they match.
_RUN_KEYS = ("student", "epochs", "batch_size", "lr", "temperature", "alpha", "image_size", "width", "depth",
             "augment", "test_fraction", "seed")


@dataclasses.dataclass
class DistillOptions:
    """Options of the ``distill`` pass.

    Each field's help is its ``help`` metadata (:func:`edgesmith.options.option`).
    """

    student: str = option("lsnet-t", "Zoo backbone to train (``lsnet-t``, ``efficientformer-v2-s0``...; ``lsnet_t`` "
                                     "also works).")
    data: str = option("", "Image folder (one sub-folder per class) or ``.npz`` (``edgesmith optimize --data``).")
    epochs: int = option(10, "Passes over the training images.")
    batch_size: int = option(64, "Images per step.")
    lr: float = option(3e-3, "Peak learning rate (AdamW, one-cycle schedule).")
    temperature: float = option(4.0, "Softening of both logits in the teacher loss.")
    alpha: float = option(0.7, "Weight of the teacher loss; ``1 - alpha`` goes to the labels when the data has them.")
    image_size: int = option(0, "Student input size; 0 picks the teacher's size rounded up to a multiple of 32.")
    width: float = option(1.0, "Multiplier of the student's stage widths (rounded to multiples of 8): 0.25 makes a "
                               "narrow student.")
    depth: float = option(1.0, "Multiplier of the student's stage depths (a non-empty stage keeps at least one block).")
    augment: bool = option(True, "Random shifts of up to 1/8 of the image during training.")
    test_fraction: float = option(0.2, "Held out for the final accuracy when the data has no test split.")
    seed: int = option(0, "Seed of the student's initialisation, the batches and the split.")
    checkpoint: str = option("", "Directory for the per-epoch checkpoint (``edgesmith optimize`` uses ``OUT.ckpt``); "
                                 "empty: none.")
    resume: bool = option(False, "Continue from the checkpoint in ``checkpoint``.")
    force: bool = option(False, "Start over even if ``checkpoint`` already holds a run.")

    def __post_init__(self):
        for key in ("epochs", "batch_size"):
            if getattr(self, key) < 1:
                raise UsageError(f"pass 'distill': {key}={getattr(self, key)} must be at least 1")
        if not 0 <= self.alpha <= 1:
            raise UsageError(f"pass 'distill': alpha={self.alpha} must be between 0 and 1")
        if self.temperature <= 0 or self.lr <= 0 or self.width <= 0 or self.depth <= 0:
            raise UsageError("pass 'distill': temperature, lr, width and depth must be positive")
        if self.image_size and self.image_size % 32:
            raise UsageError(f"pass 'distill': image_size={self.image_size} must be a multiple of 32",
                             hint="the backbones downsample by 32")


def _student_module(variant, options: DistillOptions, classes: int):
    import torch

    from edgesmith.models.zoo import parse_zoo_reference

    entry, _ = parse_zoo_reference(options.student)
    if entry.build is None:
        raise UsageError(f"pass 'distill': student={options.student!r} is not a zoo backbone",
                         hint="use an efficientformer-* or lsnet-* model (edgesmith models list)")
    channels, height, width = variant.inputs[0].shape[1:]
    size = options.image_size or max(32, -(-max(height, width) // 32) * 32)
    from edgesmith.models.resize import ResizeThen

    torch.manual_seed(options.seed)
    backbone = entry.build(num_classes=classes, image_size=size, in_chans=channels,
                           width=options.width, depth=options.depth)
    return ResizeThen(size, backbone), size


def _shift(x, generator):
    """Shift each image by up to 1/8 of its size, zero-filled."""
    import torch

    b, c, h, w = x.shape
    pad = max(1, h // 8), max(1, w // 8)
    xp = torch.nn.functional.pad(x, (pad[1], pad[1], pad[0], pad[0]))
    dy = torch.randint(0, 2 * pad[0] + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad[1] + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
    return xp[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]


def _logits(module, x, batch: int = 256):
    import torch

    with torch.no_grad():
        return torch.cat([module(x[i:i + batch]) for i in range(0, len(x), batch)])


def _run_record(options: DistillOptions) -> dict:
    return {k: getattr(options, k) for k in _RUN_KEYS}


@PASSES.register
class Distill(Pass):
    """Train a zoo backbone to imitate the model (soft logits, plus labels when the data has them)."""

    name = "distill"
    Options = DistillOptions

    def _apply_impl(self, variant, module):
        import torch

        opts = self.options
        if not opts.data:
            raise UsageError(f"{self.owner} needs data", hint="give --data DIR_OR_NPZ (or -p distill:data=...)")
        if len(variant.inputs) != 1 or len(variant.inputs[0].shape) != 4:
            shapes = ", ".join(f"{s.name}{list(s.shape)}" for s in variant.inputs)
            raise BadInputError(f"{self.owner} needs a model taking one image (N, C, H, W); {variant.name} takes {shapes}",
                                hint="distill an image classifier")
        from edgesmith.models.complexity import count_params
        from edgesmith.data.images import load_image_data

        data = load_image_data(opts.data, tuple(variant.inputs[0].shape[1:]), opts.test_fraction, opts.seed)
        teacher = variant.module
        x_train, x_test = torch.from_numpy(data.x_train), torch.from_numpy(data.x_test)
        y_train = torch.from_numpy(data.y_train) if data.y_train is not None else None
        classes = int(_logits(teacher, x_test[:2]).shape[-1])
        student, size = _student_module(variant, opts, classes)

        steps = -(-len(x_train) // opts.batch_size)
        optimizer = torch.optim.AdamW(student.parameters(), lr=opts.lr, weight_decay=0.05)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=opts.lr, total_steps=opts.epochs * steps,
                                                       pct_start=0.15)
        generator = torch.Generator().manual_seed(opts.seed)
        history: list[dict] = []
        start_epoch = self._restore(student, optimizer, schedule, generator, history)

        teacher_pred = _logits(teacher, x_test).argmax(1)  # fixed: the teacher does not train
        started = time.perf_counter()
        for epoch in range(start_epoch, opts.epochs):
            student.train()
            order = torch.randperm(len(x_train), generator=generator)
            total = 0.0
            for step in range(steps):
                idx = order[step * opts.batch_size:(step + 1) * opts.batch_size]
                x = _shift(x_train[idx], generator) if opts.augment else x_train[idx]
                with torch.no_grad():
                    soft = teacher(x)
                out = student(x)
                t = opts.temperature
                loss = opts.alpha * t * t * torch.nn.functional.kl_div(
                    torch.log_softmax(out / t, 1), torch.softmax(soft / t, 1), reduction="batchmean")
                if y_train is not None and opts.alpha < 1:
                    loss = loss + (1 - opts.alpha) * torch.nn.functional.cross_entropy(out, y_train[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total += loss.item()
                self._progress(f"distill epoch {epoch + 1}/{opts.epochs} loss {total / (step + 1):.3f}",
                               epoch * steps + step + 1, opts.epochs * steps)
            student.eval()
            agreement = float((_logits(student, x_test).argmax(1) == teacher_pred).float().mean())
            history.append({"epoch": epoch + 1, "loss": round(total / steps, 5), "test_agreement": round(agreement, 4)})
            self._save(student, optimizer, schedule, generator, history)

        student.eval()
        student_pred = _logits(student, x_test).argmax(1)
        report = {
            "student": opts.student.replace("_", "-"),
            "image_size": size,
            "student_params": count_params(student),
            "teacher_params": count_params(teacher),
            "train_images": len(x_train),
            "test_images": len(x_test),
            "epochs_run": opts.epochs - start_epoch,
            "train_seconds": round(time.perf_counter() - started, 1),
            "agreement": round(float((student_pred == teacher_pred).float().mean()), 4),
            "history": history,
        }
        if data.y_test is not None:
            y_test = torch.from_numpy(data.y_test)
            report["accuracy"] = round(float((student_pred == y_test).float().mean()), 4)
            report["teacher_accuracy"] = round(float((teacher_pred == y_test).float().mean()), 4)
        return student, report

    def _progress(self, description: str, completed: int, total: int) -> None:
        if self.progress is not None:
            self.progress(description, completed, total)

    def _checkpoint(self) -> Checkpoint:
        o = self.options
        return Checkpoint("distill", CHECKPOINT_FORMAT, o.checkpoint, _run_record(o), o.resume, o.force)

    def _restore(self, student, optimizer, schedule, generator, history) -> int:
        """Load the checkpoint when resuming (returns the next epoch), refuse to clobber one otherwise."""
        state = self._checkpoint().load()
        if state is None:
            return 0
        student.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        generator.set_state(state["generator"])
        history.extend(state["history"])
        return int(state["epoch"])

    def _save(self, student, optimizer, schedule, generator, history) -> None:
        self._checkpoint().save({"epoch": history[-1]["epoch"], "student": student.state_dict(),
                                 "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                                 "generator": generator.get_state(), "history": history})
