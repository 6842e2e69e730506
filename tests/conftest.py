"""Fixtures shared across the test tree."""

from __future__ import annotations

import os
import tempfile
import uuid

import pytest

# The host calibration the latency predictor caches: one per test session, never the user's own
# (subprocesses such as the README's commands inherit it).
os.environ.setdefault("EDGESMITH_CACHE", tempfile.mkdtemp(prefix="edgesmith-test-cache-"))


@pytest.fixture
def py_module(tmp_path, monkeypatch):
    """Write Python source as a uniquely named module on sys.path (for ``py:module:factory``).

    Returns:
        ``write(source, prefix="es_mod") -> module name``.
    """

    def write(source: str, prefix: str = "es_mod") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{name}.py").write_text(source)
        monkeypatch.syspath_prepend(str(tmp_path))
        return name

    return write
