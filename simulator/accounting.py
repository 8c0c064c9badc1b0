"""Byte accounting for the simulator: what each message would cost on the wire.

Interim analytic sizes (float32 values, a bitmap mask, 4-byte indices for mask changes) until the
wire codec lands; then every figure is ``len(encode_message(...))`` of the real message.
"""

from __future__ import annotations

import math

from feddst_core.models import ModelSpec
from feddst_core.strategies import ServerState
from feddst_core.training import ClientOutcome

VALUE_BYTES = 4  # float32


class ByteMeter:
    def __init__(self, spec: ModelSpec, dense: bool):
        self.shapes = spec.parameter_shapes()
        self.masked = set(spec.masked_names())
        self.dense = dense

    def model_broadcast_bytes(self, state: ServerState) -> int:
        """Global model as sent to one client: active values, dense biases, and the mask (sparse runs)."""
        total = 0
        for name, shape in self.shapes.items():
            n = math.prod(shape)
            if name in self.masked and not self.dense:
                total += int(state.masks[name].sum()) * VALUE_BYTES + math.ceil(n / 8)
            else:
                total += n * VALUE_BYTES
        return total

    def update_bytes(self, outcome: ClientOutcome) -> int:
        """One client's upload: values on its mask, plus the mask changes when it readjusted."""
        total = 0
        for name, shape in self.shapes.items():
            if name in self.masked and not self.dense:
                total += int(outcome.masks[name].sum()) * VALUE_BYTES
                change = outcome.mask_changes.get(name)
                if change is not None:
                    total += (len(change.dropped) + len(change.grown)) * 4
            else:
                total += math.prod(shape) * VALUE_BYTES
        return total
