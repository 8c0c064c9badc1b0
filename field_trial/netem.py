"""``shaper = "netem"``: each emulated device in its own Linux network namespace, joined by a veth
pair to the host (where the broker listens), with ``tc`` netem + tbf applying its link profile in the kernel.

Device ``i`` gets namespace ``fdst-<pid>-<i>``, host side ``fd<pid%10000>h<i>`` = the .1 of the first free
/30 in 10.200.0.0/13 (``add_veth_namespace``), device side its .2. Uplink (device -> broker) is
shaped on the device end of the veth, downlink on the host
end: ``tbf rate <kbit>`` under ``netem delay <latency/2>ms <jitter>ms loss <loss>%``. Everything created is
removed by :meth:`NetemLinks.close`, which ``with`` blocks, failures and Ctrl-C all reach.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from field_trial.spec import LinkProfile


class NetemError(RuntimeError):
    """netem shaping is not possible here (or a command failed); the message says why and what to use instead."""


def require_netem() -> None:
    """Raise :class:`NetemError` unless we are root with iproute2 (``ip``, ``tc``) installed."""
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if os.geteuid() != 0:
        raise NetemError("shaper = \"netem\" needs root (network namespaces and tc qdiscs); run as root, or use "
                         "shaper = \"agent\" (token bucket and delay in each agent, unprivileged)")
    if missing:
        raise NetemError(f"shaper = \"netem\" needs iproute2 ({', '.join(missing)} not found: apt-get install "
                         "iproute2), or use shaper = \"agent\" (token bucket and delay in each agent)")
    problem = qdisc_problem()
    if problem:
        raise NetemError(f"shaper = \"netem\" cannot shape on this kernel: {problem}; load sch_netem and sch_tbf "
                         "(modprobe), or use shaper = \"agent\" (token bucket and delay in each agent)")


def qdisc_problem() -> str | None:
    """None if this kernel takes netem and tbf qdiscs (probed on a throw-away veth), else what failed."""
    probe = f"fdprobe{os.getpid() % 100000}"
    try:
        _run("ip", "link", "add", probe, "type", "veth", "peer", "name", probe + "p")
    except NetemError as exc:
        return str(exc)
    try:
        for args in _qdisc(LinkProfile(uplink_kbps=1000, downlink_kbps=1000, latency_ms=10), 1000):
            _run("tc", "qdisc", "add", "dev", probe, *args)
        return None
    except NetemError as exc:
        return str(exc)
    finally:
        subprocess.run(["ip", "link", "del", probe], capture_output=True, check=False)


def run_checked(error: type[RuntimeError], *cmd: str) -> None:
    """Run one command; raise ``error`` with the command and its stderr if it exits non-zero."""
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise error(f"{' '.join(cmd)} failed: {result.stderr.strip() or result.stdout.strip()}")


def _run(*cmd: str) -> None:
    run_checked(NetemError, *cmd)


VETH_ADDRESSES = ipaddress.ip_network("10.200.0.0/13")
"""Where each veth pair's /30 comes from (``add_veth_namespace``): the first /30 no host interface uses."""
VETH_LOCK = Path(tempfile.gettempdir()) / "feddst-veth-addresses.lock"
"""Held while a pair's /30 is chosen and assigned, so concurrent trials, benches and tests never pick the same."""


def _host_networks_in_use() -> set[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The /30 of every IPv4 address on the host's interfaces (``ip -o -4 addr show``)."""
    result = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=False)
    used = set()
    for line in result.stdout.splitlines():
        fields = line.split()
        if "inet" in fields:
            address = ipaddress.ip_interface(fields[fields.index("inet") + 1]).ip
            used.add(ipaddress.ip_network(f"{address}/30", strict=False))
    return used


def add_veth_namespace(error: type[RuntimeError], ns: str, host: str, dev: str) -> tuple[str, str]:
    """Network namespace ``ns`` joined to the host by a veth pair: ``host`` on the host side, ``dev`` inside, both
    up, plus the namespace's loopback; returns ``(host_ip, dev_ip)``, the .1 and .2 of the first /30 of
    ``VETH_ADDRESSES`` that no host interface holds (chosen and assigned under ``VETH_LOCK``, so two processes
    making namespaces at once get different subnets). A failed command, or no free /30, raises the caller's
    ``error`` class; a partial set-up is left for the caller's cleanup (``ip link del``, ``ip netns del``), which must
    record ``ns`` and ``host`` before calling."""
    def run(*cmd: str) -> None:
        run_checked(error, *cmd)

    run("ip", "netns", "add", ns)
    run("ip", "link", "add", host, "type", "veth", "peer", "name", dev)
    run("ip", "link", "set", dev, "netns", ns)
    with open(VETH_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        used = _host_networks_in_use()
        subnet = next((n for n in VETH_ADDRESSES.subnets(new_prefix=30) if n not in used), None)
        if subnet is None:
            raise error(f"every /30 of {VETH_ADDRESSES} is in use on this host; remove stale veth pairs "
                        "(`ip link show type veth`)")
        host_ip, dev_ip = (str(a) for a in list(subnet.hosts())[:2])
        run("ip", "addr", "add", f"{host_ip}/30", "dev", host)
    run("ip", "link", "set", host, "up")
    run("ip", "-n", ns, "addr", "add", f"{dev_ip}/30", "dev", dev)
    run("ip", "-n", ns, "link", "set", dev, "up")
    run("ip", "-n", ns, "link", "set", "lo", "up")
    return host_ip, dev_ip


def _qdisc(profile: LinkProfile, kbps: float) -> list[list[str]]:
    """The tc argument lists (after ``tc qdisc add dev DEV``) for one direction of ``profile``."""
    netem = ["root", "handle", "1:", "netem", "delay", f"{profile.latency_ms / 2:.3f}ms"]
    if profile.jitter_ms:
        netem += [f"{profile.jitter_ms:.3f}ms"]
    if profile.loss_pct:
        netem += ["loss", f"{profile.loss_pct}%"]
    burst = max(1600, int(kbps * 1000 / 8 * 0.05))
    tbf = ["parent", "1:", "handle", "2:", "tbf", "rate", f"{kbps:.0f}kbit", "burst", str(burst), "latency", "400ms"]
    return [netem, tbf]


@dataclass
class NetemLinks:
    """The namespaces and veth pairs of one trial; ``close`` removes them (idempotent)."""

    tag: str = field(default_factory=lambda: str(os.getpid()))
    namespaces: list[str] = field(default_factory=list)
    host_links: list[str] = field(default_factory=list)

    def add(self, index: int, profile: LinkProfile) -> tuple[str, str]:
        """Create device ``index``'s namespace and shaped veth; returns (namespace, broker address seen from it)."""
        short = int(self.tag) % 10000
        ns, host, dev = f"fdst-{self.tag}-{index}", f"fd{short}h{index}", f"fd{short}d{index}"
        self.namespaces.append(ns)  # recorded first: close() removes whatever part of them exists
        self.host_links.append(host)
        host_ip, _ = add_veth_namespace(NetemError, ns, host, dev)
        for args in _qdisc(profile, profile.uplink_kbps):
            _run("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, *args)
        for args in _qdisc(profile, profile.downlink_kbps):
            _run("tc", "qdisc", "add", "dev", host, *args)
        return ns, host_ip

    def close(self) -> None:
        for link in self.host_links:  # deleting one end of a veth removes both (and their qdiscs)
            subprocess.run(["ip", "link", "del", link], capture_output=True, check=False)
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        self.host_links, self.namespaces = [], []

    def __enter__(self) -> NetemLinks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def existing_namespaces(prefix: str) -> list[str]:
    result = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return [line.split()[0] for line in result.stdout.splitlines() if line.startswith(prefix)]
