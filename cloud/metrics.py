"""``CoordinatorMetrics``: the Prometheus metrics of one coordinator (``prometheus-client``), served at ``/metrics``.

Every coordinator owns its own :class:`prometheus_client.CollectorRegistry` (several coordinators
may live in one process, e.g. in tests), so nothing is registered globally. Counters are
incremented by the coordinator's main loop where the event happens; gauges that mirror live
state (devices online, inbound queue depth, broker connection) are read when scraped.

Metric names (the ``_total`` suffix of counters is added by the exposition format):

* ``feddst_rounds_completed_total``: rounds closed and recorded (all runs).
* ``feddst_round_duration_seconds``: histogram, wall-clock from a round's first task to its close.
* ``feddst_aggregation_seconds``: histogram, time spent folding a round's accepted updates into the
  aggregation plus finishing it (per round).
* ``feddst_upload_payload_bytes_total`` / ``feddst_download_payload_bytes_total``: the bytes the
  run's round records count (encoded protocol messages: accepted updates up; model broadcast x
  selected devices down), so they equal the last round's cumulative ``upload_bytes`` /
  ``download_bytes`` summed over runs.
* ``feddst_mqtt_payload_bytes_total{direction="received"|"sent"}``: every MQTT payload the
  coordinator's link received or published, chunk headers included (MQTT framing excluded): the
  closest to wire bytes the coordinator can see.
* ``feddst_mqtt_wire_bytes_total{direction="received"|"sent"}``: every byte the coordinator's MQTT
  client read from or wrote to its broker socket (all packets: framing, topics, acks, pings; under
  TLS the MQTT bytes, not the TLS records), counted where paho touches the socket.
* ``feddst_mqtt_dropped_packets_total``: received packets dropped because the link's callback ->
  decoder queue was full (``mqtt_receive_queue_packets``; the network thread never blocks, anything
  here is lost work); ``feddst_broker_disconnects_total``: losses of the broker connection.
  These, the payload bytes and the wire bytes are counted by the MQTT link itself and read when scraped.
* ``feddst_updates_total{verdict}``: update verdicts (``accepted``, ``duplicate``, ``stale``,
  ``unselected``, ``invalid``; an update for a run that is not active is ``stale``).
* ``feddst_device_errors_total{code}``: error reports from devices, by reason code.
* ``feddst_devices_online``, ``feddst_inbound_queue_depth``, ``feddst_broker_connected`` (1/0),
  ``feddst_active_runs`` (0/1): gauges.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from cloud.mqtt_link import LinkCounters
from cloud.round_collector import VERDICTS

ROUND_SECONDS_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, float("inf"))
AGGREGATION_SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, float("inf"))


class _LinkCollector(Collector):
    """Exposes :class:`LinkCounters` as Prometheus counters (values owned by the link, not incremented here)."""

    def __init__(self, read: Callable[[], LinkCounters]):
        self._read = read

    def describe(self) -> Iterator[Metric]:
        """The families without values (the registry asks at registration, before the link exists)."""
        return self._families(None)

    def collect(self) -> Iterator[Metric]:
        return self._families(self._read())

    @staticmethod
    def _families(counts: LinkCounters | None) -> Iterator[Metric]:
        payload = CounterMetricFamily("feddst_mqtt_payload_bytes", "MQTT payload bytes received or published by the "
                                      "coordinator (chunk headers included, MQTT framing excluded).",
                                      labels=("direction",))
        wire = CounterMetricFamily("feddst_mqtt_wire_bytes", "Bytes the coordinator's MQTT client read from / "
                                   "wrote to its broker socket (all MQTT packets).", labels=("direction",))
        dropped = CounterMetricFamily("feddst_mqtt_dropped_packets", "MQTT packets dropped because the callback "
                                      "-> decoder queue was full.")
        disconnects = CounterMetricFamily("feddst_broker_disconnects", "Losses of the MQTT broker connection.")
        if counts is not None:
            payload.add_metric(("received",), counts.payload_received_bytes)
            payload.add_metric(("sent",), counts.payload_sent_bytes)
            wire.add_metric(("received",), counts.wire_received_bytes)
            wire.add_metric(("sent",), counts.wire_sent_bytes)
            dropped.add_metric((), counts.dropped_packets)
            disconnects.add_metric((), counts.broker_disconnects)
        yield payload
        yield wire
        yield dropped
        yield disconnects


class CoordinatorMetrics:
    """The coordinator's metrics; ``render()`` is the ``/metrics`` body (``CONTENT_TYPE`` its media type)."""

    CONTENT_TYPE = CONTENT_TYPE_LATEST

    def __init__(self, *, devices_online: Callable[[], int], inbound_depth: Callable[[], int],
                 broker_connected: Callable[[], bool], active_runs: Callable[[], int],
                 link_counters: Callable[[], LinkCounters]):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.rounds_completed = Counter("feddst_rounds_completed", "Rounds closed and recorded.", registry=r)
        self.round_seconds = Histogram("feddst_round_duration_seconds", "Wall-clock seconds from a round's first "
                                       "task to its close.", buckets=ROUND_SECONDS_BUCKETS, registry=r)
        self.aggregation_seconds = Histogram("feddst_aggregation_seconds", "Seconds spent aggregating one round's "
                                             "accepted updates (streaming adds + finish).",
                                             buckets=AGGREGATION_SECONDS_BUCKETS, registry=r)
        self.upload_bytes = Counter("feddst_upload_payload_bytes", "Encoded bytes of accepted updates (the "
                                    "rounds' upload_bytes).", registry=r)
        self.download_bytes = Counter("feddst_download_payload_bytes", "Encoded model broadcast bytes x devices "
                                      "sent to (the rounds' download_bytes).", registry=r)
        self.updates = Counter("feddst_updates", "Updates received, by verdict.", labelnames=("verdict",),
                               registry=r)
        self.device_errors = Counter("feddst_device_errors", "Error reports from devices, by reason code.",
                                     labelnames=("code",), registry=r)
        Gauge("feddst_devices_online", "Devices online now.", registry=r).set_function(devices_online)
        Gauge("feddst_inbound_queue_depth", "Messages waiting for the coordinator's main loop.",
              registry=r).set_function(inbound_depth)
        Gauge("feddst_broker_connected", "1 while the coordinator is connected to the MQTT broker.",
              registry=r).set_function(lambda: 1.0 if broker_connected() else 0.0)
        Gauge("feddst_active_runs", "Runs running now (0 or 1).", registry=r).set_function(active_runs)
        r.register(_LinkCollector(link_counters))
        # The labelled children, made once (zeros from the start, so rates work from the first scrape); the hot
        # path (every update) uses these: ``labels()`` costs ~35 us a call.
        self.updates_by_verdict = {verdict: self.updates.labels(verdict=verdict) for verdict in VERDICTS}

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
