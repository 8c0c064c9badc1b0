"""``protocol.auth.as_signer`` makes the runtime ``Signer`` check once per class, and still checks each key."""

from __future__ import annotations

import pytest

from protocol import InvalidMessageError
from protocol.auth import AUTH_ED25519, AUTH_NONE, as_signer


class ToySigner:
    """A Signer by shape (algorithm, tag_bytes, sign, verify)."""

    def __init__(self, algorithm: int) -> None:
        self.algorithm, self.tag_bytes = algorithm, 64

    def sign(self, data: bytes) -> bytes:
        return bytes(64)

    def verify(self, data: bytes, tag: bytes) -> bool:
        return tag == bytes(64)


class NotASigner:
    algorithm = AUTH_ED25519


def test_a_signer_class_seen_once_still_has_each_instance_checked() -> None:
    good = ToySigner(AUTH_ED25519)
    assert as_signer(good) is good
    assert as_signer(good) is good  # the class is known now: same answer
    with pytest.raises(InvalidMessageError, match="ToySigner"):
        as_signer(ToySigner(AUTH_NONE))  # a known class, but this key signs nothing
    with pytest.raises(InvalidMessageError, match="ToySigner"):
        as_signer(ToySigner(99))


def test_an_object_without_the_signer_methods_is_refused() -> None:
    with pytest.raises(InvalidMessageError, match="NotASigner"):
        as_signer(NotASigner())  # type: ignore[arg-type]
    with pytest.raises(InvalidMessageError, match="str"):
        as_signer("a key")  # type: ignore[arg-type]
