"""A real uvicorn server (in a thread) around a coordinator the test owns, for HTTP streaming and browser tests."""

from __future__ import annotations

import threading
import time

import httpx
import uvicorn
from brokers import free_port

from cloud.app import create_app
from cloud.coordinator import Coordinator


class LiveServer:
    """``with LiveServer(coordinator) as server: server.url`` -> ``http://127.0.0.1:PORT``."""

    def __init__(self, coordinator: Coordinator):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(coordinator=coordinator), host="127.0.0.1", port=self.port,
                                log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        end = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > end:
                raise AssertionError("uvicorn did not come up")
            time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
