"""``/api/devices``: the device registry (viewer token)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from cloud.api.deps import AUTH_RESPONSES, CoordinatorDep, PageDep, ViewerDep
from cloud.errors import DeviceNotFoundError
from cloud.schemas import DeviceDetailOut, DeviceOut, DeviceRoundOut, ErrorOut

router = APIRouter(prefix="/api/devices", tags=["devices"], responses=AUTH_RESPONSES)

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorOut, "description": "No device with that id."}}


@router.get("", response_model=list[DeviceOut])
def list_devices(coordinator: CoordinatorDep, _token: ViewerDep, page: PageDep) -> list[DeviceOut]:
    """Every device the coordinator has heard from, by id (paginated with `limit`/`offset`; the header
    `X-Total-Count` gives the number of devices)."""
    registry = coordinator.registry
    return [DeviceOut.from_row(row, online, registry.last_error(row.id))
            for row, online in page.slice(registry.snapshot())]


@router.get("/{device_id}", response_model=DeviceDetailOut, responses=NOT_FOUND)
def get_device(device_id: str, coordinator: CoordinatorDep, _token: ViewerDep,
               history: Annotated[int, Query(ge=0, le=10_000, description="How many of its latest rounds to "
                                             "list.")] = 200) -> DeviceDetailOut:
    """One device and the latest rounds it was selected for, newest first."""
    found = [(row, online) for row, online in coordinator.registry.snapshot() if row.id == device_id]
    if not found:
        raise DeviceNotFoundError(f"no device {device_id!r}")
    row, online = found[0]
    rounds = coordinator.store.device_rounds(device_id, history) if history else []
    return DeviceDetailOut(**DeviceOut.from_row(row, online, coordinator.registry.last_error(device_id)).model_dump(),
                           history=[DeviceRoundOut.from_record(run_id, device_id, r) for run_id, r in rounds])
