"""Byte accounting for the simulator: every figure is the exact size of the real wire message.

Download per selected client = the encoded ``ModelBroadcast`` of the global model (values + mask,
or all values for a dense model). Upload per client = the encoded ``Update`` (values on its mask,
plus mask changes when it readjusted). Both include the envelope and the tag a deployment sends:
the coordinator's 64-byte Ed25519 signature on the broadcast, the device's 32-byte HMAC-SHA256 tag
on its update.
"""

from __future__ import annotations

from feddst_core.strategies import ServerState
from feddst_core.training import ClientOutcome
from feddst_core.wire_format import model_broadcast, update_message
from protocol import encoded_size

RUN_ID = "simulation"


class ByteMeter:
    def model_broadcast_bytes(self, state: ServerState, server_round: int) -> int:
        return encoded_size(model_broadcast(RUN_ID, server_round, state.params, state.masks))

    def update_bytes(self, outcome: ClientOutcome, sent_masks: dict, server_round: int, client: int) -> int:
        msg = update_message(RUN_ID, server_round, f"client-{client}", outcome.params, sent_masks,
                             outcome.masks, outcome.num_samples, outcome.train_loss, compute_s=0.0)
        return encoded_size(msg)
