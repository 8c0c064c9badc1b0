"""``feddst cloud devices ls``: the coordinator's devices over its REST API (registered on the
``feddst cloud devices`` group of :mod:`feddst_cli.devices_command`, beside enroll/revoke)."""

from __future__ import annotations

import time

import typer

from feddst_cli.api_client import (
    DEFAULT_URL,
    JsonOption,
    TokenOption,
    UrlOption,
    call_api,
    format_table,
    megabytes,
    print_json,
)


def seen_ago(last_seen: float, now: float) -> str:
    if not last_seen:
        return "never"
    seconds = max(0.0, now - last_seen)
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


def list_devices(url: UrlOption = DEFAULT_URL, token: TokenOption = None, as_json: JsonOption = False) -> None:
    """Every device: status, last seen, arch, cores, memory, samples, rounds done, bytes up/down."""
    devices = call_api(url, token, lambda client: client.get("/api/devices"))
    if as_json:
        print_json(devices)
        return
    now = time.time()
    rows = []
    for d in devices:
        caps = d.get("capabilities") or {}
        memory = caps.get("memory_mb")
        rows.append((d["id"], d["status"], d["state"], seen_ago(d["last_seen"], now), caps.get("arch"),
                     caps.get("cores"), None if memory is None else f"{memory} MB", d["sample_count"],
                     d["rounds_done"], megabytes(d["bytes_up"]), megabytes(d["bytes_down"])))
    typer.echo(format_table(("ID", "STATUS", "STATE", "LAST SEEN", "ARCH", "CORES", "MEMORY", "SAMPLES", "ROUNDS",
                             "UP", "DOWN"), rows))
