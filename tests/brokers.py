"""Real MQTT brokers for tests: the Debian ``mosquitto`` binary on a free loopback port.

The test writes the broker's config (so auth, ACLs and TLS can be exercised), starts it, and can
stop and restart it on the same port (to test reconnects). Nothing is mocked.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from field_trial.private_mosquitto import find_mosquitto, free_port, wait_for_port

__all__ = ["MosquittoBroker", "free_port", "init_dynsec", "mosquitto_binary", "start_mosquitto", "wait_for_port"]


def mosquitto_binary() -> str:
    path = find_mosquitto()
    if path is None:
        raise RuntimeError("mosquitto is not installed: run `make setup` (apt-get install -y mosquitto)")
    return path


@dataclass
class MosquittoBroker:
    """One mosquitto process with a generated config in ``workdir``."""

    workdir: Path
    port: int = field(default_factory=free_port)
    passwords: dict[str, str] = field(default_factory=dict)  # username -> password (enables auth)
    acl_lines: list[str] = field(default_factory=list)  # mosquitto acl_file lines (enables ACLs)
    extra_config: list[str] = field(default_factory=list)
    dynsec_config: Path | None = None  # dynamic-security plugin file (see init_dynsec): users, roles at run time
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = [f"listener {self.port} 127.0.0.1", "persistence false", "log_dest stderr",
                 "log_type error", "log_type warning"]
        if os.geteuid() == 0 and not any(line.startswith("user ") for line in self.extra_config):
            # As root mosquitto drops to user "mosquitto", which cannot read pytest's 0700 tmp dirs.
            lines.append("user root")
        if self.passwords:
            pwfile = self.workdir / "passwords"
            pwfile.write_text("")
            for user, password in self.passwords.items():
                subprocess.run(["mosquitto_passwd", "-b", str(pwfile), user, password], check=True,
                               capture_output=True)
            pwfile.chmod(0o600)
            lines += ["allow_anonymous false", f"password_file {pwfile}"]
        elif self.dynsec_config is not None:
            lines += ["allow_anonymous false", "plugin mosquitto_dynamic_security.so",
                      f"plugin_opt_config_file {self.dynsec_config}"]
        else:
            lines.append("allow_anonymous true")
        if self.acl_lines:
            acl = self.workdir / "acl"
            acl.write_text("\n".join(self.acl_lines) + "\n")
            acl.chmod(0o600)
            lines.append(f"acl_file {acl}")
        lines += self.extra_config
        conf = self.workdir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self) -> MosquittoBroker:
        conf = self._write_config()
        log = open(self.workdir / "mosquitto.log", "ab")  # noqa: SIM115 - kept open for the process
        self.process = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=log, stderr=log)
        try:
            wait_for_port(self.port)
        except TimeoutError as exc:
            self.stop()
            log_text = (self.workdir / "mosquitto.log").read_text()
            raise RuntimeError(f"mosquitto did not start; log: {log_text}") from exc
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()


def init_dynsec(path: Path, admin: str, password: str) -> Path:
    """A new dynamic-security plugin file whose only user is ``admin`` (``mosquitto_ctrl dynsec init``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mosquitto_ctrl", "dynsec", "init", str(path), admin, password], check=True, capture_output=True)
    return path


def start_mosquitto(workdir: Path, passwords: dict[str, str] | None = None,
                    acl_lines: Iterable[str] = ()) -> MosquittoBroker:
    return MosquittoBroker(workdir, passwords=dict(passwords or {}), acl_lines=list(acl_lines)).start()
