"""The envelope's CRC-32 (ISO-HDLC: the CRC of ``zlib.crc32``), from zlib-ng when it is installed.

zlib-ng (the ``zlib-ng`` package, in the ``cloud`` extra) computes the same CRC with carry-less
multiplication: 3 us instead of 38-120 us for a 163 KB update on the coordinator's machine, where every
received message is checked. Without it (an agent, a minimal install) this is ``zlib.crc32``: the same values.

:func:`crc32_keeping_gil` (the envelope check) feeds zlib-ng at most :data:`GIL_KEPT_BYTES` per call: zlib-ng, as
zlib, releases the GIL for longer inputs, and on the coordinator, where three threads share it, the decoder then
waits up to the switch interval (5 ms by default) to get it back after 3 us of work. 32 calls for a 163 KB update
cost ~7 us, one GIL hand-off fewer per message.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

crc32: Callable[..., int]
"""``crc32(data, value=0)``: the CRC-32 of ``data`` (bytes-like), continuing from ``value``."""
try:
    from zlib_ng import zlib_ng

    crc32 = zlib_ng.crc32
    SOURCE = "zlib-ng"
except ImportError:  # optional
    crc32 = zlib.crc32
    SOURCE = "zlib"

GIL_KEPT_BYTES = 5120
"""zlib and zlib-ng release the GIL for inputs longer than this (CPython's zlibmodule: ``len > 1024 * 5``)."""


def crc32_keeping_gil(view: memoryview) -> int:
    """``crc32(view)`` (a flat byte view), computed in pieces that keep the GIL when zlib-ng is the source (plain
    zlib, ~20x slower, takes it whole: it may as well let other threads run meanwhile)."""
    if SOURCE != "zlib-ng" or len(view) <= GIL_KEPT_BYTES:
        return crc32(view)
    crc = 0
    for start in range(0, len(view), GIL_KEPT_BYTES):
        crc = crc32(view[start:start + GIL_KEPT_BYTES], crc)
    return crc
