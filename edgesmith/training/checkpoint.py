"""Checkpoints of passes that train: one file, written atomically, resumed only with the same run.

A training pass keeps ``DIR/last.pt`` (``edgesmith optimize`` uses ``OUT.ckpt/``). A new
run refuses to start over an existing checkpoint unless forced, a resumed run refuses a
checkpoint of another pass or of other options, and a killed run leaves the previous
checkpoint intact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgesmith.errors import BadInputError, UsageError


class Checkpoint:
    """The checkpoint file of one training run.

    Args:
        pass_name: The pass (named in messages).
        fmt: Format tag stored in the file; a file with another tag is not this pass's.
        directory: Where ``last.pt`` lives; empty: no checkpoint (nothing saved, nothing to resume).
        run: What makes two runs the same run (options, model identity); resuming needs an equal record.
        resume: Continue from the file.
        force: Start over even if the file exists.
    """

    def __init__(self, pass_name: str, fmt: str, directory: str, run: dict[str, Any], resume: bool, force: bool):
        self.pass_name, self.fmt, self.run = pass_name, fmt, run
        self.path = Path(directory) / "last.pt" if directory else None
        self.resume, self.force = resume, force

    def load(self) -> dict[str, Any] | None:
        """The saved state when resuming; None for a fresh run.

        Raises:
            UsageError: Resuming without a directory or a file; a fresh run over an existing file
                without ``force``; a checkpoint made with other options (names them).
            BadInputError: An unreadable file, or one of another pass.
        """
        import torch

        if self.path is None:
            if self.resume:
                raise UsageError(f"pass {self.pass_name!r}: resume needs a checkpoint directory",
                                 hint=f"give -p {self.pass_name}:checkpoint=DIR (edgesmith optimize sets OUT.ckpt)")
            return None
        if not self.resume:
            if self.path.exists() and not self.force:
                raise UsageError(f"{self.path.parent} already holds a {self.pass_name} checkpoint",
                                 hint="add --resume to continue it, or --force to start over")
            return None
        if not self.path.exists():
            raise UsageError(f"nothing to resume: {self.path} does not exist", hint="run once without --resume")
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is bad input
            raise BadInputError(f"cannot read checkpoint {self.path}: {type(exc).__name__}: {exc}") from None
        if not isinstance(state, dict) or state.get("format") != self.fmt:
            found = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise BadInputError(f"{self.path} is not a {self.pass_name} checkpoint (format {found!r})")
        if state.get("run") != self.run:
            saved = state.get("run") or {}
            changed = sorted(k for k in set(saved) | set(self.run) if saved.get(k) != self.run.get(k))
            raise UsageError(f"the checkpoint in {self.path.parent} was made with other options: {', '.join(changed)}",
                             hint="resume with the same options and model, or --force to start over")
        return state

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` (plus the format and run record) atomically; nothing without a directory."""
        import torch

        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save({"format": self.fmt, "run": self.run, **state}, tmp)
        tmp.replace(self.path)  # atomic: a killed run leaves the previous checkpoint intact
