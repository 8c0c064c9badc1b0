#!/usr/bin/env python3
"""Install a device bundle (``feddst cloud devices enroll``) into the agent's settings dir; stdlib only.

Called by ``deploy/install_agent.sh --bundle FILE``; usable alone::

    python3 deploy/install_bundle.py show BUNDLE                      # prints device id and broker URL
    python3 deploy/install_bundle.py install BUNDLE --etc /etc/feddst --group feddst

``install`` checks every field first (nothing is written from a bad bundle), then writes atomically:

* ``agent.key``  the device's HMAC key (hex), mode 0640 owner root, group ``--group``: the agent runs as that
                 group's user and must read it, but cannot change it;
* ``ca.crt``     the broker's private CA when the bundle has one, mode 0644;
* ``agent.env``  ``FEDDST_DEVICE_ID``, ``FEDDST_BROKER_URL``, ``FEDDST_PASSWORD``, ``FEDDST_KEY_FILE``,
                 ``FEDDST_CA_FILE``, ``FEDDST_COORDINATOR_PUBLIC_KEY``, mode 0600 owner root: systemd reads
                 it (``EnvironmentFile=``) as root and hands the values to the agent; nobody else can read it.

Re-running with a new bundle (re-issued credentials) replaces all three.
"""

from __future__ import annotations

import argparse
import grp
import json
import os
import re
import sys
from pathlib import Path

BUNDLE_FORMAT = "feddst-device-bundle"
IDENTIFIER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
BROKER_URL = re.compile(r"mqtts?://[A-Za-z0-9.\-\[\]:]+(:[0-9]{1,5})?/?")
PASSWORD = re.compile(r"[A-Za-z0-9._~+/=-]{8,256}")
HEX_KEY = re.compile(r"[0-9a-f]{32,128}")
PUBLIC_KEY = re.compile(r"[0-9a-f]{64}")


class BundleError(ValueError):
    """The bundle is unreadable or a field is missing or malformed (the message names it)."""


def read_bundle(path: Path) -> dict:
    """The bundle's fields, every one checked."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"{path}: not a readable JSON bundle ({exc}); make one with "
                          "`feddst cloud devices enroll DEVICE_ID --out FILE`") from exc
    if not isinstance(raw, dict) or raw.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: not a FedDST device bundle (\"format\" must be {BUNDLE_FORMAT!r})")
    if raw.get("version") != 1:
        raise BundleError(f"{path}: bundle version {raw.get('version')!r} is not supported (this tool reads 1)")

    def field(name: str, pattern: re.Pattern[str] | None, optional: bool = False) -> str | None:
        value = raw.get(name)
        if value is None and optional:
            return None
        if not isinstance(value, str) or (pattern is not None and not pattern.fullmatch(value)):
            raise BundleError(f"{path}: field {name!r} is missing or malformed")
        return value

    out = {
        "device_id": field("device_id", IDENTIFIER),
        "broker_url": field("broker_url", BROKER_URL),
        "mqtt_password": field("mqtt_password", PASSWORD, optional=True),
        "device_key_hex": field("device_key_hex", HEX_KEY),
        "coordinator_public_key": field("coordinator_public_key", PUBLIC_KEY),
        "ca_certificate_pem": field("ca_certificate_pem", None, optional=True),
    }
    if raw.get("mqtt_username", out["device_id"]) != out["device_id"]:
        raise BundleError(f"{path}: field 'mqtt_username' must equal the device id")
    pem = out["ca_certificate_pem"]
    if pem is not None and "-----BEGIN CERTIFICATE-----" not in pem:
        raise BundleError(f"{path}: field 'ca_certificate_pem' is not a PEM certificate")
    return out


def _write(path: Path, text: str, mode: int, gid: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, text.encode())
        if gid >= 0 and os.geteuid() == 0:
            os.fchown(fd, 0, gid)
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def install(bundle: dict, etc: Path, group: str | None) -> list[Path]:
    """Write agent.key, ca.crt (if any) and agent.env into ``etc``; returns the paths written."""
    gid = -1
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError as exc:
            raise BundleError(f"--group {group}: no such group (create the agent's user first)") from exc
    etc.mkdir(parents=True, exist_ok=True)
    key_file, ca_file, env_file = etc / "agent.key", etc / "ca.crt", etc / "agent.env"
    written = [key_file]
    _write(key_file, bundle["device_key_hex"] + "\n", 0o640, gid)
    env = {"FEDDST_DEVICE_ID": bundle["device_id"], "FEDDST_BROKER_URL": bundle["broker_url"],
           "FEDDST_KEY_FILE": str(key_file), "FEDDST_COORDINATOR_PUBLIC_KEY": bundle["coordinator_public_key"]}
    if bundle["mqtt_password"] is not None:
        env["FEDDST_PASSWORD"] = bundle["mqtt_password"]
    if bundle["ca_certificate_pem"] is not None:
        _write(ca_file, bundle["ca_certificate_pem"], 0o644, -1)
        env["FEDDST_CA_FILE"] = str(ca_file)
        written.append(ca_file)
    lines = ["# Written by deploy/install_bundle.py from the device bundle; read by systemd (EnvironmentFile)."]
    lines += [f"{name}={value}" for name, value in env.items()]
    _write(env_file, "\n".join(lines) + "\n", 0o600, -1)
    written.append(env_file)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show", help="print the bundle's device id and broker URL, one per line")
    show.add_argument("bundle", type=Path)
    put = sub.add_parser("install", help="write agent.key, ca.crt and agent.env")
    put.add_argument("bundle", type=Path)
    put.add_argument("--etc", type=Path, default=Path("/etc/feddst"), help="settings dir (default /etc/feddst)")
    put.add_argument("--group", help="group that may read agent.key (the agent's; e.g. feddst)")
    args = parser.parse_args(argv)
    try:
        bundle = read_bundle(args.bundle)
        if args.command == "show":
            print(bundle["device_id"])
            print(bundle["broker_url"])
        else:
            for path in install(bundle, args.etc, args.group):
                print(f"wrote {path}")
    except (BundleError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
