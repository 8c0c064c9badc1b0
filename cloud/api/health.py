"""``/healthz``: liveness plus broker connectivity."""

from __future__ import annotations

from fastapi import APIRouter

from cloud.api.deps import CoordinatorDep
from cloud.schemas import HealthOut

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthOut)
def healthz(coordinator: CoordinatorDep) -> HealthOut:
    connected = coordinator.broker_connected
    return HealthOut(status="ok" if connected else "degraded", broker_connected=connected,
                     active_run=coordinator.active_run_id)
