"""``RoundLifecycle``: a run's rounds on the coordinator's main loop: begin or resume the run, wait for
eligible devices, open a round (select, broadcast the model, publish the Task), retry one that missed
its quorum, close it (aggregate, evaluate, save, record, checkpoint) and publish the final model.

Every method runs on the main loop thread (:class:`~cloud.coordinator.Coordinator`); the round's
updates arrive through :mod:`cloud.inbound_handling` into the open round's
:class:`~cloud.round_collector.RoundCollector`, and ``_tick`` decides after each one whether the
round closes, retries or fails.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from cloud.checkpoints import OpenRound, rng_from_state
from cloud.coordinator_services import STATUS_PAYLOAD_BYTES, CoordinatorServices, log
from cloud.mqtt_link import PublishResult
from cloud.round_collector import RoundCollector
from cloud.run_config import RunConfig
from cloud.run_execution import RunExecution, checkpoint_of, execution_from_checkpoint
from cloud.run_phase import devices_needed, round_log_line
from cloud.run_planning import plan_run
from feddst_core.masks import density
from feddst_core.wire_format import model_broadcast, run_completed
from protocol import Task, topics


class RoundLifecycle(CoordinatorServices):
    """Begin/resume a run and open, send, retry and close its rounds (main loop thread only)."""

    def _begin_run(self, run_id: str) -> None:
        try:
            config = RunConfig.model_validate(self.store.get_run(run_id).config)
            plan = plan_run(config, self.settings.data_roots)
            strategy, state, evaluator = plan.strategy, plan.initial_state, plan.evaluator
        except Exception as exc:  # noqa: BLE001 - any set-up failure fails the run with its reason
            self._finish(run_id, "failed", f"cannot start: {type(exc).__name__}: {exc}")
            return
        ex = RunExecution(run_id, config, strategy, state, np.random.default_rng(config.seed), evaluator)
        ex.progress = (len(self._eligible(config)), devices_needed(config, 1))
        ex.wire_marks = {d: self.registry.wire_bytes(d) for d in self.registry.online_ids()}
        self._execution = ex
        self.store.save_model(run_id, 0, state.params, state.masks)
        self.checkpoints.save(checkpoint_of(ex))
        log.info("run %s started", run_id)

    def _resume_run(self, run_id: str) -> None:
        """Continue an interrupted run from its last checkpoint; reopen the round it had open, if any, with
        the same selection and task nonce (agents' updates for it still count). A run without a checkpoint
        (it never got past start) starts over, which is the same run (everything is seeded)."""
        checkpoint = self.checkpoints.latest(run_id)
        if checkpoint is None:
            self._begin_run(run_id)
            return
        try:
            config = RunConfig.model_validate(self.store.get_run(run_id).config)
            plan = plan_run(config, self.settings.data_roots)
        except Exception as exc:  # noqa: BLE001 - like a start: the run fails with its reason
            self._finish(run_id, "failed", f"cannot resume: {type(exc).__name__}: {exc}")
            return
        ex = execution_from_checkpoint(checkpoint, config, plan.strategy, plan.evaluator)
        ex.counters["resumes"] += 1
        ex.progress = (len(self._eligible(config)), devices_needed(config, ex.server_round + 1))
        self._execution = ex
        opened = self.checkpoints.open_round(run_id)
        log.info("run %s resumed after round %s%s", run_id, ex.server_round,
                 f"; reopening round {opened.server_round}" if opened else "")
        if opened is not None and opened.server_round == ex.server_round + 1:
            ex.counters["rounds_reopened"] += 1
            ex.rng = rng_from_state(opened.rng_state)
            ex.retries = opened.retries
            self._open_round(ex, opened, time.time())

    def _tick(self) -> None:
        ex = self._execution
        if ex is None:
            return
        now = time.time()
        if ex.phase == "waiting":
            self._try_begin_round(ex, now)
            return
        collector = ex.collector
        assert collector is not None
        ex.progress = (len(collector.accepted), len(collector.selected))
        if (collector.complete or (now >= ex.deadline and len(collector.accepted) >= ex.config.quorum)
                or self._only_gone_devices_missing(collector)):
            self._close_round(ex)
        elif collector.errors and collector.all_replied:  # no point waiting for the deadline
            self._after_errors(ex, now)
        elif now >= ex.deadline:
            self._retry_round(ex, now)

    def _only_gone_devices_missing(self, collector: RoundCollector) -> bool:
        """A retried round whose stand-ins answered (as many updates as it first selected) while every device
        still missing is offline: its selected set cannot complete before they return, so it closes now
        instead of waiting out the deadline (a device still online may yet answer: it is waited for)."""
        if not collector.target_met:
            return False
        online = set(self.registry.online_ids())
        return not any(d in online for d in collector.missing())

    def _after_errors(self, ex: RunExecution, now: float) -> None:
        """Every selected device replied, some with errors: close, retry now with spare devices, or fail saying why."""
        collector = ex.collector
        assert collector is not None
        if len(collector.accepted) >= ex.config.quorum:
            self._close_round(ex)
            return
        spare = [d for d in self._eligible(ex.config) if d not in collector.selected]
        if spare and ex.retries < ex.config.max_round_retries:
            self._retry_round(ex, now)
            return
        self._finish(ex.run_id, "failed", collector.failure_reason(ex.config.quorum, ex.retries if spare else None))

    def _try_begin_round(self, ex: RunExecution, now: float) -> None:
        """Select and open the next round once enough devices are eligible. Not within two heartbeats of a
        (re)connection to the broker: devices that lost it too are re-announcing themselves, and selecting
        from a partial fleet would change the draw (and the run) for a passing outage."""
        if time.monotonic() - self._connected_at < 2 * self.settings.heartbeat_s:
            return
        c = ex.config
        eligible = self._eligible(c)
        need = devices_needed(c, ex.server_round + 1)
        ex.progress = (len(eligible), need)
        if len(eligible) < need:
            if now - ex.phase_since > c.device_wait_s:
                self._finish(ex.run_id, "failed", f"only {len(eligible)} eligible devices online after "
                             f"{c.device_wait_s:.0f} s; round {ex.server_round + 1} needs {need}")
            return
        r = ex.server_round + 1
        plan = ex.strategy.configure_round(r, ex.state, list(range(len(eligible))), ex.rng,
                                           clients_per_round=min(c.clients_per_round, len(eligible)))
        ex.retries = 0
        opened = OpenRound(r, tuple(eligible[i] for i in plan.clients), secrets.randbits(64),
                           plan.readjust_fraction, plan.prox_mu, 0, dict(ex.rng.bit_generator.state))
        self.checkpoints.save_open_round(ex.run_id, opened)  # durable before any device sees the Task
        self._open_round(ex, opened, now)

    def _open_round(self, ex: RunExecution, opened: OpenRound, now: float) -> None:
        """Start collecting ``opened`` (a new round, or the one a restarted coordinator reopens)."""
        r, selected = opened.server_round, opened.selected
        ex.round_started = now
        ex.task_nonce = opened.task_nonce
        ex.collector = RoundCollector(ex.run_id, r, selected, ex.strategy.begin_aggregation(ex.state),
                                      task_nonce=ex.task_nonce, readjust_fraction=opened.readjust_fraction,
                                      registered_samples=self.registry.sample_count,
                                      max_sample_count=ex.config.max_sample_count,
                                      target=opened.target or len(selected))
        encode_started = time.perf_counter()
        ex.broadcast = self._sign(model_broadcast(ex.run_id, r, ex.state.params, ex.state.masks))
        ex.phase, ex.phase_since = "collecting", now
        ex.readjust_fraction, ex.prox_mu = opened.readjust_fraction, opened.prox_mu
        ex.update_received_at = {}
        self._send_round(ex, selected, new_devices=selected)
        ex.broadcast_s, ex.published_at = time.perf_counter() - encode_started, time.time()

    def _send_round(self, ex: RunExecution, selected: tuple[str, ...], new_devices: tuple[str, ...]) -> None:
        """Publish a new Task (new deadline) for every selected device not yet accepted, then the round's model
        (once: retained); ``new_devices`` (all of ``selected`` when the round opens, a retry's extras) are
        charged the model.

        Tasks first: mosquitto reads one packet per connection per pass of its event loop, so the Tasks
        queued on this one connection leave at one per pass; with the model first, the devices that got
        theirs early were already uploading, every pass served their update chunks too, and the last Task
        reached its device 0.5 s (1000 devices) to 21 s (10 000) after the first (docs/results.md,
        "roundpath"). No device can start before the model, which now follows its Task on the same
        connection. A device handles its Task and the model in either order (``edge_agent/agent.py``)."""
        c, r = ex.config, ex.server_round + 1
        ex.deadline = time.time() + c.round_timeout_s
        fraction = ex.readjust_fraction
        template = Task(ex.run_id, r, (), model_round=r, local_epochs=c.local_epochs, batch_size=c.batch_size,
                        lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay,
                        prox_mu=ex.prox_mu,
                        readjust=fraction > 0, alpha=fraction, deadline_unix=ex.deadline, seed=c.seed,
                        model_name=c.model, task_nonce=ex.task_nonce)
        accepted = ex.collector.accepted if ex.collector is not None else {}
        pending = [d for d in selected if d not in accepted]
        started = time.perf_counter()
        # All signed before the first is published: once Tasks are out, updates arrive and the decoder thread
        # competes for the GIL (signing each just before its publish took 9.7 s for 10 000, docs/results.md).
        for device_id in pending:
            ex.task_bytes[device_id] = self._sign(dataclasses.replace(template, selected=(device_id,)))
        signed_s = time.perf_counter() - started
        self._deliver_tasks(ex, pending)
        ex.tasks_s = time.perf_counter() - started
        log.info("round %s: %d tasks signed in %.3f s, handed to the MQTT client in %.3f s", r, len(pending),
                 signed_s, ex.tasks_s - signed_s)
        if not ex.model_chunk_topics:  # retained: a retry's extra devices subscribe and get it, no re-publish
            result, ex.model_chunk_topics = self.link.publish_model(ex.run_id, r, ex.broadcast)
            self._count_publish(topics.model(ex.run_id, r), result)
        self._charge_model_download(ex, new_devices)

    def _deliver_tasks(self, ex: RunExecution, devices: Iterable[str]) -> None:
        """Publish each device's Task of the open round (``ex.task_bytes``) on its own inbox and charge the
        device those bytes (topic layout revision 3: nothing on the run's task topic; see protocol/topics.py).
        Used by the round's send, the re-send to a device that registers again and the re-announce."""
        queued: list[str] = []
        for device_id in devices:
            data = ex.task_bytes[device_id]
            result = self.link.publish(topics.inbox(device_id), data, qos=topics.QOS_TASK)
            if not result.ok:
                queued.append(result.detail)
            self.registry.add_bytes_down((device_id,), len(data))
        if queued:  # one warning for the lot (at 10 000 devices, not 10 000 lines)
            self._count_publish(topics.inbox("+"), PublishResult(False, f"{len(queued)} tasks: {queued[0]}"))

    def _charge_model_download(self, ex: RunExecution, devices: tuple[str, ...]) -> None:
        """Count the round's model as downloaded by ``devices``: run total, metric, per device (each device's
        Task is charged by :meth:`_deliver_tasks`, its own bytes)."""
        ex.download_bytes += len(ex.broadcast) * len(devices)
        self.metrics.download_bytes.inc(len(ex.broadcast) * len(devices))
        self.registry.add_bytes_down(devices, len(ex.broadcast))

    def _resend_task_to(self, device_id: str) -> None:
        """A device that (re)registers while selected for the open round and not yet accepted gets its Task
        again on its inbox (a restarted agent's new session never saw it); the model is retained."""
        ex = self._execution
        if ex is None or ex.collector is None or device_id not in ex.task_bytes:
            return
        collector = ex.collector
        if device_id not in collector.selected or device_id in collector.accepted:
            return
        ex.counters["task_resent_on_register"] += 1
        log.info("device %s registered during round %s it is selected for; re-sending its task", device_id,
                 collector.server_round)
        self._deliver_tasks(ex, (device_id,))

    def _reannounce_open_round(self) -> None:
        """The broker came back without this coordinator's session (restarted without persistence): what
        devices published while it was not subscribed (re-sent updates) is gone, and so are the retained model
        chunks. Publish the open round's model chunks and each pending device's Task again (same bytes: nonce
        and deadline): a device that kept its update re-sends it on the repeated Task, one still training goes
        on, one still waiting for the model gets it. Model and Task bytes are charged to the selected devices
        not yet accepted."""
        ex = self._execution
        if ex is None or ex.collector is None or not ex.task_bytes or not ex.broadcast:
            return
        collector = ex.collector
        pending = tuple(d for d in collector.selected if d not in collector.accepted and d in ex.task_bytes)
        ex.counters["round_reannounced"] += 1
        log.warning("the broker lost this coordinator's session; re-publishing round %s's model and task for %d "
                    "pending devices", collector.server_round, len(pending))
        result, ex.model_chunk_topics = self.link.publish_model(ex.run_id, collector.server_round, ex.broadcast)
        self._count_publish(topics.model(ex.run_id, collector.server_round), result)
        self._deliver_tasks(ex, pending)
        self._charge_model_download(ex, pending)

    def _retry_round(self, ex: RunExecution, now: float) -> None:
        collector = ex.collector
        assert collector is not None
        if ex.retries >= ex.config.max_round_retries:
            errors = f"; device errors: {collector.error_summary()}" if collector.errors else ""
            self._finish(ex.run_id, "failed", f"round {collector.server_round}: {len(collector.accepted)} of "
                         f"{len(collector.selected)} updates by the deadline, quorum {ex.config.quorum}, "
                         f"after {ex.retries} retries{errors}")
            return
        ex.retries += 1
        ex.counters["round_retries"] += 1
        missing = [d for d in collector.selected if d not in collector.accepted]
        spare = [d for d in self._eligible(ex.config) if d not in collector.selected]
        replace_count = min(len(missing), len(spare))
        extra = tuple(sorted(ex.rng.choice(np.asarray(spare), size=replace_count, replace=False).tolist())
                      if replace_count else ())
        collector.selected = collector.selected + extra
        self.checkpoints.save_open_round(ex.run_id, OpenRound(
            collector.server_round, collector.selected, ex.task_nonce, ex.readjust_fraction, ex.prox_mu,
            ex.retries, dict(ex.rng.bit_generator.state), collector.target))
        log.warning("round %s missed its quorum; retry %s with %s extra devices", collector.server_round,
                    ex.retries, len(extra))
        self._send_round(ex, collector.selected, new_devices=extra)

    def _close_round(self, ex: RunExecution) -> None:
        collector = ex.collector
        assert collector is not None
        ex.phase, ex.phase_since = "aggregating", time.time()
        started = time.perf_counter()
        new_state, metrics = collector.finish()
        aggregation_s = collector.aggregation_s + time.perf_counter() - started
        assert new_state is not None  # a round closes only with >= quorum >= 1 accepted updates
        r = collector.server_round
        self._clear_round_model(ex, r)
        ex.state, ex.server_round, ex.collector = new_state, r, None
        ex.upload_bytes += collector.upload_bytes
        ex.accepted_by_round[r] = frozenset(collector.accepted)
        for device_id in collector.accepted:
            self.registry.round_done(device_id)
        record: dict[str, Any] = {
            "round": r, "accuracy": None, "global_accuracy": None, "upload_bytes": ex.upload_bytes,
            "download_bytes": ex.download_bytes, "density": density(new_state.masks),
            "train_loss": metrics.get("train_loss", 0.0), "seconds": time.time() - ex.round_started,
            "selected": list(collector.selected), "accepted": sorted(collector.accepted),
            "ignored": {k: v for k, v in collector.counts.items() if not k.startswith("accepted")},
            "clipped": int(metrics.get("clipped_updates", 0)),
            "retries": ex.retries,
            "late": [d for d in collector.selected if d not in collector.accepted],
            "upload_by_device": dict(sorted(collector.accepted.items())),
            "wire_by_device": self._wire_since_last_round(ex),
            "wire_upload_bytes": ex.wire_upload_bytes, "wire_download_bytes": ex.wire_download_bytes,
            "status_upload_bytes": ex.counters[STATUS_PAYLOAD_BYTES],
            "layer_density": {name: float(m.to(torch.float32).mean()) for name, m in new_state.masks.items()},
            "started_at": ex.round_started, "closed_at": time.time(),
            "broadcast_s": ex.broadcast_s, "tasks_s": ex.tasks_s, "published_at": ex.published_at,
            "aggregation_s": aggregation_s,
            "update_received_at": dict(sorted(ex.update_received_at.items())),
            "errors": {d: {"code": c, "detail": t} for d, (c, t) in sorted(collector.errors.items())},
        }
        if ex.evaluator is not None and (r % ex.evaluator.every == 0 or r == ex.config.rounds):
            ex.phase, ex.phase_since = "evaluating", time.time()
            record["accuracy"], record["global_accuracy"] = ex.evaluator.evaluate(new_state.params)
        self.store.save_model(ex.run_id, r, new_state.params, new_state.masks)
        self.store.add_round(ex.run_id, record)
        self.events.publish(ex.run_id, "round", record)
        self.store.set_run_counters(ex.run_id, ex.counters)
        self.checkpoints.save(checkpoint_of(ex))  # after the round's row: a crash in between re-runs round r
        self.registry.flush()
        self._count_round(record, collector.upload_bytes, aggregation_s)
        log.info("%s", round_log_line(ex.run_id, ex.config.rounds, record))
        if r >= ex.config.rounds:
            self._publish_final_model(ex, record["accuracy"])
            self._finish(ex.run_id, "completed")
        else:
            ex.progress = (len(self._eligible(ex.config)), devices_needed(ex.config, r + 1))
            ex.phase, ex.phase_since = "waiting", time.time()
            self._try_begin_round(ex, time.time())

    def _publish_final_model(self, ex: RunExecution, accuracy: float | None) -> None:
        """``RunCompleted`` on the run's ``final`` topic: the model after the last round, which no round's
        broadcast carries, for the devices that keep it (``--model-onnx-path``; only they subscribe).
        Its encoded size is the run counter ``final_model_bytes`` (bytes per receiving device; the
        report's ``download_bytes`` counts the round broadcasts only, as the simulator does)."""
        data = self._sign(run_completed(ex.run_id, ex.server_round, ex.state.params, ex.state.masks, accuracy))
        self._publish(topics.final(ex.run_id), data, topics.QOS_FINAL)  # chunked by the link
        ex.counters["final_model_bytes"] = len(data)

    def _count_round(self, record: dict[str, Any], upload_bytes: int, aggregation_s: float) -> None:
        self.metrics.rounds_completed.inc()
        self.metrics.round_seconds.observe(record["seconds"])
        self.metrics.aggregation_seconds.observe(aggregation_s)
        self.metrics.upload_bytes.inc(upload_bytes)

    def _wire_since_last_round(self, ex: RunExecution) -> dict[str, dict[str, int]]:
        """Per device: MQTT bytes it sent (``up``) and received (``down``) since the previous round's row,
        from the cumulative counters its Status heartbeats report (so up to one heartbeat behind)."""
        out = {}
        for device_id in self.registry.online_ids():
            sent, received = self.registry.wire_bytes(device_id)
            if not sent and not received:  # no report yet (e.g. since a coordinator restart): keep the mark
                continue
            mark_sent, mark_received = ex.wire_marks.get(device_id, (0, 0))
            if sent < mark_sent or received < mark_received:  # the agent restarted: its counters began again
                mark_sent, mark_received = 0, 0
            up, down = sent - mark_sent, received - mark_received
            ex.wire_marks[device_id] = (sent, received)
            if up or down:
                out[device_id] = {"up": up, "down": down}
                ex.wire_upload_bytes += up
                ex.wire_download_bytes += down
        return dict(sorted(out.items()))

