"""Progress on stderr for the command-line modules: a live bar in a terminal, stage lines in a log.

Off a terminal (a log, CI, ``| tee``) a bar would be silent or, redrawn, a flood: each
stage prints one ``[  12.3s] stage`` line instead, counted from the command's start.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import time
from typing import Iterator

import click

from edgesmith.cli.common import console

_started: float | None = None  # when the command started: progress lines count from it
HEARTBEAT_S = 60.0  # off a terminal, a stage that reports nothing still prints a line this often


class _Stages:
    """Progress for a step of unknown or known length; see :func:`progress`."""

    def __init__(self, description: str, bar, task, start: float):
        self.description = description
        self._bar, self._task, self._start = bar, task, start
        self._last_line = 0.0
        self._completed: int | None = None
        self._total: int | None = None
        if bar is None:
            self._line(description)

    def update(self, description: str | None = None, completed: int | None = None, total: int | None = None) -> None:
        """Show a new stage (``description``) and/or how far it got (``completed`` of ``total``)."""
        # a new stage prints at once; the same stage with new figures (an epoch, a loss) at most every 30 s
        changed = description is not None and _stage(description) != _stage(self.description)
        self.description = description or self.description
        self._completed = completed if completed is not None else self._completed
        self._total = total if total is not None else self._total
        if self._bar is not None:
            self._bar.update(self._task, description=self.description, completed=self._completed,
                             total=self._total)
        elif changed:
            self._line(self.description)
        elif time.monotonic() - self._last_line >= 30:
            counted = f": {self._completed}" + (f"/{self._total}" if self._total else "") if self._completed else ""
            self._line(self.description + counted)

    def _line(self, text: str) -> None:
        self._last_line = time.monotonic()
        click.echo(f"[{self._last_line - self._start:7.1f}s] {text}", err=True)


def _stage(description: str) -> str:
    """A description without its figures: ``distill epoch 3/30 loss 8.6`` and ``epoch 4/30 ...`` are one stage."""
    return re.sub(r"(?<![\w-])[-+]?\d[\d.,:e-]*", "#", description)  # not the digits of a name (lsnet-t, l1)


@contextlib.contextmanager
def progress(description: str, total: int | None = None) -> Iterator[_Stages]:
    """Progress on stderr: a live bar in a terminal, else one ``[  12.3s] stage`` line per stage.

    A long step (a distillation, an LM export) piped to a log is then never silent for
    long: besides a line per new stage, a stage that goes on prints a line every 60 s
    (counted progress: every 30 s, with its count).

    Args:
        description: The first stage.
        total: Steps in it, if known.

    Yields:
        An object whose ``update(description=, completed=, total=)`` reports progress.
    """
    start = _start_time()
    if not sys.stderr.isatty():
        stages, done = _Stages(description, None, None, start), threading.Event()

        def heartbeat() -> None:  # one call (an LM export) can take minutes without reporting anything
            while not done.wait(5):
                if time.monotonic() - stages._last_line >= HEARTBEAT_S:
                    stages._line(f"{stages.description} (still running)")

        thread = threading.Thread(target=heartbeat, daemon=True)
        thread.start()
        try:
            yield stages
        finally:
            done.set()
            thread.join()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console(), transient=True) as bar:
        yield _Stages(description, bar, bar.add_task(description, total=total), start)


def _start_time() -> float:
    global _started
    if _started is None:
        _started = time.monotonic()
    return _started


def quiet_progress_bars() -> None:
    """Start the command's clock; silence third-party progress bars (tqdm, Hugging Face) off a terminal.

    Piped, each redraw is a line of its own: de-quantising a GGUF file alone writes
    thousands. Set before those libraries are imported; a value the user set is kept.
    """
    global _started
    _started = time.monotonic()
    if not sys.stderr.isatty():
        os.environ.setdefault("TQDM_DISABLE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
