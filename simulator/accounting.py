"""Byte accounting for the simulator: every figure is the exact size of the real wire message.

Download per selected client = the encoded ``ModelBroadcast`` of the global model (values + mask,
or all values for a dense model). Upload per client = the encoded ``Update`` (values on its mask,
plus mask changes when it readjusted) in the run's upload value format. Both include the envelope
and the tag a deployment sends: the coordinator's 64-byte Ed25519 signature on the broadcast, the
device's 32-byte HMAC-SHA256 tag on its update.

With a lossy upload format (``float16``, ``bfloat16``, ``int8``) the server must aggregate what it
really receives, so :meth:`ByteMeter.received_update` encodes the update, decodes it again and
returns the decoded weights: the accuracy cost of the format is measured, not assumed.
"""

from __future__ import annotations

from feddst_core.strategies import ServerState
from feddst_core.training import ClientOutcome, Params
from feddst_core.wire_format import model_broadcast, update_message, update_to_model
from protocol import Update, decode_message, encode_message, encoded_size
from protocol.values import VALUE_FORMATS

RUN_ID = "simulation"
SIZING_KEY = bytes(32)
"""A stand-in device HMAC key: the tag it produces has the real length (32 bytes); nothing is verified."""
UPLOAD_FORMATS = tuple(VALUE_FORMATS)
"""Upload value formats (protocol/values.py): float32 (lossless, default), float16, bfloat16, int8."""


class ByteMeter:
    """Sizes of the messages of a round; ``upload_format`` is how update values are encoded."""

    def __init__(self, upload_format: str = "float32") -> None:
        if upload_format not in VALUE_FORMATS:
            raise ValueError(f"upload format must be one of {', '.join(UPLOAD_FORMATS)}, got {upload_format!r}")
        self.upload_format = upload_format

    def model_broadcast_bytes(self, state: ServerState, server_round: int) -> int:
        return encoded_size(model_broadcast(RUN_ID, server_round, state.params, state.masks))

    def update_bytes(self, outcome: ClientOutcome, sent_masks: dict, server_round: int, client: int) -> int:
        """Encoded size in bytes of the client's update in ``upload_format``."""
        return encoded_size(self._update(outcome, sent_masks, server_round, client), value_format=self.upload_format)

    def received_update(self, outcome: ClientOutcome, sent_masks: dict, server_round: int,
                        client: int) -> tuple[int, Params]:
        """(encoded bytes, the weights the server decodes) of the client's update in ``upload_format``.

        float32 is lossless, so its weights are the trained ones; other formats go through
        ``encode_message`` and ``decode_message`` exactly as a live update does."""
        msg = self._update(outcome, sent_masks, server_round, client)
        if self.upload_format == "float32":
            return encoded_size(msg), outcome.params
        data = encode_message(msg, SIZING_KEY, timestamp=0, value_format=self.upload_format)
        decoded = decode_message(data)
        assert isinstance(decoded, Update)
        params, _masks = update_to_model(decoded, sent_masks)
        return len(data), params

    @staticmethod
    def _update(outcome: ClientOutcome, sent_masks: dict, server_round: int, client: int) -> Update:
        return update_message(RUN_ID, server_round, f"client-{client}", outcome.params, sent_masks,
                              outcome.masks, outcome.num_samples, outcome.train_loss, compute_s=0.0,
                              mask_changes=outcome.mask_changes)
