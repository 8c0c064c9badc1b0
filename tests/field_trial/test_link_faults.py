"""Agent namespaces for the fault bench: a cut drops TCP both ways, loss rules, cleanup after failures."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import subprocess
import sys

import pytest

from field_trial import link_faults, netem
from field_trial.netem import existing_namespaces

PROBLEM = link_faults.link_faults_problem()
needs_link_faults = pytest.mark.skipif(PROBLEM is not None, reason=f"link faults unavailable: {PROBLEM}")

CONNECT = ("import socket, sys\n"
           "try:\n"
           "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close(); print('open')\n"
           "except OSError as exc:\n"
           "    print('failed', exc)\n")


def connect_from(ns: str, host: str, port: int) -> str:
    result = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", CONNECT, host, str(port)],
                            capture_output=True, text=True, timeout=30)
    return result.stdout.strip()


# Every namespace test runs in one pytest-xdist worker: their tags are this worker's pid + a constant, so two
# workers at once could collide on namespace and interface names (the /30s cannot collide: add_veth_namespace
# picks a free one under a lock).
pytestmark = pytest.mark.xdist_group("netns")

def test_without_root_the_problem_is_named(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "needs root" in (link_faults.link_faults_problem() or "")


@needs_link_faults
def test_a_cut_drops_connections_until_restored_and_everything_is_removed():
    tag = str(os.getpid() + 7)
    with link_faults.AgentNamespaces(tag=tag) as spaces:
        ns, host_ip = spaces.add(0)
        server = socket.create_server((host_ip, 0))
        port = server.getsockname()[1]
        try:
            assert connect_from(ns, host_ip, port) == "open"
            spaces.cut(0)
            assert connect_from(ns, host_ip, port).startswith("failed")
            spaces.restore(0)
            assert connect_from(ns, host_ip, port) == "open"
            spaces.set_loss(0, 5.0)
            rules = spaces.rules(0)
            drops = re.findall(r"-A (INPUT|OUTPUT) -m statistic --mode random --probability (\S+) -j DROP", rules)
            assert sorted(chain for chain, _ in drops) == ["INPUT", "OUTPUT"], rules
            assert all(abs(float(p) - 0.05) < 1e-6 for _, p in drops), rules
        finally:
            server.close()
    assert existing_namespaces(f"fdfl-{tag}-") == []
    assert f"fl{int(tag) % 10000}h0" not in subprocess.run(["ip", "link", "show"], capture_output=True,
                                                            text=True).stdout


@needs_link_faults
def test_cleanup_after_a_failure_half_way():
    tag = str(os.getpid() + 8)
    with pytest.raises(link_faults.LinkFaultError, match="failed"), link_faults.AgentNamespaces(tag=tag) as spaces:
        spaces.add(0)
        spaces.add(1)
        spaces.add(0)  # the same namespace again: ip fails; the with block still removes 0 and 1
    assert existing_namespaces(f"fdfl-{tag}-") == []
    shown = subprocess.run(["ip", "link", "show"], capture_output=True, text=True).stdout
    assert f"fl{int(tag) % 10000}h0" not in shown and f"fl{int(tag) % 10000}h1" not in shown


@needs_link_faults
def test_two_fleets_at_once_get_different_subnets():
    with link_faults.AgentNamespaces(tag=str(os.getpid() + 11)) as one, \
            link_faults.AgentNamespaces(tag=str(os.getpid() + 12)) as two:
        _, first = one.add(0)
        _, second = two.add(0)
        assert first != second  # the old fixed scheme gave both 10.210.0.1
        subnets = {ipaddress.ip_network(f"{address}/30", strict=False) for address in (first, second)}
        assert len(subnets) == 2


@needs_link_faults
def test_no_free_subnet_raises_the_link_fault_error_naming_the_range(monkeypatch):
    tag = str(os.getpid() + 9)
    with link_faults.AgentNamespaces(tag=tag) as spaces:
        _, host_ip = spaces.add(0)
        only_subnet = ipaddress.ip_network(f"{host_ip}/30", strict=False)  # held by fleet member 0 now
        monkeypatch.setattr(netem, "VETH_ADDRESSES", only_subnet)
        with pytest.raises(link_faults.LinkFaultError, match=rf"every /30 of {only_subnet} is in use"):
            spaces.add(1)
    assert existing_namespaces(f"fdfl-{tag}-") == []
