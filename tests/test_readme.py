"""The README's examples run as written (bash and python blocks, in order, in one fresh directory).

Blocks fenced ```` ```bash slow ```` take minutes (a language model's passes): they run in
their own test, marked ``slow`` (``-m "not slow"`` leaves them out locally; CI runs them).
Commands quoted inline (`` `edgesmith ...` ``) are checked to name real commands and options.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest

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
    for block in bash:  # in an empty folder: nothing may need the repository around it
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=_env(),
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"README block failed:\n{block}\n{proc.stdout}\n{proc.stderr}"
    assert (tmp_path / "out" / "report.html").is_file()
    assert (tmp_path / "out" / "digits-reparam.onnx" / "manifest.json").is_file()
    assert (tmp_path / "out" / "digits-lsnet.onnx" / "manifest.json").is_file()
    assert (tmp_path / "out" / "lsnet-t.mlx" / "manifest.json").is_file()
    assert (tmp_path / "out" / "lsnet-t.tensorrt" / "manifest.json").is_file()
    assert (tmp_path / "out" / "digits-mlp-half.onnx" / "manifest.json").is_file()
    assert (tmp_path / "out" / "all-minilm-l6-v2.tensorrt" / "build_engine.sh").is_file()
    assert (tmp_path / "out-recipe" / "report.html").is_file()
    assert (tmp_path / "out-sweep" / "report.html").is_file() and (tmp_path / "out-sweep2" / "profile.json").is_file()
    for block in python:
        proc = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=_env(),
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"README block failed:\n{block}\n{proc.stdout}\n{proc.stderr}"
        assert "PASS [verified, fp32]" in proc.stdout
    assert (tmp_path / "out-api" / "report.html").is_file()


@pytest.mark.slow
def test_readme_slow_examples_run(tmp_path):
    blocks = _blocks("bash slow")
    assert blocks
    for block in blocks:
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=_env(),
                              capture_output=True, text=True, timeout=1800)
        assert proc.returncode == 0, f"README block failed:\n{block}\n{proc.stdout}\n{proc.stderr}"
    for lm in ("smollm2-rsparse", "smollm2-delta"):  # a language model's variant: a folder (-o NAME.pt2 -> NAME/)
        assert (tmp_path / "out" / lm / "edgesmith.json").is_file() and not (tmp_path / "out" / f"{lm}.pt2").exists()
    assert (tmp_path / "out" / "digits-vit-repbn.onnx" / "manifest.json").is_file()
    assert (tmp_path / "out" / "digits-vit-sla.pt2").is_file()


def _inline_commands() -> list[str]:
    """Every `` `edgesmith ...` `` span outside fenced blocks (prose that quotes a command line)."""
    prose = re.sub(r"```.*?```", "", README.read_text(), flags=re.S)
    return [c for c in re.findall(r"`(edgesmith [^`]+)`", prose) if not c.endswith("...")]


def test_readme_inline_commands_name_real_commands_and_options():
    """A command quoted in prose names an existing command and only options it has (no drift)."""
    from edgesmith.cli import cli

    commands = _inline_commands()
    assert len(commands) >= 10
    for line in commands:
        words = shlex.split(re.sub(r"[|\[\]]", " ", line))[1:]
        command = cli
        while isinstance(command, click.Group) and words and words[0] in command.commands:
            command = command.commands[words.pop(0)]
        assert not isinstance(command, click.Group) or not words, f"{line!r}: no command {words[0]!r}"
        known = {o for p in command.params for o in (*p.opts, *p.secondary_opts)} | {"-h", "--help"}
        for word in words:
            if word.startswith("-") and not re.fullmatch(r"-\d.*", word):
                option = word.split("=")[0]
                assert option in known, f"{line!r}: {command.name} has no option {option}"
