"""Stateful ML programs (iOS 18 / macOS 15): ``read_state``, ``write_state`` and ``slice_update``.

A stateful program (a language model's KV cache, say) declares some function inputs as
states: buffers Core ML keeps between predictions (``MLModel.make_state``), read with
``read_state`` and written with ``write_state`` (what coremltools lowers its
``coreml_update_state`` to). Here a state is a :class:`StateCell` the program's caller owns;
the ops read and replace its array. ``slice_update`` (``x`` with ``update`` written over
``x[begin:end:stride]``) is how a converted ``cache[..., a:b] = new`` writes into one.
Semantics follow ``coremltools/converters/mil/mil/ops/defs/iOS18/{states,tensor_transformation}.py``.
"""

from __future__ import annotations

import numpy as np

from edgesmith.runtimes.coreml.mil.table import OPS
from edgesmith.runtimes.coreml.mil.tensor import slice_index


class StateCell:
    """One state of a stateful program: its array, replaced by each ``write_state``.

    Args:
        value: The array (held in compute form: fp16 as float32 of fp16 values).
        dtype: The state's declared dtype (writes are rounded to it).
    """

    def __init__(self, value: np.ndarray, dtype: np.dtype):
        self.value = value
        self.dtype = np.dtype(dtype)

    def write(self, data) -> None:
        data = np.asarray(data)
        if data.shape != self.value.shape:
            raise ValueError(f"write_state of shape {data.shape} into a state of shape {self.value.shape}")
        with np.errstate(over="ignore"):  # past fp16's range is inf, as Core ML's fp16 store makes it
            rounded = data.astype(self.dtype, copy=False)
        self.value = rounded.astype(np.float32) if self.dtype == np.float16 else rounded


@OPS.op("read_state")
def read_state(input):  # noqa: A002 - the MIL input's name
    """The state's current array (a copy: later writes do not change what was read)."""
    return np.array(input.value, copy=True)


@OPS.op("write_state")
def write_state(input, data):  # noqa: A002
    """Replace the state's array (rounded to its dtype); no outputs."""
    input.write(data)
    return ()


@OPS.op("slice_update")
def slice_update(x, update, begin, end, stride=None, begin_mask=None, end_mask=None, squeeze_mask=None):
    """``x`` with ``x[begin:end:stride]`` (per axis, masks as in ``slice_by_index``) replaced by ``update``."""
    out = np.array(x, copy=True)
    index = slice_index(out, begin, end, stride, begin_mask, end_mask, squeeze_mask)
    target = out[index]
    update = np.asarray(update)
    if update.shape != target.shape:
        raise ValueError(f"slice_update of shape {update.shape} into a slice of shape {target.shape}")
    out[index] = update
    return out
