"""``InboundHandling``: what the coordinator's main loop does with each item of the MQTT link's inbound
queue: admit it against the replay guard (a batch's seqs written in one transaction), then act on it:
a Status heartbeat or a Register updates the device registry, an Update is judged by the open round's
collector and answered with an Ack, a DeviceError is recorded; undecodable, misrouted and replayed
messages are dropped and counted by reason (coordinator-wide and in the active run's counters).
"""

from __future__ import annotations

import queue
import time

from cloud.coordinator_services import STATUS_PAYLOAD_BYTES, log
from cloud.enrollment import REVOKED_MARK
from cloud.mqtt_link import Inbound
from cloud.replay_guard import REPLAYED, RETAINED_SEEN, writes_durably
from cloud.round_collector import Verdict
from cloud.round_lifecycle import RoundLifecycle
from cloud.store import DeviceErrorRow
from protocol import DEVICE_ERROR_CODES, Ack, DeviceError, Register, Status, Update, topics


class InboundHandling(RoundLifecycle):
    """Admit and act on inbound items (main loop thread only)."""

    def _take_queued(self, limit: int, wait_s: float = 0.0) -> list[Inbound]:
        """Up to ``limit`` inbound items: those queued now, and those arriving within ``wait_s`` seconds
        (group commit: a burst of updates shares one replay-state transaction, one fsync, not one each)."""
        items = self._drain_inbound(limit)
        if not wait_s or len(items) >= limit:
            return items
        end = time.monotonic() + wait_s
        while len(items) < limit:
            try:
                left = end - time.monotonic()
                items.append(self.inbound.get(timeout=left) if left > 0 else self.inbound.get_nowait())
            except queue.Empty:
                break
        return items

    def _drain_inbound(self, limit: int) -> list[Inbound]:
        """Up to ``limit`` items queued now, in one batch take (:meth:`cloud.handoff_queue.HandOffQueue.take_up_to`:
        no lock or notify per item, where ``get_nowait`` per item on a ``queue.Queue`` took and released its lock
        and notified ~90 000 times in a 10 000-device round); a decoder waiting for room is woken once."""
        return self.inbound.take_up_to(limit)

    def _completes_round(self, items: list[Inbound]) -> bool:
        """Whether ``items`` hold an update from every selected device of the open round that has neither sent
        one nor reported an error: then no item is worth a group commit's wait, which would only delay the
        round's close (by ``GROUP_COMMIT_S`` each round, on its critical path). O(1) until the round's end."""
        ex = self._execution
        collector = ex.collector if ex is not None else None
        if collector is None:
            return False
        outstanding = len(collector.selected) - len(collector.accepted) - len(collector.errors)
        if len(items) < outstanding:
            return False
        senders = {item.decoded.envelope.sender_id for item in items
                   if item.kind == "message" and item.decoded is not None and isinstance(item.decoded.message, Update)
                   and item.decoded.message.run_id == collector.run_id
                   and item.decoded.message.server_round == collector.server_round}
        return not set(collector.missing()) - senders

    @staticmethod
    def _writes_durably(item: Inbound) -> bool:
        return item.kind == "message" and item.decoded is not None and writes_durably(item.decoded.message)

    def _handle_batch(self, items: list[Inbound]) -> None:
        """Admit a batch of inbound items against the replay guard, their seqs written in one transaction,
        then act on the fresh ones in order (the round is ticked after each, as for single items, except after
        an online/busy heartbeat: it cannot close, retry or fail a round, and a round waiting for devices is
        ticked after the batch's last item); the device states they change are written in one transaction
        after the last (``DeviceRegistry.deferred_flush``)."""
        with self.replay_guard.batched():
            fresh = [self._admit(item) for item in items]
        with self.registry.deferred_flush():  # the batch's device-state changes: one transaction at its end
            for item, ok in zip(items, fresh, strict=True):
                self._handle_and_tick(item, ok, tick=not _is_heartbeat(item))
            self._handle_and_tick(None, False, tick=not items or _is_heartbeat(items[-1]))

    def _handle_and_tick(self, item: Inbound | None, admitted: bool, tick: bool) -> None:
        try:
            if admitted and item is not None:
                self._handle(item)
            if tick:
                self._tick()
        except Exception as exc:  # noqa: BLE001 - as in the main loop, the batch's other items still count
            log.exception("coordinator main loop error")
            self._fail_active(f"internal error: {type(exc).__name__}: {exc}")

    def _admit(self, item: Inbound) -> bool:
        """Whether ``item`` is acted on: False for a device message whose seq is not fresh (counted, logged)."""
        if item.kind != "message" or item.decoded is None:
            return True
        msg, envelope = item.decoded.message, item.decoded.envelope
        if not isinstance(msg, Register | Status | Update | DeviceError) or self.replay_guard.admit(
                envelope.sender_id, envelope.seq, msg):
            return True
        if item.retained and isinstance(msg, Status):
            self.counters[RETAINED_SEEN] += 1  # the broker's retained copy of a status already accepted
            return False
        self._count(REPLAYED)
        log.warning("dropped a replayed %s from %s on %s: seq %d is not above the last accepted %s",
                    type(msg).__name__, envelope.sender_id, item.topic, envelope.seq,
                    self.replay_guard.last_seq(envelope.sender_id))
        return False

    def _handle(self, item: Inbound) -> None:
        """Act on one admitted item (:meth:`_admit`)."""
        if item.kind == "invalid":
            self.counters["invalid_messages"] += 1
            if REVOKED_MARK in item.error:
                self.counters["revoked_device_messages"] += 1
            if self._execution is not None:
                self._execution.counters["invalid"] += 1
            if item.error.startswith("AuthenticationError"):
                self._count("auth_failed")
            log.warning("dropped undecodable message on %s: %s", item.topic, item.error)
            return
        if item.kind == "disconnected":  # logged and counted by the link (CoordinatorLink)
            return
        if item.kind == "connected":  # logged by the link; no round is drawn within the reconnection grace
            if self._connected_at and not item.session_present:  # a reconnect to a broker that lost our session
                self._reannounce_open_round()
            self._connected_at = time.monotonic()
            return
        if item.kind != "message" or item.decoded is None:
            return
        msg, envelope = item.decoded.message, item.decoded.envelope
        if isinstance(msg, Status):
            if item.topic != topics.status(msg.device_id):
                self.counters["misrouted"] += 1
                return
            at = envelope.timestamp_ms / 1000.0 if item.retained else item.received_at
            self.registry.status(msg.device_id, msg.state, min(at, item.received_at), item.size)
            if not item.retained:
                self.registry.wire_report(msg.device_id, msg.wire_sent_bytes, msg.wire_received_bytes)
                if self._execution is not None:  # heartbeat traffic of the run (its share is in the report)
                    self._execution.counters[STATUS_PAYLOAD_BYTES] += item.size
        elif isinstance(msg, Register):
            if item.topic != topics.register(msg.device_id):
                self.counters["misrouted"] += 1
                return
            self.registry.register(msg.device_id, msg.capabilities, msg.sample_count, item.size)
            self._resend_task_to(msg.device_id)
        elif isinstance(msg, Update):
            self._handle_update(msg, item)
        elif isinstance(msg, DeviceError):
            self._handle_device_error(msg, item)
        else:
            self.counters["unexpected_messages"] += 1

    def _handle_update(self, update: Update, item: Inbound) -> None:
        if item.topic != topics.update(update.run_id, update.device_id):
            self.counters["misrouted"] += 1
            return
        self.registry.seen(update.device_id, bytes_up=item.size)
        ex = self._execution
        finished = self._finished_accepted.get(update.run_id, {})
        if (ex is None or ex.run_id != update.run_id) and update.device_id in finished.get(update.server_round, ()):
            verdict = Verdict("duplicate", "already received (run finished)")
            self.counters["duplicate_after_run"] += 1
        elif ex is None or ex.run_id != update.run_id:
            verdict = Verdict("stale", f"run {update.run_id} is not active")
            self.counters["ignored_other_run"] += 1
            if ex is not None:
                ex.counters["ignored_other_run"] += 1
        elif update.device_id in ex.accepted_by_round.get(update.server_round, ()):
            verdict = Verdict("duplicate", "already received (round closed)")  # ok Ack: stop re-sending
            ex.counters["duplicate"] += 1
        elif ex.collector is None:
            verdict = Verdict("stale", "no round is open")
            ex.counters["stale"] += 1
        else:
            verdict = ex.collector.offer(update, item.size)
            ex.counters.update(verdict.counter_keys)
            if verdict.kind == "accepted":
                ex.update_received_at[update.device_id] = item.received_at
        self.metrics.updates_by_verdict[verdict.kind].inc()
        if verdict.kind == "invalid":  # answered too (ok=false), so the device stops re-sending it
            log.warning("rejected update from %s for round %s (%s): %s", update.device_id, update.server_round,
                        verdict.reason, verdict.detail)
        ack = Ack(update.run_id, update.server_round, update.device_id, verdict.ack_ok, verdict.ack_detail)
        self._publish(topics.ack(update.run_id, update.device_id), self._sign(ack), topics.QOS_ACK)

    def _handle_device_error(self, report: DeviceError, item: Inbound) -> None:
        if item.topic != topics.update(report.run_id, report.device_id):
            self.counters["misrouted"] += 1
            return
        self.registry.error(DeviceErrorRow(report.device_id, report.run_id, report.server_round, report.code,
                                           report.detail, item.received_at), item.size)
        self.metrics.device_errors.labels(code=report.code if report.code in DEVICE_ERROR_CODES else "other").inc()
        log.warning("device %s could not do run %s round %s (%s): %s", report.device_id, report.run_id,
                    report.server_round, report.code, report.detail)
        self.events.publish(report.run_id, "device_error", {"device_id": report.device_id,
                                                           "round": report.server_round, "code": report.code,
                                                           "message": report.detail})
        ex = self._execution
        if ex is not None and ex.run_id == report.run_id:
            ex.counters["device_errors"] += 1
            if ex.collector is not None and ex.collector.server_round == report.server_round:
                ex.collector.report_error(report.device_id, report.code, report.detail)


def _is_heartbeat(item: Inbound) -> bool:
    """An online or busy Status (not a last will, not a Register): it only refreshes its device's row."""
    decoded = item.decoded
    return (item.kind == "message" and decoded is not None and type(decoded.message) is Status
            and decoded.message.state != "offline")
