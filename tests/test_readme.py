"""The README's examples run as written (bash and python blocks, in order, in one fresh directory)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def test_quick_start_is_the_two_make_commands():
    assert _blocks("sh")[0].split() == ["make", "demo", "make", "test"]


def test_readme_examples_run(tmp_path):
    bash, python = _blocks("bash"), _blocks("python")
    assert len(bash) >= 3 and python
    for folder in ("scripts", "examples"):  # the examples run from the repo root
        (tmp_path / folder).symlink_to(README.parent / folder)
    for block in bash:
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=_env(),
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"README block failed:\n{block}\n{proc.stdout}\n{proc.stderr}"
    assert (tmp_path / "out" / "report.html").is_file()
    assert (tmp_path / "out" / "digits-reparam.onnx" / "manifest.json").is_file()
    assert (tmp_path / "out" / "digits-lsnet.onnx" / "manifest.json").is_file()
    assert (tmp_path / "out" / "lsnet-t.mlx" / "manifest.json").is_file()
    assert (tmp_path / "out" / "lsnet-t.tensorrt" / "manifest.json").is_file()
    assert (tmp_path / "out" / "digits-mlp-half.onnx" / "manifest.json").is_file()
    assert (tmp_path / "out" / "digits-vit-repbn.onnx" / "manifest.json").is_file()
    assert (tmp_path / "out" / "digits-vit-sla.pt2").is_file()
    assert (tmp_path / "out" / "all-minilm-l6-v2.tensorrt" / "build_engine.sh").is_file()
    assert (tmp_path / "out-recipe" / "report.html").is_file()
    assert (tmp_path / "out-sweep" / "report.html").is_file() and (tmp_path / "out-sweep2" / "profile.json").is_file()
    for block in python:
        proc = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=_env(),
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"README block failed:\n{block}\n{proc.stdout}\n{proc.stderr}"
        assert "PASS [verified, fp32]" in proc.stdout
    assert (tmp_path / "out-api" / "report.html").is_file()
