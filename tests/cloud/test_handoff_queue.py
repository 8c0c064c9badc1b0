"""HandOffQueue: the bound holds, a paused producer resumes, order is kept, batch takes, no item lost across threads."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from cloud.handoff_queue import HandOffQueue


def test_the_bound_holds_for_put_nowait_and_timed_put() -> None:
    q: HandOffQueue[int] = HandOffQueue(maxsize=3)
    for i in range(3):
        q.put_nowait(i)
    assert q.full() and q.qsize() == 3
    with pytest.raises(queue.Full):
        q.put_nowait(3)
    started = time.monotonic()
    with pytest.raises(queue.Full):
        q.put(3, timeout=0.1)
    assert time.monotonic() - started >= 0.09
    assert q.take_up_to(10) == [0, 1, 2]  # the refused items were not queued
    assert not q.full() and q.empty()


def test_a_paused_producer_resumes_when_the_consumer_takes() -> None:
    q: HandOffQueue[str] = HandOffQueue(maxsize=2)
    q.put("a")
    q.put("b")
    done = threading.Event()
    producer = threading.Thread(target=lambda: (q.put("c"), done.set()))
    producer.start()
    assert not done.wait(0.2)  # full: the producer waits
    assert q.get(timeout=1) == "a"
    assert done.wait(5.0)
    producer.join()
    assert q.take_up_to(5) == ["b", "c"] and q.pauses >= 1


def test_order_is_kept_and_take_up_to_takes_at_most_its_limit() -> None:
    q: HandOffQueue[int] = HandOffQueue(maxsize=0)  # unbounded
    for i in range(10):
        q.put(i)
    assert q.take_up_to(4) == [0, 1, 2, 3]
    assert q.get_nowait() == 4
    assert q.take_up_to(100) == [5, 6, 7, 8, 9]
    assert q.take_up_to(100) == []
    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.01)


def test_no_item_is_lost_or_reordered_with_producers_and_a_consumer_racing() -> None:
    bound, producers, per_producer = 7, 4, 5000
    q: HandOffQueue[tuple[int, int]] = HandOffQueue(maxsize=bound)
    peak = [0]

    def produce(p: int) -> None:
        for i in range(per_producer):
            q.put((p, i), timeout=30)

    threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
    for t in threads:
        t.start()
    got: list[tuple[int, int]] = []
    end = time.monotonic() + 60
    while len(got) < producers * per_producer and time.monotonic() < end:
        peak[0] = max(peak[0], q.qsize())
        batch = q.take_up_to(3)
        if not batch:
            try:
                batch = [q.get(timeout=0.5)]
            except queue.Empty:
                continue
        got.extend(batch)
    for t in threads:
        t.join(5)
    assert len(got) == producers * per_producer and q.empty()
    assert peak[0] <= bound
    for p in range(producers):  # each producer's items arrive in its order, none twice, none missing
        assert [i for (who, i) in got if who == p] == list(range(per_producer))
    assert q.pauses > 0  # the bound was actually reached and producers resumed
