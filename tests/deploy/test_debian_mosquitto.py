"""The shipped ``deploy/mosquitto/feddst.conf`` on a stock Debian layout: ``mosquitto.conf`` as Debian ships
it (pid file, persistence, persistence_location, log file, ``include_dir conf.d``) plus our file in
``conf.d/``, every path moved into a temp dir and the ports rewritten to free ones. The broker must start
(Debian's file already sets ``persistence_location``: a repeat makes mosquitto refuse to start) and enforce
authentication, with TLS on and devices enrolled at run time through the dynamic-security plugin.
"""

from __future__ import annotations

import os
import queue
import subprocess
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from brokers import free_port, init_dynsec, mosquitto_binary, wait_for_port
from certificates import CertificateAuthority

from cloud.enrollment import EnrollmentService
from cloud.settings import CloudSettings
from cloud.store import CoordinatorStore
from edge_agent.config import AgentSettings
from edge_agent.mqtt_adapter import DeviceLink, LinkDown, LinkRefused, LinkUp
from protocol import topics

REPO = Path(__file__).resolve().parents[2]
# /etc/mosquitto/mosquitto.conf of Debian's mosquitto package (comments dropped), paths under ROOT.
DEBIAN_MOSQUITTO_CONF = """\
pid_file ROOT/run/mosquitto/mosquitto.pid

persistence true
persistence_location ROOT/var/lib/mosquitto/

log_dest file ROOT/var/log/mosquitto/mosquitto.log

include_dir ROOT/etc/mosquitto/conf.d
"""
ADMIN_PASSWORD = "admin-pw"
COORDINATOR_PASSWORD = "coordinator-pw"


def connect(port: int, username: str | None, password: str | None, *, client_id: str,
            ca_file: Path | None = None) -> tuple[mqtt.Client, queue.Queue]:
    events: queue.Queue = queue.Queue()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if username is not None:
        client.username_pw_set(username, password)
    if ca_file is not None:
        client.tls_set(ca_certs=str(ca_file))
    client.on_connect = lambda c, u, f, rc, p: events.put(("connack", rc.is_failure))
    client.on_disconnect = lambda c, u, f, rc, p: events.put(("disconnect", str(rc)))
    client.connect("127.0.0.1", port, keepalive=10)
    client.loop_start()
    return client, events


def first(events: queue.Queue, kind: str, timeout_s: float = 5.0) -> tuple | None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            event = events.get(timeout=0.05)
        except queue.Empty:
            continue
        if event[0] == kind:
            return event
    return None


@pytest.fixture
def debian_broker(tmp_path: Path):
    root = tmp_path / "root"
    for sub in ("run/mosquitto", "var/lib/mosquitto", "var/log/mosquitto", "etc/mosquitto/conf.d",
                "etc/mosquitto/certs"):
        (root / sub).mkdir(parents=True)
    etc = root / "etc/mosquitto"
    ca = CertificateAuthority(tmp_path / "pki")
    server = ca.issue("broker", server=True)
    for name, source in (("ca.crt", ca.cert_file), ("broker.crt", server.cert), ("broker.key", server.key)):
        (etc / "certs" / name).write_bytes(source.read_bytes())
    init_dynsec(root / "var/lib/mosquitto/dynamic-security.json", "feddst-admin", ADMIN_PASSWORD)
    plain, tls = free_port(), free_port()
    shipped = (REPO / "deploy/mosquitto/feddst.conf").read_text()
    assert "listener 1883 127.0.0.1\n" in shipped and "listener 8883\n" in shipped  # loopback plain, TLS for all
    ours = (shipped.replace("/etc/mosquitto/", f"{etc}/").replace("/var/lib/mosquitto/", f"{root}/var/lib/mosquitto/")
            .replace("listener 1883 127.0.0.1", f"listener {plain} 127.0.0.1")
            .replace("listener 8883", f"listener {tls} 127.0.0.1"))
    (etc / "conf.d/feddst.conf").write_text(ours)
    debian = DEBIAN_MOSQUITTO_CONF.replace("ROOT", str(root))
    if os.geteuid() == 0:
        debian += "user root\n"  # else mosquitto drops to user mosquitto, which cannot read pytest's tmp dirs
    (etc / "mosquitto.conf").write_text(debian)
    proc = subprocess.Popen([mosquitto_binary(), "-c", str(etc / "mosquitto.conf")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        try:
            wait_for_port(plain, 5.0)
            wait_for_port(tls, 5.0)
        except TimeoutError:
            proc.terminate()
            log = proc.communicate(timeout=5)[0].decode(errors="replace")
            log += (root / "var/log/mosquitto/mosquitto.log").read_text(errors="replace")
            raise AssertionError(f"mosquitto did not start with the shipped config: {log}") from None
        yield plain, tls, ca, root, tmp_path
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    log = (root / "var/log/mosquitto/mosquitto.log").read_text(errors="replace")
    assert "Error" not in log, log


def test_shipped_config_starts_beside_debians_and_enforces_auth(debian_broker) -> None:
    plain, tls, ca, root, tmp_path = debian_broker
    # Nobody anonymous, on either listener; TLS needs the broker's CA.
    for port, ca_file in ((plain, None), (tls, ca.cert_file)):
        client, events = connect(port, None, None, client_id="anonymous", ca_file=ca_file)
        assert first(events, "connack") == ("connack", True)
        client.loop_stop()
    client, events = connect(plain, "feddst-admin", "wrong", client_id="guess")
    assert first(events, "connack") == ("connack", True)
    client.loop_stop()

    settings = CloudSettings(broker_url=f"mqtt://127.0.0.1:{plain}", device_broker_url=f"mqtts://127.0.0.1:{tls}",
                             ca_file=None, mqtt_password=COORDINATOR_PASSWORD, broker_admin_password=ADMIN_PASSWORD,
                             state_dir=tmp_path / "state")
    service = EnrollmentService(settings, CoordinatorStore(settings.state_dir))
    service.setup_broker()
    bundle_a, bundle_b = service.enroll("dev-a"), service.enroll("dev-b")
    assert bundle_a.broker_url == f"mqtts://127.0.0.1:{tls}"

    # The agent connects over TLS with its bundle's credentials and the private CA.
    events: queue.Queue = queue.Queue()
    agent = DeviceLink(AgentSettings(device_id="dev-b", broker_url=bundle_b.broker_url, ca_file=str(ca.cert_file),
                                     password=bundle_b.mqtt_password, mqtt_protocol="5",
                                     coordinator_public_key=bundle_b.coordinator_public_key),
                       b"offline", topics.status("dev-b"), events)
    agent.start()
    try:
        assert isinstance(first_link_event(events), LinkUp)
        # dev-a with valid credentials claims dev-b's client id: the broker uses dev-a's user name as its
        # client id, so dev-b is not knocked offline.
        intruder, intruder_events = connect(tls, "dev-a", bundle_a.mqtt_password, client_id="dev-b",
                                            ca_file=ca.cert_file)
        assert first(intruder_events, "connack") == ("connack", False)
        time.sleep(0.5)
        assert agent.connected
        assert not any(isinstance(e, LinkDown | LinkRefused) for e in drain(events))
        intruder.disconnect()
        intruder.loop_stop()
        # Revocation disconnects the device at once, and it cannot come back.
        service.revoke("dev-b")
        assert isinstance(first_link_event(events), LinkDown)
        assert isinstance(first_link_event(events, timeout_s=8.0), LinkRefused)
    finally:
        agent.stop()
        service.store.close()


def first_link_event(events: queue.Queue, timeout_s: float = 5.0) -> object:
    try:
        return events.get(timeout=timeout_s)
    except queue.Empty:
        return None


def drain(events: queue.Queue) -> list:
    out = []
    while not events.empty():
        out.append(events.get_nowait())
    return out
