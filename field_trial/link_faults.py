"""Network faults for live agents: each agent in its own network namespace, cut or lossy on demand.

Used by ``bench/faults.py`` (scenarios ``network_cut`` and ``packet_loss_5pct``). Unlike
:mod:`field_trial.netem` this needs no qdisc (the netem/tbf kernel modules are often missing): faults are
``iptables`` rules inside the agent's namespace, so the host (broker, coordinator) is never touched.

Agent ``i`` gets namespace ``fdfl-<tag>-<i>`` joined to the host by the veth ``fl<tag%10000>h<i>`` (host end,
the .1 of the first free /30 in 10.200.0.0/13, :func:`field_trial.netem.add_veth_namespace`) /
``fl<tag%10000>d<i>`` (namespace end, the .2). The broker must
listen on the host end's address (:meth:`AgentNamespaces.host_addresses`).

* :meth:`AgentNamespaces.cut`: DROP every packet in and out of the namespace (what a dead cellular link
  does: no error, no RST, packets vanish); :meth:`AgentNamespaces.restore` removes the rules.
* :meth:`AgentNamespaces.set_loss`: drop each packet with probability ``pct / 100``, independently in each
  direction (``-m statistic --mode random``), as netem's ``loss`` does on each end of a link.

Everything created is removed by :meth:`AgentNamespaces.close` (idempotent), which ``with`` blocks, failures
and Ctrl-C all reach; deleting a namespace removes its rules, deleting one end of a veth removes both.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field

from field_trial.netem import add_veth_namespace, run_checked

CHAINS = ("INPUT", "OUTPUT")


class LinkFaultError(RuntimeError):
    """Namespaces or iptables are not usable here (or a command failed); the message says why."""


def link_faults_problem() -> str | None:
    """None if this process can create namespaces and iptables rules in them, else what is missing."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and iptables)"
    missing = [tool for tool in ("ip", "iptables") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not found: apt-get install -y iproute2 iptables"
    return None


def _run(*cmd: str) -> None:
    run_checked(LinkFaultError, *cmd)


@dataclass
class AgentNamespaces:
    """The namespaces and veth pairs of one fleet; ``close`` removes them."""

    tag: str = field(default_factory=lambda: str(os.getpid()))
    namespaces: dict[int, str] = field(default_factory=dict)
    host_links: list[str] = field(default_factory=list)
    addresses: dict[int, str] = field(default_factory=dict)  # index -> host-end address (the broker's, from there)

    def add(self, index: int) -> tuple[str, str]:
        """Create agent ``index``'s namespace and veth; returns (namespace, broker address seen from it)."""
        short = int(self.tag) % 10000
        ns, host, dev = f"fdfl-{self.tag}-{index}", f"fl{short}h{index}", f"fl{short}d{index}"
        self.namespaces[index] = ns  # recorded first: close() removes whatever part of them exists
        self.host_links.append(host)
        host_ip, _ = add_veth_namespace(LinkFaultError, ns, host, dev)
        self.addresses[index] = host_ip
        return ns, host_ip

    def host_addresses(self) -> list[str]:
        return [self.addresses[i] for i in sorted(self.addresses)]

    def _iptables(self, index: int, *args: str) -> None:
        _run("ip", "netns", "exec", self.namespaces[index], "iptables", "-w", *args)

    def rules(self, index: int) -> str:
        """``iptables -S`` inside agent ``index``'s namespace."""
        result = subprocess.run(["ip", "netns", "exec", self.namespaces[index], "iptables", "-w", "-S"],
                                capture_output=True, text=True, check=False)
        return result.stdout

    def cut(self, index: int) -> None:
        """Drop every packet to and from agent ``index`` (its sockets stay open, nothing answers)."""
        for chain in CHAINS:
            self._iptables(index, "-I", chain, "-j", "DROP")

    def restore(self, index: int) -> None:
        """Flush agent ``index``'s rules (ends a cut and any loss)."""
        for chain in CHAINS:
            self._iptables(index, "-F", chain)

    def set_loss(self, index: int, pct: float) -> None:
        """Drop each packet in each direction of agent ``index`` with probability ``pct`` percent."""
        for chain in CHAINS:
            self._iptables(index, "-A", chain, "-m", "statistic", "--mode", "random", "--probability",
                           f"{pct / 100:.6f}", "-j", "DROP")

    def close(self) -> None:
        for link in self.host_links:
            subprocess.run(["ip", "link", "del", link], capture_output=True, check=False)
        for ns in self.namespaces.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        self.host_links, self.namespaces, self.addresses = [], {}, {}

    def __enter__(self) -> AgentNamespaces:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
