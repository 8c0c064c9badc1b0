"""One round's update collection: accept each selected device's first update, ignore and count the rest.

Rules (the coordinator/agent contract):

* an update for another run, or for another round of this run, is ignored (``stale``);
* an update from a device not selected this round is ignored (``unselected``);
* a second update from a device already accepted this round is ignored (``duplicate``) — it is
  never added twice;
* an update that does not echo the round's ``Task.task_nonce`` is refused with a negative Ack
  (``wrong_nonce``): it was not made for the task this round published;
* an update whose tensors do not fit the mask the device was sent is rejected (``invalid``).

Accepted updates are folded into the streaming aggregation at once (memory O(model)). Every
verdict but ``invalid`` comes with an Ack so the device stops re-sending.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from feddst_core.strategies import ClientReply, RoundAggregation
from feddst_core.wire_format import update_to_model
from protocol import ProtocolError, Update

VERDICTS = ("accepted", "duplicate", "stale", "unselected", "wrong_nonce", "invalid")


@dataclass(frozen=True)
class Verdict:
    kind: str  # one of VERDICTS
    detail: str = ""

    @property
    def accepted(self) -> bool:
        return self.kind == "accepted"

    @property
    def ack_ok(self) -> bool:
        return self.kind in ("accepted", "duplicate")


@dataclass
class RoundCollector:
    run_id: str
    server_round: int
    selected: tuple[str, ...]  # device ids, in selection order (= sorted)
    aggregation: RoundAggregation
    accepted: dict[str, int] = field(default_factory=dict)  # device id -> encoded update bytes
    counts: Counter = field(default_factory=Counter)
    task_nonce: int = 0  # Task.task_nonce of this round; updates must echo it

    @property
    def complete(self) -> bool:
        return len(self.accepted) == len(self.selected)

    @property
    def upload_bytes(self) -> int:
        return sum(self.accepted.values())

    def offer(self, update: Update, size: int) -> Verdict:
        """Judge one decoded update of ``size`` encoded bytes; accepted ones join the aggregation."""
        verdict = self._judge(update, size)
        self.counts[verdict.kind] += 1
        return verdict

    def _judge(self, update: Update, size: int) -> Verdict:
        if update.run_id != self.run_id or update.server_round != self.server_round:
            return Verdict("stale", f"round {update.server_round} of run {update.run_id} is not open")
        if update.device_id not in self.selected:
            return Verdict("unselected", "device not selected for this round")
        if update.device_id in self.accepted:
            return Verdict("duplicate", "already received")
        if update.task_nonce != self.task_nonce:
            return Verdict("wrong_nonce", "the update does not echo this round's task nonce")
        if update.sample_count < 1:
            return Verdict("invalid", "sample_count must be >= 1")
        try:
            params, masks = update_to_model(update, self.aggregation.state.masks)
            shapes = self.aggregation.strategy.spec.parameter_shapes()
            if set(params) != set(shapes) or any(tuple(params[n].shape) != s for n, s in shapes.items()):
                return Verdict("invalid", "tensor names or shapes do not match the model")
            self.aggregation.add(ClientReply(self.selected.index(update.device_id), params, masks,
                                             update.sample_count, update.train_loss))
        except (ProtocolError, ValueError) as exc:
            return Verdict("invalid", f"{type(exc).__name__}: {exc}")
        self.accepted[update.device_id] = size
        return Verdict("accepted")
