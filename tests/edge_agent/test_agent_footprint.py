"""The idle agent does not load torch: a real ``feddst agent run`` process against a real mosquitto.

The oracle is the kernel's view of the process, ``/proc/PID/maps``: importing torch maps its shared
libraries (``libtorch_cpu.so``, ``torch/_C...so``) into the process, and nothing unmaps them. While the
agent is registered and heartbeating they must be absent; after its first round they must be there
(so the check can fail, and the round really imports torch on demand).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from agent_harness import global_model, is_update_for, make_task, send_round, start_agent_process

from protocol import Register, Status, Update

TORCH_LIBRARIES = ("libtorch_cpu", "/torch/_C")


def torch_libraries_mapped(pid: int) -> list[str]:
    """The torch shared objects mapped into process ``pid`` (empty: torch was never imported)."""
    paths = {line.split()[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines() if "/" in line}
    return sorted(p for p in paths if any(name in p for name in TORCH_LIBRARIES))


def test_registered_idle_agent_has_not_imported_torch_and_its_first_round_does(mosquitto, coordinator,
                                                                               key_file) -> None:
    proc = start_agent_process("--broker", mosquitto.url, "--device-id", "dev-003", "--partition", "3/8",
                               "--key-file", str(key_file), "--heartbeat-s", "0.5", "--threads", "1")
    try:
        coordinator.expect(Register, timeout=60)
        coordinator.expect(Status, lambda r: r.message.state == "online", timeout=10)
        coordinator.expect(Status, lambda r: r.message.state == "online", timeout=10)  # heartbeating
        assert proc.poll() is None
        assert torch_libraries_mapped(proc.pid) == []
        params, masks = global_model()
        send_round(coordinator, make_task(1), params, masks)
        update = coordinator.expect(Update, is_update_for(1), timeout=120)
        assert update.message.sample_count > 0
        assert any("libtorch_cpu" in p for p in torch_libraries_mapped(proc.pid))
    finally:
        if proc.poll() is None:
            proc.kill()
        output, _ = proc.communicate(timeout=10)
    assert "Traceback" not in output, output[-3000:]


def test_set_torch_threads_applies_to_an_imported_torch() -> None:
    import torch

    from edge_agent import local_training

    before = torch.get_num_threads()
    try:
        local_training.set_torch_threads(1)
        assert torch.get_num_threads() == 1
    finally:
        local_training.set_torch_threads(before)
        local_training._torch_threads = None


def test_importing_the_agent_does_not_import_torch() -> None:
    """The whole idle path's modules, in a fresh interpreter (this test process has torch already)."""
    code = ("import sys, feddst_cli.main, feddst_cli.agent_command, edge_agent.agent, edge_agent.data, "
            "edge_agent.capabilities, edge_agent.local_training, edge_agent.model_snapshot, edge_agent.scheduling; "
            "from edge_agent.capabilities import detect_capabilities; detect_capabilities(); "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
