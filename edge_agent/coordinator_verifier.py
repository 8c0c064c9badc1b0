"""What the agent accepts from the coordinator: Ed25519-signed messages, in order, nothing replayed.

:class:`CoordinatorVerifier` decodes every (reassembled) message arriving on the device's
subscriptions with the coordinator's public key, so a message that is unsigned, HMAC-tagged (e.g.
with a device's own key) or signed with any other Ed25519 key raises ``AuthenticationError`` and
is dropped. Devices hold only the public key: no device can forge what the fleet obeys.

Replays: the coordinator numbers its messages with one increasing seq. For the messages whose
replay could matter — a Task (would restart a round's training) and an Abort (would cancel work)
— the verifier remembers the highest seq seen per (run, message type) and refuses one that is not
above it (:data:`REPLAYED`). Model broadcasts are re-published as the same bytes when a round is
retried, and Acks are idempotent per (run, round), so they are not ordered.

With ``public_key=None`` (``insecure_unsigned_coordinator``) nothing is verified.
Used only by the agent's main loop (not thread-safe).
"""

from __future__ import annotations

from collections import OrderedDict

from protocol import Abort, DecodedMessage, Task, decode_message_with_envelope
from protocol.ed25519 import Ed25519Verifier

REPLAYED = "replayed"
ORDERED_TYPES = (Task, Abort)
MEMORY = 1024  # (run, type) pairs remembered


class CoordinatorVerifier:
    """Decode-and-verify for coordinator messages; ``public_key``: 32 raw bytes, or None (insecure)."""

    def __init__(self, public_key: bytes | None) -> None:
        self.key = None if public_key is None else Ed25519Verifier(public_key)
        self._highest: OrderedDict[tuple[str, str], int] = OrderedDict()

    @property
    def verifies(self) -> bool:
        return self.key is not None

    def decode(self, data: bytes, max_size: int) -> DecodedMessage:
        """Decode one whole message; raises ``ProtocolError`` (``AuthenticationError`` when not signed)."""
        return decode_message_with_envelope(data, self.key, max_size=max_size)

    def is_replay(self, decoded: DecodedMessage) -> bool:
        """True for a Task or Abort whose seq is not above the last one of its run and type; else record it."""
        msg = decoded.message
        if not isinstance(msg, ORDERED_TYPES):
            return False
        slot = (msg.run_id, type(msg).__name__)
        seq = decoded.envelope.seq
        last = self._highest.get(slot)
        if last is not None and seq <= last:
            return True
        self._highest[slot] = seq
        self._highest.move_to_end(slot)
        while len(self._highest) > MEMORY:
            self._highest.popitem(last=False)
        return False
