"""Start-up checks of ``feddst cloud serve``: each problem becomes one line naming the setting and the fix.

:func:`settings_error_line` turns a settings ``ValidationError`` (a bad broker URL, an unknown key in the
config file, a value out of range) into one line; :func:`check_startup` checks what the settings cannot
(the device-keys file exists and is a JSON object of hex keys, the state dir is writable) and raises
:class:`StartupError` with one line. An unreachable broker is *not* an error: the coordinator starts
degraded (``/healthz``) and connects when the broker comes up.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from pydantic import ValidationError

from cloud.settings import CloudSettings

SERVE_FLAGS: Mapping[str, str] = {
    "broker_url": "--broker", "mqtt_username": "--username", "mqtt_password": "--password",
    "api_host": "--api-host", "api_port": "--api-port", "state_dir": "--state-dir", "heartbeat_s": "--heartbeat-s",
    "device_keys_file": "--device-keys-file", "signing_key_file": "--signing-key-file",
    "log_level": "--log-level", "data_roots": "--data-root", "resume_runs": "--resume-runs",
}


class StartupError(Exception):
    """The coordinator cannot start; the message is one line: the setting, the problem, what to do."""


def where_set(name: str) -> str:
    """``--flag, FEDDST_CLOUD_NAME or `name` in the config file`` for a setting."""
    flag = SERVE_FLAGS.get(name)
    return ", ".join([*([flag] if flag else []), f"FEDDST_CLOUD_{name.upper()}", f"`{name}` in the config file"])


def settings_error_line(exc: ValidationError) -> str:
    """One line for the first problem of a settings validation error (others follow it, ``;``-separated)."""
    parts = []
    for error in exc.errors():
        loc = ".".join(str(p) for p in error.get("loc", ())) or "settings"
        if error.get("type") == "extra_forbidden":
            parts.append(f"unknown setting {loc!r}: remove it or correct its name (the settings are listed in "
                         "docs/coordinator.md and `feddst cloud serve --help`)")
        else:
            msg = str(error.get("msg", "")).removeprefix("Value error, ")
            name = str(error["loc"][0]) if error.get("loc") else ""
            fix = f"; set it with {where_set(name)}" if name in CloudSettings.model_fields else ""
            parts.append(f"setting {loc}: {msg}{fix}")
    return "; ".join(parts)


def check_startup(settings: CloudSettings) -> None:
    """``StartupError`` if the device-keys file or the state dir cannot be used."""
    check_device_keys(settings)
    check_state_dir(settings.state_dir)


def check_device_keys(settings: CloudSettings) -> None:
    path = settings.device_keys_file
    if path is None:
        return
    fix = f"give a JSON object {{device id: hex HMAC key}} with {where_set('device_keys_file')}"
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise StartupError(f"device_keys_file: {path} does not exist; {fix}") from None
    except OSError as exc:
        raise StartupError(f"device_keys_file: {path} cannot be read ({exc.strerror}); {fix}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StartupError(f"device_keys_file: {path} is not JSON ({exc}); {fix}") from None
    if not isinstance(raw, dict):
        raise StartupError(f"device_keys_file: {path} holds a JSON {type(raw).__name__}, not an object; {fix}")
    for device, key in raw.items():
        try:
            bytes.fromhex(str(key))
        except ValueError:
            raise StartupError(f"device_keys_file: {path}: the key of {device!r} is not hex; {fix}") from None


def check_state_dir(state_dir: Path) -> None:
    fix = f"choose a directory this user can write with {where_set('state_dir')}"
    try:
        Path(state_dir).mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=state_dir, prefix=".write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise StartupError(f"state_dir: {state_dir} is not writable ({exc.strerror or exc}); {fix}") from None
