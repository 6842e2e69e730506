"""Typed options: one dataclass per pass or exporter, filled from ``key=value`` text.

The CLI (``-p reparam:check=false``, ``-O opset=20``) and recipes fill the same
dataclasses through :func:`build_options`; values are converted to the field's
type, never rewritten.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from typing import Any

from edgesmith.errors import BadInputError, UsageError


def _convert(value: Any, kind: Any, key: str, owner: str) -> Any:
    if not isinstance(value, str):
        return _typed(value, kind, key, owner)
    args = typing.get_args(kind)
    if type(None) in args:  # Optional[X]
        if value.lower() in ("none", "null"):
            return None
        kind = next(a for a in args if a is not type(None))
    try:
        if kind is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        return kind(value)
    except (TypeError, ValueError):
        name = getattr(kind, "__name__", str(kind))
        raise UsageError(f"{owner}: {key}={value!r} is not a valid {name}") from None


def _typed(value: Any, kind: Any, key: str, owner: str) -> Any:
    """A value given already typed (the Python API's ``defaults``): kept as it is when it has the field's type."""
    args = typing.get_args(kind)
    if type(None) in args:
        if value is None:
            return None
        kind = next(a for a in args if a is not type(None))
    if isinstance(kind, type):
        if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
            return value
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)  # an int is a float without loss
        if kind is str and isinstance(value, os.PathLike):
            return os.fspath(value)  # a path option is its text
    name = getattr(kind, "__name__", str(kind))
    raise UsageError(f"{owner}: {key}={value!r} is not a valid {name}")


def build_options(cls: type, values: dict[str, Any], owner: str) -> Any:
    """Fill an options dataclass from text values, or values already of the field's type.

    Args:
        cls: The options dataclass.
        values: Field name -> text (converted to the field's type) or a typed value (kept as it is;
            an int for a float field and a path for a text field are converted).
        owner: What the options belong to, for messages (``pass 'reparam'``).

    Raises:
        UsageError: An unknown key (listing the known ones) or a value of the wrong type.
    """
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    converted = {}
    for key, value in values.items():
        if key not in fields:
            raise UsageError(f"{owner} has no option {key!r}", hint=f"its options are: {', '.join(fields) or 'none'}")
        converted[key] = _convert(value, hints[key], key, owner)
    return cls(**converted)


def parse_key_values(items: typing.Iterable[str], owner: str) -> dict[str, str]:
    """Split ``key=value`` strings into a dict.

    Raises:
        UsageError: An item without ``=``.
    """
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UsageError(f"{owner}: cannot read {item!r}", hint="write key=value")
        out[key.strip()] = value.strip()
    return out


def describe_options(cls: type) -> list[tuple[str, str, str]]:
    """``(name, type, default)`` of each field, for ``--help`` and ``list`` commands."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else ""
        rows.append((f.name, getattr(hints[f.name], "__name__", str(hints[f.name])), repr(default)))
    return rows


def option(default: Any, text: str, **metadata: Any) -> Any:
    """A documented options field: ``steps: int = option(300, "Training steps.")``.

    Args:
        default: The field's default.
        text: What the option does, for ``--help`` (``metadata["help"]``, read by :func:`option_help`).
        **metadata: More metadata (``cli=...`` for an exporter option with its own flag).
    """
    return dataclasses.field(default=default, metadata={"help": text, **metadata})


def option_help(cls: type) -> dict[str, str]:
    """Field name -> its help text (``metadata["help"]``; empty where a field has none)."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def read_yaml_file(path: Any, what: str) -> Any:
    """Parse a user's YAML file (a device file, a recipe).

    Args:
        path: The file.
        what: What it is, for the messages (``device file``, ``recipe``).

    Raises:
        BadInputError: The file cannot be read or is not valid YAML (the first line of the parser's
            message says where).
    """
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except OSError as exc:
        raise BadInputError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        bad = exc.object[exc.start:exc.start + 1]
        raise BadInputError(f"{what} {path} is not UTF-8 text (byte {exc.start}: {bad!r})",
                            hint="save it as UTF-8") from None
    except yaml.YAMLError as exc:
        raise BadInputError(f"{what} {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
