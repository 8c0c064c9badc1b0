"""``PoolCalls``: which max-pool implementation a training path runs (torch's or the native NCHW one)."""

from __future__ import annotations

import pytest
import torch.nn.functional as F

from feddst_core import native


class PoolCalls:
    """Records, in order, which max-pool implementation ran: "torch" or "native"."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.calls: list[str] = []
        torch_pool, native_pool = F.max_pool2d, native.max_pool2d_forward

        def torch_spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            self.calls.append("torch")
            return torch_pool(*args, **kwargs)

        def native_spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            self.calls.append("native")
            return native_pool(*args, **kwargs)

        monkeypatch.setattr(F, "max_pool2d", torch_spy)
        monkeypatch.setattr(native, "max_pool2d_forward", native_spy)

    def take(self) -> list[str]:
        out, self.calls = self.calls, []
        return out
