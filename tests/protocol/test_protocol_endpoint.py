"""protocol.endpoint: the one broker-URL parser of both sides, and both sides use it with the same verdicts."""

from __future__ import annotations

import socket

import pytest
from pydantic import ValidationError

from cloud.settings import CloudSettings
from edge_agent.config import AgentConfigError, AgentSettings
from protocol.endpoint import BrokerAddress, BrokerUrlError, disable_nagle, parse_broker_url

GOOD = {
    "mqtt://broker.local": BrokerAddress("broker.local", 1883, False),
    "mqtt://10.0.0.5:1884": BrokerAddress("10.0.0.5", 1884, False),
    "tcp://h:1": BrokerAddress("h", 1, False),
    "mqtts://broker.example.com": BrokerAddress("broker.example.com", 8883, True),
    "ssl://h:8884/": BrokerAddress("h", 8884, True),
    " mqtt://[::1]:1883 ": BrokerAddress("::1", 1883, False),
}
BAD = {
    "broker:1883": "unsupported scheme", "http://x:1": "unsupported scheme", "mqtt://:1883": "no host",
    "mqtt://u:p@h:1": "credentials", "mqtt://h:1/path": "unexpected path", "mqtt://h:1?x=1": "unexpected path",
    "mqtt://h:x": "bad URL", "mqtt://h:99999": "bad URL", "": "unsupported scheme",
}


@pytest.mark.parametrize("url, address", GOOD.items())
def test_good_urls_parse_the_same_on_both_sides(url, address):
    assert parse_broker_url(url) == address
    settings = CloudSettings(broker_url=url)
    assert (settings.broker_host, settings.broker_port, settings.broker_tls) == (address.host, address.port,
                                                                                 address.tls)
    assert AgentSettings(device_id="d", broker_url=url, insecure_unsigned_coordinator=True).broker_address == address


@pytest.mark.parametrize("url, words", BAD.items())
def test_bad_urls_are_refused_by_both_sides_with_the_same_reason(url, words):
    with pytest.raises(BrokerUrlError, match=words):
        parse_broker_url(url)
    with pytest.raises(ValidationError, match=words):
        CloudSettings(broker_url=url)
    with pytest.raises(AgentConfigError, match=f"--broker-url: .*{words}"):
        AgentSettings(device_id="d", broker_url=url, insecure_unsigned_coordinator=True)


def test_canonical_url():
    assert parse_broker_url("ssl://h").url == "mqtts://h:8883"
    assert parse_broker_url("mqtt://[::1]").url == "mqtt://[::1]:1883"


def test_disable_nagle_sets_tcp_nodelay_on_a_tcp_connection() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        with socket.create_connection(server.getsockname()) as client:
            assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0  # the kernel's default
            assert disable_nagle(client)
            assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_disable_nagle_leaves_what_has_no_tcp_options_alone() -> None:
    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:
        assert not disable_nagle(left)
    assert not disable_nagle(object())  # e.g. a websocket wrapper without setsockopt
