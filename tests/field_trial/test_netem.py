"""netem shaping: clear errors without root/iproute2, namespaces and qdiscs removed after a failure."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from field_trial import netem
from field_trial.spec import PRESETS

HAVE_NETEM = os.geteuid() == 0 and shutil.which("ip") is not None and shutil.which("tc") is not None
NETNS_WORKS = HAVE_NETEM and subprocess.run(["ip", "netns", "list"], capture_output=True).returncode == 0
needs_netns = pytest.mark.skipif(not NETNS_WORKS, reason="needs root, iproute2 (ip, tc) and network namespaces")
QDISC_PROBLEM = netem.qdisc_problem() if NETNS_WORKS else "no root / iproute2"
needs_netem = pytest.mark.skipif(QDISC_PROBLEM is not None, reason=f"netem/tbf qdiscs unavailable: {QDISC_PROBLEM}")


# Every namespace test runs in one pytest-xdist worker: their tags are this worker's pid + a constant, so two
# workers at once could collide on namespace and interface names (the /30s cannot collide: add_veth_namespace
# picks a free one under a lock).
pytestmark = pytest.mark.xdist_group("netns")

def test_without_root_the_error_names_the_agent_mode(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(netem.NetemError, match='shaper = "agent"'):
        netem.require_netem()


def test_without_iproute2_the_error_says_what_is_missing(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda tool: None)
    with pytest.raises(netem.NetemError, match=r"iproute2 \(ip, tc not found.*shaper = \"agent\""):
        netem.require_netem()


@needs_netem
def test_a_shaped_namespace_reaches_the_host_and_is_removed():
    links = netem.NetemLinks(tag=str(os.getpid()))
    with links:
        ns, host_ip = links.add(0, PRESETS["lte-rural"])
        qdiscs = subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "show"], capture_output=True, text=True)
        assert "netem" in qdiscs.stdout and "tbf" in qdiscs.stdout and "loss 1%" in qdiscs.stdout
        ping = subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", "3", "-i", "0.2", host_ip],
                              capture_output=True, text=True)
        if shutil.which("ping") is not None:
            assert " 0% packet loss" in ping.stdout or "received" in ping.stdout
    assert netem.existing_namespaces(f"fdst-{os.getpid()}-") == []
    assert links.host_links == []


@needs_netns
def test_cleanup_after_a_failure_half_way():
    tag = str(os.getpid() + 1)
    with pytest.raises(netem.NetemError, match="failed"), netem.NetemLinks(tag=tag) as links:
        links.add(0, PRESETS["nb-iot"])  # fails at tc on a kernel without netem, else below
        links.add(0, PRESETS["nb-iot"])  # the same namespace again: ip fails; either way the with block cleans up
    assert netem.existing_namespaces(f"fdst-{tag}-") == []
    shown = subprocess.run(["ip", "link", "show"], capture_output=True, text=True).stdout
    assert f"fd{int(tag) % 10000}h0" not in shown
