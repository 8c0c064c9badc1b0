"""The link's decoder hands the main loop decoded messages without their wire bytes: the envelope's payload
view (into the reassembled message) is let go; the decoded values are copies (tests/protocol checks that)."""

from __future__ import annotations

import queue

import numpy as np

from cloud.mqtt_link import CoordinatorLink, _RawPacket
from protocol import SparseTensor, Update, encode_message, split_into_chunks, topics


def _update() -> Update:
    rng = np.random.default_rng(5)
    tensors = {"w": SparseTensor((300, 100), rng.standard_normal(30_000).astype(np.float32)),
               "b": SparseTensor((7,), np.arange(7, dtype=np.float32))}
    return Update("run-1", 2, "dev-1", tensors, {}, 12, 0.5, 1.5, 99)


def test_decoded_updates_hold_no_view_of_the_received_bytes() -> None:
    link = CoordinatorLink(queue.Queue(), host="127.0.0.1", port=1)  # never connected: only its decoder is used
    topic = topics.update("run-1", "dev-1")
    for compression in ("none", "zstd"):
        update = _update()
        data = encode_message(update, compression=compression)
        packets = split_into_chunks(data, 64_000)
        items = [link._decode(_RawPacket(topic, p, False, 0.0)) for p in packets]  # type: ignore[arg-type]
        item = items[-1]
        assert items[:-1] == [None] * (len(packets) - 1) and item is not None and item.kind == "message"
        assert item.decoded is not None and item.decoded.envelope.payload.nbytes == 0
        assert item.decoded.message == update and item.size == len(data)
