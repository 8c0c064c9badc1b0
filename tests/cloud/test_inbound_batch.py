"""The main loop's handling of a batch of inbound items (``InboundHandling``): the round is ticked after each
item that can change it, not after every online/busy heartbeat (one tick after the batch covers those), and the
queue is drained in order, up to the batch's limit, waking a decoder that waits for room."""

from __future__ import annotations

import contextlib
import threading
from types import SimpleNamespace

from cloud.handoff_queue import HandOffQueue
from cloud.inbound_handling import InboundHandling
from cloud.mqtt_link import Inbound
from protocol import DeviceError, Status, Update, decode_message_with_envelope, encode_message


def _item(message, sender: str, seq: int) -> Inbound:  # noqa: ANN001
    return Inbound("message", decoded=decode_message_with_envelope(encode_message(message, sender_id=sender, seq=seq)))


def _update(device: str) -> Update:
    return Update(run_id="run-1", server_round=1, device_id=device, tensors={}, mask_changes={}, sample_count=1,
                  train_loss=0.0, compute_s=0.0)


def _recording_handling(events: list[str]) -> InboundHandling:
    handling = InboundHandling.__new__(InboundHandling)  # only what _handle_batch calls, recorded
    handling.replay_guard = SimpleNamespace(batched=contextlib.nullcontext)
    handling.registry = SimpleNamespace(deferred_flush=contextlib.nullcontext)
    handling._admit = lambda item: True  # type: ignore[method-assign]
    handling._handle = lambda item: events.append(type(item.decoded.message).__name__)  # type: ignore[method-assign]
    handling._tick = lambda: events.append("tick")  # type: ignore[method-assign]
    return handling


def test_heartbeats_are_ticked_once_after_the_batch_and_everything_else_after_itself() -> None:
    events: list[str] = []
    batch = [_item(Status("a", "online"), "a", 1), _item(Status("b", "busy"), "b", 1),
             _item(_update("a"), "a", 2), _item(Status("c", "online"), "c", 1),
             _item(Status("d", "offline"), "d", 1),  # a last will: a selected device may be gone
             _item(DeviceError("run-1", 1, "b", "training_failed", "x"), "b", 2),
             _item(Status("e", "online"), "e", 1)]
    _recording_handling(events)._handle_batch(batch)
    assert events == ["Status", "Status", "Update", "tick", "Status", "Status", "tick", "DeviceError", "tick",
                      "Status", "tick"]


def test_a_batch_ending_with_a_non_heartbeat_is_not_ticked_twice() -> None:
    events: list[str] = []
    _recording_handling(events)._handle_batch([_item(Status("a", "online"), "a", 1), _item(_update("a"), "a", 2)])
    assert events == ["Status", "Update", "tick"]
    events.clear()
    _recording_handling(events)._handle_batch([])
    assert events == ["tick"]


def test_draining_takes_the_oldest_items_up_to_the_limit_and_wakes_a_waiting_producer() -> None:
    inbound: HandOffQueue[Inbound] = HandOffQueue(maxsize=3)
    handling = InboundHandling.__new__(InboundHandling)
    handling.inbound = inbound
    for i in range(3):
        inbound.put(Inbound("message", topic=f"t{i}"))
    put_done = threading.Event()
    producer = threading.Thread(target=lambda: (inbound.put(Inbound("message", topic="t3")), put_done.set()))
    producer.start()  # blocks: the queue is full
    assert not put_done.wait(0.2)
    assert [item.topic for item in handling._take_queued(2)] == ["t0", "t1"]
    assert put_done.wait(5.0)  # the producer was woken and its item queued
    producer.join()
    assert [item.topic for item in handling._take_queued(10)] == ["t2", "t3"]
    assert handling._take_queued(10) == [] and inbound.qsize() == 0
    inbound.put(Inbound("message", topic="t4"))
    assert [item.topic for item in handling._take_queued(10, wait_s=0.05)] == ["t4"]
