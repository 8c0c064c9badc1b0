"""``/api/devices``: the device registry (viewer token)."""

from __future__ import annotations

from fastapi import APIRouter

from cloud.api.deps import AUTH_RESPONSES, CoordinatorDep, ViewerDep
from cloud.schemas import DeviceOut

router = APIRouter(prefix="/api/devices", tags=["devices"], responses=AUTH_RESPONSES)


@router.get("", response_model=list[DeviceOut])
def list_devices(coordinator: CoordinatorDep, _token: ViewerDep) -> list[DeviceOut]:
    """Every device the coordinator has heard from."""
    return [DeviceOut.from_row(row, online) for row, online in coordinator.registry.snapshot()]
