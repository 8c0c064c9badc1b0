"""What the active run is doing now (its *phase*) and the one log line per closed round.

Phases of a running run, as the API reports them (``RunPhase.name``):

* ``starting``: queued, the main loop has not built it yet;
* ``waiting_for_devices``: ``done`` eligible devices online of the ``total`` the next round needs;
* ``collecting``: ``done`` updates accepted of the ``total`` devices selected (retries add devices);
* ``aggregating``: folding the accepted updates and pruning/growing the masks;
* ``evaluating``: the held-out evaluation of the new global model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cloud.run_config import RunConfig

API_PHASES = {"waiting": "waiting_for_devices", "collecting": "collecting", "aggregating": "aggregating",
              "evaluating": "evaluating"}


@dataclass(frozen=True)
class RunPhase:
    """The active run's phase: ``name`` (see module doc), progress ``done``/``total`` (devices or
    updates; 0/0 where it has none), ``round`` (the round being prepared or collected) and
    ``since`` (Unix seconds the phase began)."""

    name: str
    round: int
    done: int = 0
    total: int = 0
    since: float | None = None

    @property
    def progress(self) -> str:
        return f"{self.done}/{self.total}" if self.total else ""

    def describe(self) -> str:
        """E.g. ``waiting_for_devices 3/5`` or ``aggregating``."""
        return f"{self.name} {self.progress}".strip()


def api_phase(internal: str, server_round: int, progress: tuple[int, int], since: float) -> RunPhase:
    """The API view of the main loop's ``RunExecution`` phase fields."""
    name = API_PHASES.get(internal, internal)
    with_progress = name in ("waiting_for_devices", "collecting")
    done, total = progress if with_progress else (0, 0)
    current = server_round if name in ("aggregating", "evaluating") else server_round + 1
    return RunPhase(name, current, done, total, since)


def devices_needed(config: RunConfig, server_round: int) -> int:
    """Eligible devices round ``server_round`` (1-based) waits for.

    Without ``min_devices``: ``clients_per_round`` every round. With it: ``min_devices`` before
    round 1 (it may exceed ``clients_per_round``, to wait for a fuller fleet before starting), then
    ``min(min_devices, clients_per_round)``; a round then selects ``min(clients_per_round,
    eligible)`` devices, so ``min_devices`` below ``clients_per_round`` lets a run go on with fewer.
    """
    if config.min_devices is None:
        return config.clients_per_round
    if server_round <= 1:
        return config.min_devices
    return min(config.min_devices, config.clients_per_round)


def round_log_line(run_id: str, rounds: int, record: dict[str, Any]) -> str:
    """One human line for a closed round: accuracy, cumulative MB up/down, devices, seconds."""
    accuracy = "n/a" if record.get("accuracy") is None else f"{100 * record['accuracy']:.2f}%"
    retries = f", {record['retries']} retries" if record.get("retries") else ""
    return (f"run {run_id} round {record['round']}/{rounds}: accuracy {accuracy}, "
            f"up {record['upload_bytes'] / 1e6:.3f} MB, down {record['download_bytes'] / 1e6:.3f} MB (cumulative), "
            f"{len(record.get('accepted', ()))}/{len(record.get('selected', ()))} devices, "
            f"{record.get('seconds', 0.0):.2f} s{retries}")
