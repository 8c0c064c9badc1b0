"""What a device reports about itself on registration."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

from edge_agent.capabilities import detect_capabilities
from feddst_core import native
from protocol import Register, decode_message, encode_message


def test_capabilities_describe_this_machine_and_round_trip_on_the_wire() -> None:
    caps = detect_capabilities()
    assert caps.arch == (platform.machine() or "unknown") and caps.cores == (os.cpu_count() or 1)
    assert caps.memory_mb > 0
    assert caps.library_versions["python"] == platform.python_version()
    expected = f"abi-{native.ABI_VERSION}" if native.available() else "unavailable"
    assert caps.library_versions["native-kernels"] == expected
    message = Register("dev-1", caps, 10)
    assert decode_message(encode_message(message)) == message


def test_native_kernels_reported_unavailable_when_disabled() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "from edge_agent.capabilities import detect_capabilities; "
                               "print(detect_capabilities().library_versions['native-kernels'])"],
        env={**os.environ, "FEDDST_NATIVE": "0"}, capture_output=True, text=True, check=True, timeout=120).stdout
    assert out.strip() == "unavailable"
