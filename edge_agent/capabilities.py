"""What this device is: CPU architecture, cores, RAM and the versions of the libraries it runs.

``library_versions["native-kernels"]`` tells the coordinator (and its dashboard) whether this agent trains
with the native CPU kernels: ``abi-<N>`` when loaded, ``unavailable`` otherwise (the agent's log says why).
"""

from __future__ import annotations

import os
import platform
from importlib import metadata

from feddst_core import native
from protocol import PROTOCOL_VERSION, Capabilities

LIBRARIES = ("feddst-edge", "torch", "numpy", "paho-mqtt")


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def total_memory_mb() -> int:
    """Total RAM in MiB (psutil when installed, else /proc/meminfo, else 0)."""
    try:
        import psutil

        return int(psutil.virtual_memory().total // (1024 * 1024))
    except ImportError:
        pass
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def detect_capabilities() -> Capabilities:
    versions = {"python": platform.python_version(), "protocol": str(PROTOCOL_VERSION)}
    for name in LIBRARIES:
        found = _version(name)
        if found is not None:
            versions[name] = found
    versions["native-kernels"] = f"abi-{native.ABI_VERSION}" if native.available() else "unavailable"
    return Capabilities(arch=platform.machine() or "unknown", cores=os.cpu_count() or 1,
                        memory_mb=total_memory_mb(), library_versions=versions)
