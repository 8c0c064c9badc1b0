"""Micro benchmark of the coordinator's MQTT link: paho's network thread and the decoder, through mosquitto.

A private mosquitto (unlimited in-flight and queued messages, as the fleet bench runs it); a ``CoordinatorLink``
subscribed as the coordinator is, its inbound queue drained by a thread that only counts; a separate publisher
process (paho) sends ``--heartbeats`` retained QoS 1 online Status messages (each device's own envelope) and
``--updates`` real updates (the fleet bench's density-0.2 MNIST CNN update, ``bench/update_ingest.py``, 2 chunks
of 128 KiB), interleaved. Prints the CPU seconds (psutil, user + system) of the link's paho network thread, its
decoder thread and the draining thread while the items arrive, the wall time and ``updates_per_s`` (updates over
that wall time); compare main and a branch by running it with each checkout first on ``PYTHONPATH``, alternating.
``--fold``: the draining thread also offers each update to a round collector (``RoundCollector.offer``: checks and
the fold into the aggregate, as the coordinator's main loop does), so the figure covers link -> inbound -> fold.
The inbound queue is the coordinator's own kind (``cloud.handoff_queue.HandOffQueue`` where the code measured has
it, ``queue.Queue`` before).

Usage: ``python bench/link_ingest.py [--heartbeats H] [--updates U] [--fold] [--json]``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path

# ``PYTHONPATH`` picks the code measured (so main's figure comes from this file too: ``PYTHONPATH=/work/main python
# bench/link_ingest.py``): the repository and this folder (for ``update_ingest``; last, since its ``field_trial.py``
# would hide the package of that name) go after it.
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != BENCH_DIR] + [os.path.dirname(BENCH_DIR), BENCH_DIR]


def publish_all(port: int, heartbeats: int, updates: int, go: threading.Event, payload: bytes) -> None:
    """Child process: connect, wait for ``go``, publish the heartbeats and updates (each device's envelope around
    ``payload``) interleaved, wait for PUBACKs."""
    import paho.mqtt.client as mqtt

    from protocol import Status, Update, encode_message, split_into_chunks, topics
    from protocol.envelope import encode_envelope

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="link-bench-publisher")
    client.max_inflight_messages_set(0)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    beats = [(topics.status(f"dev-{i:05d}"), encode_message(Status(f"dev-{i:05d}", "online"), seq=10 + i))
             for i in range(heartbeats)]
    go.wait()
    every = max(1, heartbeats // max(updates, 1))
    sent, infos = 0, []
    for i in range(max(heartbeats, updates)):
        if i < heartbeats:
            infos.append(client.publish(beats[i][0], beats[i][1], qos=1, retain=True))
        if i % every == 0 and sent < updates:
            device = f"dev-{sent:05d}"
            data = encode_envelope(Update.MESSAGE_TYPE, "run-bench", 1, device, 5, 1_700_000_000_000, payload, None)
            infos += [client.publish(topics.update("run-bench", device), chunk, qos=1)
                      for chunk in split_into_chunks(data)]
            sent += 1
    for info in infos:
        info.wait_for_publish(120)
    client.disconnect()
    client.loop_stop()


def thread_cpu() -> dict[str, float]:
    """CPU seconds of this process's link threads (paho network thread, decoder, the draining thread)."""
    import psutil

    names = {t.native_id: t.name for t in threading.enumerate()}
    out = {"paho": 0.0, "decoder": 0.0, "drain": 0.0}
    for t in psutil.Process().threads():
        name = names.get(t.id, "")
        key = ("decoder" if name == "mqtt-decoder" else "paho" if name.startswith("paho") else
               "drain" if name == "link-bench-drain" else "")
        if key:
            out[key] += t.user_time + t.system_time
    return out


def new_inbound() -> queue.Queue:
    """The coordinator's kind of inbound queue in the code measured (256 items, as ``CoordinatorServices``)."""
    try:
        from cloud.handoff_queue import HandOffQueue
    except ImportError:  # code from before HandOffQueue
        return queue.Queue(maxsize=256)
    return HandOffQueue(maxsize=256)  # type: ignore[return-value]


def measure(heartbeats: int, updates: int, fold: bool = False) -> dict[str, float | int]:
    from update_ingest import make_round

    from cloud.mqtt_link import CoordinatorLink
    from field_trial.private_mosquitto import PrivateMosquitto
    from protocol import Update

    collector, payload = make_round(max(updates, 1), False)  # devices dev-00000...: the ids the publisher uses
    broker = PrivateMosquitto(Path(tempfile.mkdtemp()), extra_config=["max_queued_messages 0",
                                                                      "max_inflight_messages 0"]).start()
    inbound = new_inbound()
    link = CoordinatorLink(inbound, host="127.0.0.1", port=broker.port, client_id="link-bench")
    counted = {"message": 0, "other": 0, "accepted": 0}

    def drain() -> None:
        while True:
            item = inbound.get()
            if fold and item.kind == "message" and isinstance(item.decoded.message, Update):
                counted["accepted"] += collector.offer(item.decoded.message, item.size).kind == "accepted"
            counted["message" if item.kind == "message" else "other"] += 1

    try:
        assert link.connect(10), "the link did not connect"
        threading.Thread(target=drain, name="link-bench-drain", daemon=True).start()
        go = multiprocessing.Event()
        publisher = multiprocessing.Process(target=publish_all, args=(broker.port, heartbeats, updates, go, payload))
        publisher.start()
        time.sleep(1.0)  # the publisher connected and encoded its messages
        before, started = thread_cpu(), time.perf_counter()
        go.set()
        while counted["message"] < heartbeats + updates and time.perf_counter() - started < 300:
            time.sleep(0.005)
        wall, after = time.perf_counter() - started, thread_cpu()
        publisher.join(60)
    finally:
        link.close()
        broker.stop()
    result: dict[str, float | int] = {f"{k}_cpu_s": round(after[k] - before[k], 3) for k in after}
    result.update(wall_s=round(wall, 3), messages=counted["message"], heartbeats=heartbeats, updates=updates,
                  updates_per_s=round(updates / wall, 1), fold=fold, accepted=counted["accepted"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heartbeats", type=int, default=8000)
    parser.add_argument("--updates", type=int, default=2000)
    parser.add_argument("--fold", action="store_true", help="offer each update to a round collector (the fold)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.heartbeats, args.updates, args.fold)
    if args.json:
        print(json.dumps(result))
        return
    print(f"link ingest, {args.heartbeats} heartbeats + {args.updates} updates through mosquitto: "
          f"{result['messages']} decoded in {result['wall_s']:.2f} s ({result['updates_per_s']:.0f} updates/s"
          f"{', folded: ' + str(result['accepted']) + ' accepted' if args.fold else ''}); "
          f"CPU s: paho {result['paho_cpu_s']:.3f}, "
          f"decoder {result['decoder_cpu_s']:.3f}, drain {result['drain_cpu_s']:.3f}")


if __name__ == "__main__":
    main()
