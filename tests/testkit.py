"""Checks shared by the tests of bad input: nothing written, one error line, a live pickle payload.

conftest.py puts this folder on ``sys.path``, so a test module imports it as ``testkit``.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

#: The environment for a CLI run in a real process (no hub access).
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def cli(capsys, *args) -> tuple[int, str, str]:
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    from edgesmith.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file (with its bytes) and directory under root."""
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def assert_one_error(err: str, *names: str) -> str:
    """stderr holds one ``error:`` line naming every given thing, and no traceback."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


class PickleBomb:
    """Unpickling this runs a shell command that creates ``marker`` (proof that code ran)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))
