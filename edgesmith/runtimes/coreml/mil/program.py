"""An ML program, loaded from its spec and run op by op in numpy.

Every op is looked up in the op table when the program is loaded, so an
uncovered op (or an op input the table's function does not take) is refused
before anything runs, with its name. Values between ops are kept rounded to
the dtype each op declares: fp16 tensors are stored as float32 holding fp16
values, so each op computes in fp32 and its result is rounded to fp16 (as Core
ML's fp16 compute does at op boundaries).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgesmith.errors import BadInputError
from edgesmith.runtimes.coreml.mil.mlpackage import (STRING, BlobStore, decode_value, numpy_dtype, read_model,
                                                      tensor_shape)
from edgesmith.runtimes.coreml.mil import elementwise, nn, states, tensor  # noqa: F401 (they fill the op table)
from edgesmith.runtimes.coreml.mil.states import StateCell
from edgesmith.runtimes.coreml.mil.table import OPS

_F16 = np.dtype(np.float16)


def store(value: Any, dtype: np.dtype | None) -> Any:
    """Round a value to a declared dtype, in compute form (fp16 is held as float32)."""
    if dtype is None or isinstance(value, (str, list)):
        return value
    arr = np.asarray(value).astype(dtype, copy=False)
    return arr.astype(np.float32) if dtype == _F16 else arr


@dataclass
class Step:
    """One non-const op of the program.

    Attributes:
        op: The op type.
        name: The op's name in the program.
        fn: Its function in the op table.
        variadic: Its inputs that take a tuple of values.
        inputs: ``(param, [(is_var, var name or constant), ...])`` per input.
        outputs: ``(var name, declared dtype or None)`` per output.
        free: Vars no later step reads (dropped after this one).
    """

    op: str
    name: str
    fn: Callable
    variadic: tuple[str, ...]
    inputs: list[tuple[str, list[tuple[bool, Any]]]]
    outputs: list[tuple[str, np.dtype | None]]
    free: list[str] = field(default_factory=list)


def _declared(value_type, what: str) -> np.dtype | None:
    if value_type.WhichOneof("type") != "tensorType":
        return None
    data_type = value_type.tensorType.dataType
    return None if data_type == STRING else numpy_dtype(data_type, what)


def _attr_name(operation) -> str:
    attr = operation.attributes.get("name")
    if attr is not None and attr.immediateValue.tensor.strings.values:
        return str(attr.immediateValue.tensor.strings.values[0])
    return operation.outputs[0].name if operation.outputs else operation.type


class MilProgram:
    """The ``main`` function of an ML package's program, ready to run.

    Args:
        package: The ``.mlpackage`` directory.
        function: The function to run.

    Raises:
        BadInputError: Not an ML program, or it uses an op (or op input) the evaluator does not cover.
    """

    def __init__(self, package: str | Path, function: str = "main"):
        self.path = Path(package)
        spec, model_dir = read_model(self.path)
        if spec.WhichOneof("Type") != "mlProgram":
            raise BadInputError(f"{package} holds a {spec.WhichOneof('Type')} model, not an ML program",
                                hint="export with the coreml target (ML Program format)")
        if function not in spec.mlProgram.functions:
            raise BadInputError(f"{package}: the ML program has no function {function!r}")
        fn = spec.mlProgram.functions[function]
        self.opset = fn.opset
        block = fn.block_specializations[fn.opset]
        self.inputs = [(i.name, _declared(i.type, i.name)) for i in fn.inputs
                       if i.type.WhichOneof("type") != "stateType"]
        # a stateful program's states (iOS 18: a KV cache, say): name -> (shape, dtype)
        self.states = {i.name: (tensor_shape(i.type.stateType.wrappedType.tensorType),
                                _declared(i.type.stateType.wrappedType, i.name))
                       for i in fn.inputs if i.type.WhichOneof("type") == "stateType"}
        self.outputs = list(block.outputs)
        names = [o.name for o in spec.description.output]
        self.output_names = names if len(names) == len(self.outputs) else list(self.outputs)
        self.consts: dict[str, Any] = {}
        self.steps: list[Step] = []
        blobs = BlobStore(model_dir)
        for operation in block.operations:
            self._add(operation, blobs)
        self._plan_frees()

    def _add(self, operation, blobs: BlobStore) -> None:
        name = _attr_name(operation)
        outputs = [(o.name, _declared(o.type, o.name)) for o in operation.outputs]
        if operation.type == "const":
            value = decode_value(operation.attributes["val"], blobs, name)
            self.consts[outputs[0][0]] = store(value, outputs[0][1])
            return
        if operation.type not in OPS or len(operation.blocks):
            raise BadInputError(
                f"the Core ML evaluator does not cover op {operation.type!r} (in {name!r})",
                hint="run the bundle on macOS, where Core ML itself runs it",
            )
        fn = OPS.get(operation.type)
        params = inspect.signature(fn).parameters
        inputs = []
        for param, arg in operation.inputs.items():
            if param not in params:
                raise BadInputError(f"the Core ML evaluator does not cover input {param!r} of op "
                                    f"{operation.type!r} (in {name!r})")
            bindings = [(True, b.name) if b.WhichOneof("binding") == "name"
                        else (False, decode_value(b.value, blobs, name)) for b in arg.arguments]
            inputs.append((param, bindings))
        self.steps.append(Step(operation.type, name, fn, OPS.info(operation.type).get("variadic", ()), inputs,
                               outputs))

    def _plan_frees(self) -> None:
        last: dict[str, int] = {}
        for i, step in enumerate(self.steps):
            for _, bindings in step.inputs:
                for is_var, ref in bindings:
                    if is_var and ref not in self.consts:
                        last[ref] = i
        keep = set(self.outputs)
        for var, i in last.items():
            if var not in keep:
                self.steps[i].free.append(var)

    @property
    def op_types(self) -> list[str]:
        """The op types the program runs, in order (consts excluded)."""
        return [s.op for s in self.steps]

    def make_state(self, values: dict[str, np.ndarray] | None = None) -> dict[str, StateCell]:
        """The program's states, zeroed (what ``MLModel.make_state`` gives) or set from ``values``.

        Raises:
            BadInputError: A value for a state the program does not have, or of another shape.
        """
        values = values or {}
        unknown = sorted(set(values) - set(self.states))
        if unknown:
            raise BadInputError(f"the ML program has no state {unknown[0]!r}",
                                hint=f"its states: {', '.join(self.states) or 'none'}")
        cells = {}
        for name, (shape, dtype) in self.states.items():
            value = np.zeros(shape, np.float32) if name not in values else store(values[name], dtype)
            if value.shape != tuple(shape):
                raise BadInputError(f"state {name!r} has shape {value.shape}, the program's is {tuple(shape)}")
            cells[name] = StateCell(value, dtype)
        return cells

    def run(self, feeds: dict[str, np.ndarray], state: dict[str, StateCell] | None = None) -> dict[str, np.ndarray]:
        """Run the program.

        Args:
            feeds: Input name -> array; cast to the dtypes the program declares.
            state: A stateful program's states (from :meth:`make_state`), read and written in
                place; a fresh zeroed state when not given.

        Returns:
            Output name (as the model description names it) -> array of the declared dtype.

        Raises:
            BadInputError: A missing input, or an op that cannot compute on these inputs (named).
        """
        env: dict[str, Any] = dict(self.consts)
        for name, dtype in self.inputs:
            if name not in feeds:
                raise BadInputError(f"the ML program needs input {name!r}")
            env[name] = store(feeds[name], dtype)
        env.update(state if state is not None else self.make_state())
        with np.errstate(all="ignore"):
            for step in self.steps:
                kwargs = {}
                for param, bindings in step.inputs:
                    values = [env[ref] if is_var else ref for is_var, ref in bindings]
                    kwargs[param] = values if param in step.variadic else values[0]
                try:
                    result = step.fn(**kwargs)
                except (ValueError, IndexError) as exc:
                    raise BadInputError(f"Core ML evaluator: op {step.op!r} ({step.name!r}) failed: {exc}") from exc
                results = result if isinstance(result, tuple) else (result,)
                for (var, dtype), value in zip(step.outputs, results):
                    env[var] = store(value, dtype)
                for var in step.free:
                    env.pop(var, None)
        declared = {var: dtype for s in self.steps for var, dtype in s.outputs}
        out = {}
        for name, var in zip(self.output_names, self.outputs):
            value = np.asarray(env[var])
            dtype = declared.get(var)
            out[name] = value.astype(dtype) if dtype is not None else value
        return out
