"""Decoder limits: every size read from the wire is checked against these before allocating.

The decoder allocates memory only (a) proportional to the bytes actually present in the
input, or (b) for the boolean mask of a tensor, at most ``max_elements`` bytes in total per
message. All limits are configurable per call (``decode_message(..., limits=Limits(...))``).
"""

from __future__ import annotations

from dataclasses import dataclass

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True)
class Limits:
    """Upper bounds enforced by every decoder (raising :class:`LimitExceededError`)."""

    max_message_bytes: int = 64 * MIB
    """Total size of one encoded message (envelope included)."""
    max_elements: int = 1 << 24
    """Sum over a message's tensors of the number of elements (product of the shape)."""
    max_tensors: int = 4096
    """Tensors (or mask-change entries) in one tensor set."""
    max_ndim: int = 8
    """Dimensions of one tensor."""
    max_name_bytes: int = 255
    """UTF-8 bytes of one tensor name."""
    max_string_bytes: int = 4096
    """UTF-8 bytes of any other string field (detail, reason, arch, library name...)."""
    max_list_items: int = 100_000
    """Items in any list field (selected devices, library versions)."""

    def __post_init__(self) -> None:
        if not 0 <= self.max_elements <= 1 << 31:
            raise ValueError("max_elements must be within [0, 2**31] (positions are u32 on the wire)")


DEFAULT_LIMITS = Limits()
