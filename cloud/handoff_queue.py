"""``HandOffQueue``: a bounded FIFO between producer threads and one consumer thread whose taking side does no
lock or condition work.

``queue.Queue`` takes its mutex on every ``put`` and ``get`` and notifies a condition on each (``not_empty``
for the taker, ``not_full`` for a waiting putter): under the coordinator's load (paho's network thread, the
decoder and the main loop contending for the GIL) each of those is a possible hand-off of the GIL. This queue
keeps the items in a ``queue.SimpleQueue`` (C, lock-free for the caller) and enforces the bound on the
producer side only: producers count the items they put (under a producer-side lock), the consumer counts the
items it took (a plain integer only it writes), and the difference is the number queued. A producer that finds
the queue full clears the ``room`` event, says it paused, and waits on ``room``; the consumer sets ``room`` only
when a producer said so, so its hot path (``get``, ``take_up_to``) is one ``SimpleQueue`` call and two integer
updates.

The bound is exact (a producer adds an item only when put - taken < ``maxsize`` under the producer lock, and
``taken`` only grows). ``maxsize <= 0``: unbounded. One consumer thread only (``taken`` has one writer);
any number of producers. ``put`` / ``put_nowait`` raise ``queue.Full``, ``get`` / ``get_nowait`` raise
``queue.Empty``, as ``queue.Queue`` does, so callers written for it keep working.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Generic, TypeVar

T = TypeVar("T")


class HandOffQueue(Generic[T]):
    """Bounded (``maxsize`` items) FIFO, many producers, one consumer (see the module docstring)."""

    def __init__(self, maxsize: int = 0):
        self.maxsize = maxsize
        self._items: queue.SimpleQueue[T] = queue.SimpleQueue()
        self._put_count = 0  # written by producers under _put_lock
        self._taken = 0  # written by the consumer only
        self._put_lock = threading.Lock()
        self._room = threading.Event()
        self._producer_paused = False  # a producer found the queue full and waits on _room
        self.pauses = 0  # times a producer had to wait (or gave up) for room

    # --- producer side --------------------------------------------------------------------------

    def put_nowait(self, item: T) -> None:
        """Queue ``item`` or raise ``queue.Full`` at once."""
        self.put(item, block=False)

    def put(self, item: T, block: bool = True, timeout: float | None = None) -> None:
        """Queue ``item``, waiting for room at most ``timeout`` seconds (None: as long as it takes; ``block``
        False: not at all); ``queue.Full`` when there is still none."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._put_lock:
                if self.maxsize <= 0 or self._put_count - self._taken < self.maxsize:
                    self._put_count += 1
                    self._items.put(item)
                    return
                if not block:
                    self.pauses += 1
                    raise queue.Full
                self._room.clear()
                self._producer_paused = True
                self.pauses += 1
            # The consumer may have taken items between the check and the flag: look again before waiting
            # (it sets _room for any take after the flag was raised, so no wake-up is lost).
            if self._put_count - self._taken < self.maxsize:
                continue
            left = None if end is None else max(0.0, end - time.monotonic())
            if not self._room.wait(left):
                block = False  # out of time: one last look, then queue.Full

    # --- consumer side (one thread) -------------------------------------------------------------

    def _took(self, count: int) -> None:
        self._taken += count
        if self._producer_paused:
            self._producer_paused = False
            self._room.set()

    def get(self, block: bool = True, timeout: float | None = None) -> T:
        """The oldest item, waiting at most ``timeout`` seconds for one (``queue.Empty`` otherwise)."""
        item = self._items.get(block, timeout)
        self._took(1)
        return item

    def get_nowait(self) -> T:
        return self.get(block=False)

    def take_up_to(self, limit: int) -> list[T]:
        """Up to ``limit`` of the items queued now, oldest first (never waits)."""
        items = self._items
        count = min(limit, items.qsize())
        taken = [items.get_nowait() for _ in range(count)]
        if taken:
            self._took(len(taken))
        return taken

    # --- either side ------------------------------------------------------------------------------

    def qsize(self) -> int:
        """Items queued now (approximate while producers put)."""
        return self._items.qsize()

    def empty(self) -> bool:
        return self._items.empty()

    def full(self) -> bool:
        return self.maxsize > 0 and self._put_count - self._taken >= self.maxsize
