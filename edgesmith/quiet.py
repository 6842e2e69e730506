"""Silencing noisy libraries around a call, in one place.

torch.export, the ONNX exporter, coremltools and transformers print progress,
warnings and (for unreadable files) whole tracebacks through logging before
they raise. Inside :func:`quiet` only their errors get through; the exceptions
they raise still propagate and become edgesmith's own clear errors.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import Iterator


@contextlib.contextmanager
def quiet(*loggers: str, level: int = logging.ERROR, stdout: bool = False,
          stderr: bool = False) -> Iterator[None]:
    """Raise the named loggers to ``level`` and drop warnings for the block.

    Args:
        loggers: Logger names (``"torch.export"``...).
        level: Lowest level still shown.
        stdout: Also swallow prints to stdout (progress lines).
        stderr: Also swallow prints to stderr (progress bars).
    """
    targets = [logging.getLogger(n) for n in loggers]
    before = [lg.level for lg in targets]
    for lg in targets:
        lg.setLevel(level)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("ignore")
            if stdout:
                stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
            if stderr:
                stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
            yield
    finally:
        for lg, lvl in zip(targets, before):
            lg.setLevel(lvl)
