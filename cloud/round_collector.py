"""One round's update collection: accept each selected device's first update, ignore and count the rest.

Rules (the coordinator/agent contract):

* an update for another run, or for another round of this run, is ignored (``stale``);
* an update from a device not selected this round is ignored (``unselected``);
* a second update from a device already accepted this round is ignored (``duplicate``) — it is
  never added twice;
* an update that does not echo the round's ``Task.task_nonce`` is refused with a negative Ack
  (``wrong_nonce``): it was not made for the task this round published;
* an update that fails :func:`cloud.update_checks.check_update` (non-finite values, wrong tensor
  names or shapes, values outside the held mask, mask changes beyond the readjustment budget,
  sample count < 1) is rejected (``invalid``, with its reason counted as ``invalid_<reason>``);
* an accepted update's aggregation weight is its declared sample count capped at the count the
  device registered and at the run's ``max_sample_count`` (capping is counted as
  ``accepted_sample_count_capped``); for a device whose Register this coordinator never saw (Register
  is not retained) only ``max_sample_count`` applies.

Accepted updates are folded into the aggregation at once (streaming, memory O(model), for the
``mean``, straight from the wire form by :mod:`cloud.update_fold`; the robust rules and clipping
take the dense path, and the robust rules keep the round's accepted updates). Every verdict comes with an Ack:
``ok`` for accepted and duplicates so the device stops re-sending, ``ok=false`` with the reason
otherwise, so an invalid update is not re-sent either.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from cloud.update_checks import RoundExpectations, UpdateRejected, check_update
from cloud.update_fold import SparseFold, can_fold
from feddst_core.strategies import ClientReply, RoundAggregation, ServerState
from feddst_core.wire_format import update_on_masks
from protocol import ProtocolError, Update

VERDICTS = ("accepted", "duplicate", "stale", "unselected", "wrong_nonce", "invalid")


@dataclass(frozen=True)
class Verdict:
    kind: str  # one of VERDICTS
    detail: str = ""
    reason: str = ""  # why, for counting: invalid -> a cloud.update_checks reason; accepted -> sample_count_capped

    @property
    def counter_keys(self) -> tuple[str, ...]:
        """The run counters this verdict increments: its kind, and ``<kind>_<reason>`` if it has a reason."""
        return (self.kind, f"{self.kind}_{self.reason}") if self.reason else (self.kind,)

    @property
    def ack_detail(self) -> str:
        """The Ack's detail: the reason first for a rejection (``tensor_shape: conv1.weight: ...``)."""
        return f"{self.reason}: {self.detail}" if self.kind == "invalid" and self.reason else self.detail

    @property
    def ack_ok(self) -> bool:
        return self.kind in ("accepted", "duplicate")


@dataclass
class RoundCollector:
    run_id: str
    server_round: int
    selected: tuple[str, ...]  # device ids, in selection order (= sorted)
    aggregation: RoundAggregation
    readjust_fraction: float = 0.0  # alpha of the round's task (0: masks must come back unchanged)
    registered_samples: Callable[[str], int] | None = None  # device id -> registered sample count (0: none)
    max_sample_count: int | None = None  # the run's cap on any device's aggregation weight
    accepted: dict[str, int] = field(default_factory=dict)  # device id -> encoded update bytes
    counts: Counter = field(default_factory=Counter)
    task_nonce: int = 0  # Task.task_nonce of this round; updates must echo it
    target: int = 0  # accepted updates that complete the round (0: every selected device's)

    def __post_init__(self) -> None:
        state, spec = self.aggregation.state, self.aggregation.strategy.spec
        # The sent masks as numpy, once per round: every update's checks and rebuild share them.
        self.expectations = RoundExpectations(spec.parameter_shapes(),
                                              {n: m.cpu().numpy() for n, m in state.masks.items()},
                                              self.readjust_fraction)
        self.fold = SparseFold(self.aggregation, self.expectations.sent_masks) if can_fold(self.aggregation) else None
        self._positions: dict[str, int] = {}
        self._positions_of: tuple[str, ...] = ()

    aggregation_s: float = 0.0  # seconds spent in aggregation.add for the accepted updates
    errors: dict[str, tuple[str, str]] = field(default_factory=dict)  # selected device id -> (code, detail)

    @property
    def all_replied(self) -> bool:
        """Every selected device sent an accepted update or an error report."""
        return all(d in self.accepted or d in self.errors for d in self.selected)

    def report_error(self, device_id: str, code: str, detail: str) -> bool:
        """Record a selected device's error for this round (first one wins); False if not selected
        or it already sent an accepted update."""
        if device_id not in self.selected or device_id in self.accepted or device_id in self.errors:
            return False
        self.errors[device_id] = (code, detail)
        return True

    def failure_reason(self, quorum: int, retries_done: int | None = None) -> str:
        """Why the run fails when every selected device replied, too few with updates, and it cannot
        retry: ``retries_done`` (the run's ``max_round_retries``) when it used up its retries, None
        when no spare device is left to retry with."""
        why = ("every selected device reported an error" if not self.accepted else
               f"{len(self.errors)} of {len(self.selected)} selected devices reported errors and "
               f"{len(self.accepted)} updates arrived (quorum {quorum})")
        stop = ("no other eligible device to retry with" if retries_done is None else
                f"after {retries_done} {'retry' if retries_done == 1 else 'retries'} (max_round_retries)")
        return f"round {self.server_round}: {why}, {stop}: {self.error_summary()}"

    def error_summary(self, limit: int = 5) -> str:
        """``dev-1 bad_data: text; dev-2 ...`` for the round's reported errors (at most ``limit``)."""
        items = [f"{d} {code}: {detail}" for d, (code, detail) in sorted(self.errors.items())]
        more = f"; and {len(items) - limit} more" if len(items) > limit else ""
        return "; ".join(items[:limit]) + more

    @property
    def complete(self) -> bool:
        return len(self.accepted) == len(self.selected)

    @property
    def target_met(self) -> bool:
        """As many updates accepted as the round first selected devices (a retry's stand-ins answered)."""
        return 0 < self.target <= len(self.accepted)

    def missing(self) -> list[str]:
        """Selected devices without an accepted update or an error report."""
        return [d for d in self.selected if d not in self.accepted and d not in self.errors]

    @property
    def upload_bytes(self) -> int:
        return sum(self.accepted.values())

    def offer(self, update: Update, size: int) -> Verdict:
        """Judge one decoded update of ``size`` encoded bytes; accepted ones join the aggregation."""
        verdict = self._judge(update, size)
        self.counts.update(verdict.counter_keys)
        return verdict

    def finish(self) -> tuple[ServerState | None, dict[str, float]]:
        """The aggregation's ``finish`` (the new global state and round metrics), folded sums flushed first."""
        if self.fold is not None:
            self.fold.flush()
        return self.aggregation.finish()

    def _position(self, device_id: str) -> int | None:
        """The device's index in ``selected`` (None: not selected); O(1), rebuilt when a retry extends it."""
        if self._positions_of is not self.selected:
            self._positions = {d: i for i, d in enumerate(self.selected)}
            self._positions_of = self.selected
        return self._positions.get(device_id)

    def _judge(self, update: Update, size: int) -> Verdict:
        if update.run_id != self.run_id or update.server_round != self.server_round:
            return Verdict("stale", f"round {update.server_round} of run {update.run_id} is not open")
        position = self._position(update.device_id)
        if position is None:
            return Verdict("unselected", "device not selected for this round")
        if update.device_id in self.accepted:
            return Verdict("duplicate", "already received")
        if update.task_nonce != self.task_nonce:
            return Verdict("wrong_nonce", "the update does not echo this round's task nonce")
        try:
            held = check_update(update, self.expectations)
        except UpdateRejected as exc:
            return Verdict("invalid", exc.detail, exc.reason)
        weight, cap_note = self._weight(update)
        try:
            started = time.perf_counter()
            if self.fold is not None:
                self.fold.add(update, held, weight)
            else:
                params, masks = update_on_masks(update, held)  # the checked masks: nothing converted again
                self.aggregation.add(ClientReply(position, params, masks, weight, update.train_loss))
            self.aggregation_s += time.perf_counter() - started
        except (ProtocolError, ValueError) as exc:  # check_update should have caught it: still no crash
            return Verdict("invalid", f"{type(exc).__name__}: {exc}", "unusable")
        self.accepted[update.device_id] = size
        return Verdict("accepted", cap_note, "sample_count_capped" if cap_note else "")

    def _weight(self, update: Update) -> tuple[int, str]:
        """The aggregation weight (declared samples, capped) and a note when it was capped or refused."""
        weight, caps = update.sample_count, []
        if self.registered_samples is not None:
            registered = self.registered_samples(update.device_id)
            if registered >= 1:  # Register is not retained: a coordinator started later may never see it
                caps.append((registered, "the registered count"))
        if self.max_sample_count is not None:
            caps.append((self.max_sample_count, "the run's max_sample_count"))
        cap, what = min(caps, default=(weight, ""))
        if weight > cap:
            return cap, f"sample_count {update.sample_count} capped at {cap} ({what})"
        return weight, ""
