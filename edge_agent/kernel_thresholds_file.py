"""``--kernel-thresholds``: this device's measured auto-policy table, read once when the settings are made.

The file is the JSON written on the device by :data:`MAKE_THRESHOLDS`
(``feddst_core.sparse.parse_thresholds_json``'s form); ``feddst_core.sparse`` (torch) is imported only
when a file is actually read, so the settings model stays cheap to import (``feddst --help``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.settings_sources import AgentConfigError

if TYPE_CHECKING:
    from feddst_core.sparse import SparseThreshold

ThresholdTable = dict[str, tuple["SparseThreshold", ...]]
MAKE_THRESHOLDS = "python bench/sparse_kernels.py --calibrate --write-thresholds FILE"


@dataclass(frozen=True)
class KernelThresholdsFile:
    """A ``--kernel-thresholds`` file: the auto policy's table and the bench's ``measured_on`` note."""

    path: str
    table: ThresholdTable
    measured_on: dict[str, Any]  # machine, native_kernels, date... ({} when absent)


def read_kernel_thresholds(path: str | Path, flag: str = "--kernel-thresholds") -> KernelThresholdsFile:
    """A device's auto-policy table; every problem is an :class:`AgentConfigError` naming the file and
    saying how to make a good one."""
    from feddst_core.sparse import parse_thresholds_json

    p = Path(path)
    hint = f"make it on this device with `{MAKE_THRESHOLDS}`"
    if not p.is_file():
        raise AgentConfigError(f"{flag}: {p} {'is not a file' if p.exists() else 'does not exist'}; {hint}")
    try:
        table, note = parse_thresholds_json(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise AgentConfigError(f"{flag}: cannot read {p} ({exc}); {hint}") from exc
    except ValueError as exc:
        raise AgentConfigError(f"{flag}: {p}: {exc}; {hint}") from exc
    return KernelThresholdsFile(str(p), table, note)


def kernel_thresholds_warnings(info: KernelThresholdsFile, native_loaded: bool, machine: str,
                               threads: int | None = None) -> list[str]:
    """Why the file may not describe this device: measured on another CPU architecture, or with(out)
    the native kernels while this device runs without (with) them (from the bench's ``measured_on``)."""
    out = []
    measured_machine = info.measured_on.get("machine")
    if isinstance(measured_machine, str) and measured_machine and measured_machine != machine:
        out.append(f"{info.path} was measured on {measured_machine}, this device is {machine}")
    status = info.measured_on.get("native_kernels")
    if isinstance(status, str) and status.startswith("loaded") != native_loaded:
        out.append(f"{info.path} was measured {'without' if native_loaded else 'with'} the native kernels "
                   f"({status}), but this agent runs {'with' if native_loaded else 'without'} them")
    measured_threads = info.measured_on.get("threads")
    if threads is not None and isinstance(measured_threads, int) and measured_threads != threads:
        out.append(f"{info.path} was measured with {measured_threads} thread(s), this agent trains with {threads} "
                   f"(calibrate with `--threads {threads}`)")
    return out
