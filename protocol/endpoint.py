"""The MQTT endpoint both sides connect to: one broker-URL parser for the coordinator and the agent,
the socket option both sides set on their connection (:func:`disable_nagle`), and the warning category
both sides give for a deprecated setting name.

Accepted: ``mqtt://HOST[:PORT]`` (plain, default port 1883) and ``mqtts://HOST[:PORT]`` (TLS,
default 8883); ``tcp://`` and ``ssl://`` are accepted synonyms. No path, query, fragment or
credentials in the URL (credentials go in their own settings, so they never end up in logs).
``[::1]``-style IPv6 hosts are accepted.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

PLAIN_SCHEMES = ("mqtt", "tcp")
TLS_SCHEMES = ("mqtts", "ssl")
BROKER_URL_HINT = "expected mqtt://HOST:PORT or mqtts://HOST:PORT, e.g. mqtt://127.0.0.1:1883"


class BrokerUrlError(ValueError):
    """A broker URL that does not parse; the message says what is wrong and shows the expected form."""


class DeprecatedSettingWarning(FutureWarning):
    """An old setting name was used (it still works); the message names the new one.

    A ``FutureWarning`` so Python shows it to the person running the command by default."""


@dataclass(frozen=True)
class BrokerAddress:
    """A parsed broker URL: ``host``, ``port``, ``tls``; ``url`` is its canonical form."""

    host: str
    port: int
    tls: bool

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"


def parse_broker_url(url: str) -> BrokerAddress:
    """The :class:`BrokerAddress` of ``url``; :class:`BrokerUrlError` naming the problem otherwise."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise BrokerUrlError(f"bad URL {url!r} ({exc}); {BROKER_URL_HINT}") from exc
    if parts.scheme not in PLAIN_SCHEMES + TLS_SCHEMES:
        raise BrokerUrlError(f"unsupported scheme in {url!r}; {BROKER_URL_HINT}")
    if not parts.hostname:
        raise BrokerUrlError(f"no host in {url!r}; {BROKER_URL_HINT}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise BrokerUrlError(f"unexpected path or query in {url!r}; {BROKER_URL_HINT}")
    if parts.username or parts.password:
        raise BrokerUrlError(f"credentials do not belong in the broker URL {parts.scheme}://...@{parts.hostname}; "
                             f"use the MQTT user name and password settings; {BROKER_URL_HINT}")
    tls = parts.scheme in TLS_SCHEMES
    return BrokerAddress(unquote(parts.hostname), port or (8883 if tls else 1883), tls)


def disable_nagle(sock: object) -> bool:
    """Set ``TCP_NODELAY`` on an MQTT client's connection (paho hands it to ``on_socket_open``); returns
    whether it was set (False for a socket without TCP options, e.g. a Unix socket or a websocket wrapper).

    MQTT is a write-write-read protocol: a device acknowledges a Task (PUBACK) and subscribes to the
    round's model in two small writes, then waits for the model. With Nagle's algorithm the second write
    waits for the broker's TCP ACK of the first, which the broker's delayed ACK holds for ~40 ms: 40 ms per
    round on every device's critical path (measured: bench/live_overhead.py, docs/results.md). paho 2.x
    does not set the option itself. Each packet is one ``send`` already, so no coalescing is lost."""
    setsockopt = getattr(sock, "setsockopt", None)
    family = getattr(sock, "family", None)
    if setsockopt is None or family not in (socket.AF_INET, socket.AF_INET6):
        return False
    try:
        setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        return False
    return True
