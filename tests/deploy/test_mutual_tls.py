"""Mutual TLS on a real mosquitto TLS listener, with a private CA made in the test.

The broker takes the client certificate's CN as the user name (``use_identity_as_username``), so the CN is
the device id and the device's dynsec ACL role applies to it; agents (``edge_agent``) and the coordinator
(``cloud``) connect with ``ca_file`` plus a client certificate, and are refused without one or with a
certificate from another CA.
"""

from __future__ import annotations

import queue
import socket
import time
from pathlib import Path

import pytest
from brokers import MosquittoBroker, free_port, init_dynsec
from certificates import CertificateAuthority

from cloud.broker_admin import DynsecAdmin
from cloud.mqtt_link import CoordinatorLink, TlsFiles
from edge_agent.config import AgentConfigError, AgentSettings
from edge_agent.mqtt_adapter import DeviceLink, LinkUp
from protocol import topics

COORDINATOR_PUBLIC_KEY = "11" * 32  # any well-formed key: these tests check the TLS connection only
ADMIN_PASSWORD = "admin-pw"


@pytest.fixture
def tls_broker(tmp_path: Path):
    ca = CertificateAuthority(tmp_path / "pki")
    server = ca.issue("broker", server=True)
    tls_port = free_port()
    dynsec = init_dynsec(tmp_path / "broker" / "dynamic-security.json", "feddst-admin", ADMIN_PASSWORD)
    broker = MosquittoBroker(tmp_path / "broker", dynsec_config=dynsec, extra_config=[
        "use_username_as_clientid true",
        f"listener {tls_port} 127.0.0.1", f"cafile {ca.cert_file}", f"certfile {server.cert}",
        f"keyfile {server.key}", "require_certificate true", "use_identity_as_username true",
        "use_username_as_clientid true"]).start()
    with DynsecAdmin("127.0.0.1", broker.port, "feddst-admin", ADMIN_PASSWORD) as admin:
        admin.add_device("dev-a", "unused-with-certificates")
        admin.ensure_coordinator("coordinator", "unused-with-certificates")
    try:
        yield broker, tls_port, ca
    finally:
        broker.stop()


def agent_link(port: int, ca: CertificateAuthority, cert: Path | None,
               key: Path | None) -> tuple[DeviceLink, queue.Queue]:
    settings = AgentSettings(device_id="dev-a", broker_url=f"mqtts://127.0.0.1:{port}", ca_file=str(ca.cert_file),
                             tls_cert_file=str(cert) if cert else None, tls_key_file=str(key) if key else None,
                             reconnect_min_s=5.0, reconnect_max_s=5.0, coordinator_public_key=COORDINATOR_PUBLIC_KEY)
    events: queue.Queue = queue.Queue()
    link = DeviceLink(settings, b"offline", topics.status("dev-a"), events)
    link.start()
    return link, events


def no_delay(sock: object) -> bool:
    return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))  # type: ignore[attr-defined]


def wait_link_up(events: queue.Queue, timeout_s: float = 4.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            if isinstance(events.get(timeout=0.1), LinkUp):
                return True
        except queue.Empty:
            pass
    return False


def test_agent_with_a_valid_client_certificate_connects_as_its_cn(tls_broker, tmp_path: Path) -> None:
    broker, tls_port, ca = tls_broker
    device = ca.issue("dev-a")
    link, events = agent_link(tls_port, ca, device.cert, device.key)
    try:
        assert wait_link_up(events)
        assert no_delay(link.client.socket())  # set on the TLS socket too (protocol.endpoint.disable_nagle)
        # The CN is the user name: dev-a's ACL role lets it write its own status, not dev-b's.
        assert link.publish(topics.status("dev-a"), b"x", qos=1)
        assert link.publish(topics.status("dev-b"), b"x", qos=1)
        refused = []
        end = time.monotonic() + 3
        while time.monotonic() < end and not refused:
            try:
                event = events.get(timeout=0.1)
            except queue.Empty:
                continue
            if type(event).__name__ == "PublishRefused":
                refused.append(event.topic)
        assert refused == [topics.status("dev-b")]
    finally:
        link.stop()


@pytest.mark.parametrize("who", ["no certificate", "another CA"])
def test_agent_without_a_certificate_of_this_ca_is_refused(tls_broker, tmp_path: Path, who: str) -> None:
    broker, tls_port, ca = tls_broker
    if who == "no certificate":
        cert = key = None
    else:
        stranger = CertificateAuthority(tmp_path / "other-pki", "Some other CA").issue("dev-a")
        cert, key = stranger.cert, stranger.key
    link, events = agent_link(tls_port, ca, cert, key)
    try:
        assert not wait_link_up(events, 2.0)
    finally:
        link.stop()


def test_coordinator_connects_with_private_ca_and_client_certificate(tls_broker) -> None:
    broker, tls_port, ca = tls_broker
    issued = ca.issue("coordinator")
    link = CoordinatorLink(queue.Queue(), host="127.0.0.1", port=tls_port, tls=True,
                           tls_files=TlsFiles(str(ca.cert_file), str(issued.cert), str(issued.key)))
    try:
        assert link.connect(5.0)
        assert no_delay(link.client.socket())
        assert link.publish(topics.task("run-1"), b"x").ok
    finally:
        link.close()
    bare = CoordinatorLink(queue.Queue(), host="127.0.0.1", port=tls_port, tls=True,
                           tls_files=TlsFiles(str(ca.cert_file)))
    try:
        assert not bare.connect(2.0)
    finally:
        bare.close()


def test_tls_settings_are_checked(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "pki")
    leaf = ca.issue("dev-a")
    with pytest.raises(AgentConfigError, match="--tls-cert-file.*both"):
        AgentSettings(device_id="dev-a", broker_url="mqtts://h:8883", tls_cert_file=str(leaf.cert))
    with pytest.raises(AgentConfigError, match="--tls-cert-file.*mqtts://"):
        AgentSettings(device_id="dev-a", broker_url="mqtt://h:1883", tls_cert_file=str(leaf.cert),
                      tls_key_file=str(leaf.key))
    with pytest.raises(AgentConfigError, match="--ca-file: .*missing.pem is not a readable file"):
        AgentSettings(device_id="dev-a", broker_url="mqtts://h:8883", ca_file=str(tmp_path / "missing.pem"))
    with pytest.raises(AgentConfigError, match="--username: .*must be the device id"):
        AgentSettings(device_id="dev-a", username="dev-b")
    from pydantic import ValidationError

    from cloud.settings import CloudSettings

    with pytest.raises(ValidationError, match="cert_file and key_file go together"):
        CloudSettings(broker_url="mqtts://h:8883", cert_file=leaf.cert)
    with pytest.raises(ValidationError, match="need an mqtts:// broker_url"):
        CloudSettings(broker_url="mqtt://h:1883", ca_file=ca.cert_file)
    with pytest.raises(ValidationError, match="ca_file: .* is not a file"):
        CloudSettings(broker_url="mqtts://h:8883", ca_file=tmp_path / "nope.pem")
    settings = CloudSettings(broker_url="mqtts://h:8883", ca_file=ca.cert_file, cert_file=leaf.cert, key_file=leaf.key)
    assert settings.tls_files() == TlsFiles(str(ca.cert_file), str(leaf.cert), str(leaf.key))
