"""An in-process MQTT broker (amqtt, pure Python) for ``feddst demo`` and ``cloud serve --embedded-broker``.

Checked with paho-mqtt 2 clients: QoS 1, retained messages, last will, 128 KiB+ payloads all work
over **MQTT 3.1.1**. amqtt 0.12 does not speak MQTT 5 (a v5 CONNECT gets no CONNACK), so clients
of the embedded broker must connect with MQTT 3.1.1 (``clean_session=False`` gives the persistent
session). Anonymous access, loopback only: for demos and tests, not production (use mosquitto).

The broker runs on its own asyncio loop in a daemon thread::

    broker = EmbeddedBroker(port=0).start()    # port 0: a free port
    ... broker.url ...                         # mqtt://127.0.0.1:<port>
    broker.stop()
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from typing import Any

log = logging.getLogger(__name__)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _log_loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The broker loop's exception handler: one WARNING line naming the error, not asyncio's multi-line dump.

    amqtt lets some errors of one client's connection (a socket reset mid-packet, say) escape its
    handler; asyncio would log them as a traceback over many lines. The broker keeps serving the
    other clients either way; the traceback is logged only at DEBUG.
    """
    exc = context.get("exception")
    what = f"{type(exc).__name__}: {exc}" if exc is not None else "no exception"
    message = f"{context.get('message', 'error')} ({what})".replace("\n", " ")
    log.warning("embedded broker: %s; the broker keeps serving", message)
    if exc is not None and log.isEnabledFor(logging.DEBUG):
        log.debug("embedded broker traceback", exc_info=exc)


class EmbeddedBroker:
    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.host = host
        self.port = port or _free_port(host)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker: Any = None
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self, timeout_s: float = 15.0) -> EmbeddedBroker:
        """Start the broker thread; returns once it accepts connections (raises RuntimeError otherwise)."""
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self._thread = threading.Thread(target=self._run, name="embedded-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s) or self._error is not None:
            raise RuntimeError(f"embedded MQTT broker did not start on {self.url}: {self._error}")
        return self

    def _run(self) -> None:
        from amqtt.broker import Broker

        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(_log_loop_exception)
        asyncio.set_event_loop(self._loop)
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}", "max_connections": 0}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }

        async def main() -> None:
            self._broker = Broker(config)
            await self._broker.start()
            self._ready.set()
            while not self._stopped.is_set():
                await asyncio.sleep(0.1)
            await self._broker.shutdown()

        try:
            self._loop.run_until_complete(main())
        except BaseException as exc:  # noqa: BLE001 - reported to start() / logged
            self._error = exc
            self._ready.set()
            log.exception("embedded broker failed")
        finally:
            self._loop.close()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
