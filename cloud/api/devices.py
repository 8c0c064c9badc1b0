"""``/api/devices``: the device registry."""

from __future__ import annotations

from fastapi import APIRouter

from cloud.api.deps import CoordinatorDep
from cloud.schemas import DeviceOut

router = APIRouter(prefix="/api/devices", tags=["devices"])


@router.get("", response_model=list[DeviceOut])
def list_devices(coordinator: CoordinatorDep) -> list[DeviceOut]:
    return [DeviceOut.from_row(row, online) for row, online in coordinator.registry.snapshot()]
