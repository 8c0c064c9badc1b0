"""A private mosquitto for a trial or a bench: the Debian ``mosquitto`` binary on a free port, plus its
``$SYS/broker/bytes/received|sent`` counters read by a byte-counting client.

The broker's config is written here (listener, no persistence, ``sys_interval``, and optionally a
password file, an ACL file or the dynamic-security plugin: what the tests exercise auth with), so its
``$SYS`` byte counters are fresh every ``sys_interval`` seconds; :class:`BrokerByteCounters` subscribes
to them. Its
own MQTT traffic is in the broker's totals too, so it counts its socket bytes
(:class:`~cloud.mqtt_link.WireCountingClient`) for the caller to add to the clients' side.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the OS's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if a TCP listener could bind ``host:port`` now (with ``SO_REUSEADDR``, as mosquitto binds: the
    closed connections a stopped broker leaves in TIME_WAIT do not hold the port, a listener does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    """Return once 127.0.0.1:``port`` accepts a TCP connection; ``TimeoutError`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


def find_mosquitto() -> str | None:
    """The mosquitto binary's path, or None when it is not installed."""
    return shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)


class MosquittoError(RuntimeError):
    """mosquitto is missing or did not start; the message says which and what to do."""


@dataclass
class PrivateMosquitto:
    """One mosquitto process with its config and log in ``workdir``; anonymous unless given users.

    ``host`` is the listener address (``0.0.0.0`` when devices reach it from network namespaces);
    ``sys_interval_s`` how often mosquitto republishes ``$SYS`` (0: never); ``passwords`` (username ->
    password) a password file (``mosquitto_passwd``); ``acl_lines`` an ``acl_file``; ``dynsec_config``
    the dynamic-security plugin's file (users and roles changed at run time; ``mosquitto_ctrl dynsec
    init`` makes one); ``extra_config`` lines appended as they are; ``environment`` variables set for the
    mosquitto process on top of this one's (e.g. ``GLIBC_TUNABLES`` for its allocator); ``bridge_to`` the port
    of another broker on 127.0.0.1 that this one bridges to (MQTT 3.1.1, clean session, QoS as each ``bridge_topics``
    line says: ``pattern in|out|both qos``, mosquitto's ``topic`` syntax; loop-free by ``try_private``).
    """

    workdir: Path
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    sys_interval_s: int = 1
    extra_config: list[str] = field(default_factory=list)
    passwords: dict[str, str] = field(default_factory=dict)
    acl_lines: list[str] = field(default_factory=list)
    dynsec_config: Path | None = None
    bridge_to: int | None = None
    bridge_topics: list[str] = field(default_factory=lambda: ["# both 1"])
    environment: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def config_lines(self) -> list[str]:
        """The config (written to ``workdir``); writes the password and ACL files it names."""
        lines = [f"listener {self.port} {self.host}", "persistence false", "log_dest stderr", "log_type error",
                 "log_type warning", f"sys_interval {self.sys_interval_s}"]
        if os.geteuid() == 0 and not any(line.startswith("user ") for line in self.extra_config):
            lines.append("user root")  # as root mosquitto drops to "mosquitto", which cannot read 0700 dirs
        return lines + self._auth_lines() + self.extra_config + self._bridge_lines()

    def _bridge_lines(self) -> list[str]:
        """The bridge section (last: mosquitto applies the lines after ``connection`` to that bridge)."""
        if self.bridge_to is None:
            return []
        return [f"connection bridge-{self.port}-to-{self.bridge_to}", f"address 127.0.0.1:{self.bridge_to}",
                f"remote_clientid bridge-{self.port}", "bridge_protocol_version mqttv311", "cleansession true",
                "try_private true", "start_type automatic", "notifications false", "restart_timeout 1",
                *(f"topic {line}" for line in self.bridge_topics)]

    def _auth_lines(self) -> list[str]:
        if self.passwords:
            password_file = self.workdir / "passwords"
            password_file.write_text("")
            for user, password in self.passwords.items():
                subprocess.run(["mosquitto_passwd", "-b", str(password_file), user, password], check=True,
                               capture_output=True)
            password_file.chmod(0o600)
            lines = ["allow_anonymous false", f"password_file {password_file}"]
        elif self.dynsec_config is not None:
            lines = ["allow_anonymous false", "plugin mosquitto_dynamic_security.so",
                     f"plugin_opt_config_file {self.dynsec_config}"]
        else:
            lines = ["allow_anonymous true"]
        if self.acl_lines:
            acl = self.workdir / "acl"
            acl.write_text("\n".join(self.acl_lines) + "\n")
            acl.chmod(0o600)
            lines.append(f"acl_file {acl}")
        return lines

    def start(self) -> PrivateMosquitto:
        binary = find_mosquitto()
        if binary is None:
            raise MosquittoError("mosquitto is not installed: apt-get install -y mosquitto, or use the embedded "
                                 "broker")
        if not port_is_free(self.port, self.host):
            raise MosquittoError(f"mosquitto cannot listen on port {self.port}: it is in use; leave the port to "
                                 "free_port()")
        self.workdir.mkdir(parents=True, exist_ok=True)  # before config_lines: it writes auth files there
        conf = self.workdir / "mosquitto.conf"
        conf.write_text("\n".join(self.config_lines()) + "\n", encoding="utf-8")
        log = open(self.workdir / "mosquitto.log", "ab")  # noqa: SIM115 - kept open for the process
        env = {**os.environ, **self.environment} if self.environment else None
        self.process = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=log, env=env)
        log.close()
        try:
            wait_for_port(self.port)
            if self.process.poll() is not None:
                raise TimeoutError("mosquitto exited")
        except TimeoutError as exc:
            self.stop()
            text = (self.workdir / "mosquitto.log").read_text(encoding="utf-8", errors="replace")
            raise MosquittoError(f"mosquitto did not start on port {self.port}; its log: {text.strip()}") from exc
        return self

    def stop(self) -> None:
        """Terminate the process (kill after 5 s); idempotent."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self, down_s: float = 0.0) -> None:
        """Stop, wait ``down_s`` seconds, start again on the same port (a broker outage)."""
        self.stop()
        time.sleep(down_s)
        self.start()


class BrokerByteCounters:
    """The broker's ``$SYS/broker/bytes/received`` and ``/sent`` (bytes since the broker started)."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        import paho.mqtt.client as mqtt

        from cloud.mqtt_link import WireCountingClient

        self.values: dict[str, int] = {}
        self._updated = threading.Condition()
        self.client = WireCountingClient(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sys-bytes-{os.getpid()}")
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.subscribe("$SYS/broker/bytes/#", qos=0)
        self.client.loop_start()

    def _on_message(self, client: object, userdata: object, message: object) -> None:
        topic, payload = message.topic, message.payload  # type: ignore[attr-defined]
        if message.retain:  # type: ignore[attr-defined]
            return  # the value kept from a tick before we subscribed: late, it would pass for a fresh one
        with self._updated:
            self.values[topic.rsplit("/", 1)[-1]] = int(payload)
            self._updated.notify_all()

    def fresh(self, timeout_s: float = 10.0) -> dict[str, int]:
        """``{"received": n, "sent": n}`` after the next update (mosquitto republishes a value only when it
        changed; the reader's own PINGs make sure one does). ``TimeoutError`` if none comes."""
        deadline = time.monotonic() + timeout_s
        with self._updated:
            before = dict(self.values)
            while not ({"received", "sent"} <= set(self.values) and self.values != before):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no $SYS/broker/bytes update in {timeout_s} s")
                self._updated.wait(left)
            self._updated.wait(0.2)  # the same tick's other counter, published right after
            return dict(self.values)

    @property
    def wire_sent_bytes(self) -> int:
        return int(self.client.wire_sent_bytes)

    @property
    def wire_received_bytes(self) -> int:
        return int(self.client.wire_received_bytes)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
