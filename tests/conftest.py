"""Fixtures shared across the test tree."""

from __future__ import annotations

import os
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

# tests import their shared checks as `testkit` (tests/ is not a package; pytest runs in importlib mode)
sys.path.insert(0, str(Path(__file__).parent))

# The host calibration the latency predictor caches: one per test session, never the user's own
# (subprocesses such as the README's commands inherit it).
os.environ.setdefault("EDGESMITH_CACHE", tempfile.mkdtemp(prefix="edgesmith-test-cache-"))


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    """An empty working directory (the process's cwd) for a command that must write nothing."""
    d = tmp_path / "work"
    d.mkdir()
    monkeypatch.chdir(d)
    return d


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


@pytest.fixture(scope="session")
def tiny_llama():
    """A two-layer Llama (random weights, gated SiLU FFNs, 97 tokens) behind edgesmith's HF wrapper, as a variant."""
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from edgesmith.models.hf import wrap_model
    from edgesmith.models.variant import Variant
    from edgesmith.specs import TensorSpec

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=97, max_position_embeddings=64)
    module = wrap_model(LlamaForCausalLM(config).eval(), ["input_ids"], "logits").eval()
    ids = np.random.default_rng(0).integers(0, 97, (2, 12)).astype(np.int64)
    return Variant(name="tiny-llama", module=module, inputs=[TensorSpec("input_ids", (2, 12), "int64")],
                   outputs=[TensorSpec("logits", (2, 12, 97), "float32")], example={"input_ids": ids},
                   source={"reference": "test:tiny-llama", "format": "test", "sha256": ""}, task="lm")


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct (the offline GGUF) as a variant, loaded once per session (~45 s)."""
    from edgesmith import api as es

    return es.load("zoo:smollm2-135m")


@pytest.fixture(scope="session")
def smollm2_onnx(smollm2, tmp_path_factory) -> Path:
    """SmolLM2's ONNX generation bundle, exported once per session (minutes)."""
    from edgesmith import api as es

    bundle, parity = es.export(smollm2, tmp_path_factory.mktemp("smollm2-onnx"), target="onnx")
    assert parity.passed and parity.generation["passed"], parity.failures
    return bundle.path
