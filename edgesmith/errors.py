"""One exception hierarchy for edgesmith, mapped to exit codes in one place.

User mistakes (bad input, a parity failure, a missing runtime) derive from
:class:`EdgesmithError` and carry their exit code; anything else escaping to the
CLI is a bug and exits with code 1 and a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util


class EdgesmithError(Exception):
    """Base class of every error a user can cause or fix.

    Args:
        message: What was wrong, naming the offending value.
        hint: What to do instead (shown after the message).
    """

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(EdgesmithError):
    """The command was called wrongly: an unknown option, pass, target or key."""

    exit_code = 2


class BadInputError(EdgesmithError):
    """The input is unusable: unreadable model, unknown op for a target, bad shape, bad bundle."""

    exit_code = 3


class ParityError(EdgesmithError):
    """An artifact computed something different from its source model.

    Args:
        message: Which target failed and by how much.
        result: The :class:`edgesmith.parity.ParityResult` that failed.
    """

    exit_code = 4

    def __init__(self, message: str, result=None, hint: str | None = None):
        super().__init__(message, hint)
        self.result = result


class RuntimeUnavailableError(EdgesmithError):
    """A target's library or runtime is not installed or cannot run on this machine."""

    exit_code = 5


class OutputExistsError(BadInputError):
    """An output would overwrite something that exists and ``force`` was not given."""


EXIT_OK = 0
EXIT_INTERNAL = 1


def exit_code_for(exc: BaseException) -> int:
    """Return the process exit code for an exception (1 for anything unexpected).

    Args:
        exc: The exception that ended the command.

    Returns:
        The exit code of ARCHITECTURE.md: 2 usage, 3 bad input, 4 parity, 5 runtime, 1 bug.
    """
    if isinstance(exc, EdgesmithError):
        return exc.exit_code
    return EXIT_INTERNAL


def missing_extra(package: str, extra: str) -> RuntimeUnavailableError:
    """Build the error for an optional library that is not installed.

    Args:
        package: The import name that failed, e.g. ``coremltools``.
        extra: The edgesmith extra that installs it, e.g. ``coreml``.

    Returns:
        A :class:`RuntimeUnavailableError` whose hint is the pip line to run.
    """
    return RuntimeUnavailableError(
        f"{package} is not installed", hint=f"pip install 'edgesmith[{extra}]'"
    )


# Top-level import name of each optional library -> the extra that installs it. The build stack
# (torch, onnx, ...) is the `build` extra: the core install is the device-side runtime only.
EXTRAS = {
    "torch": "build", "onnx": "build", "onnxscript": "build", "safetensors": "build",
    "transformers": "hf", "accelerate": "hf", "gguf": "hf", "coremltools": "coreml", "mlx": "mlx",
    "hls4ml": "hls", "tensorrt": "tensorrt", "netron": "view", "ray": "ray", "PIL": "images",
}


def missing_library(exc: BaseException) -> RuntimeUnavailableError | None:
    """The missing-extra error for an import of an optional library that is not installed.

    Code on the build side imports torch and onnx directly (lazily); in a runtime-only install
    such an import fails with :class:`ModuleNotFoundError`, which is the user's missing extra
    (exit code 5), not a bug.

    Args:
        exc: The exception that ended a command.

    Returns:
        A :class:`RuntimeUnavailableError` naming the ``pip install`` line, or None when ``exc`` is
        not a failed import of an optional library that is absent (a bug).
    """
    if not isinstance(exc, ModuleNotFoundError):
        return None
    top = (exc.name or "").split(".")[0]
    if top not in EXTRAS:
        return None
    try:
        if importlib.util.find_spec(top) is not None:
            return None  # it is installed: a missing submodule is a bug, not a missing extra
    except (ImportError, ValueError):
        pass
    return missing_extra(top, EXTRAS[top])


def require(module: str, extra: str):
    """Import an optional library, or raise the missing-extra error (exit code 5).

    Args:
        module: Dotted module to import, e.g. ``mlx.core``.
        extra: The edgesmith extra that installs it, e.g. ``mlx``.

    Returns:
        The imported module.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise missing_extra(module.split(".")[0], extra) from None
