"""Enrollment: ``POST /api/devices/{id}/enroll`` and ``.../revoke`` (admin token), ``GET /api/enrollments``.

Thin routes over :class:`cloud.enrollment.EnrollmentService` on the coordinator's own settings and store;
domain errors (409 already enrolled, 404 not enrolled, 502 broker refused) are mapped by the app's one
error handler; a device id that is not an identifier (or is the coordinator's) is a request validation
error (422, FastAPI's shape, ``loc`` = ``["path", "device_id"]``). The enroll answer holds the device's
secrets and is sent ``Cache-Control: no-store``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Response, status
from fastapi.exceptions import RequestValidationError

from cloud.api.deps import AUTH_RESPONSES, AdminDep, CoordinatorDep, ViewerDep
from cloud.enrollment import EnrollmentService
from cloud.schemas import DeviceBundleOut, EnrollIn, EnrollmentOut, ErrorOut
from protocol import COORDINATOR_ID, IDENTIFIER_PATTERN

router = APIRouter(tags=["enrollments"], responses=AUTH_RESPONSES)

ERRORS = {
    404: {"model": ErrorOut, "description": "The device is not enrolled."},
    409: {"model": ErrorOut, "description": "The device is already enrolled (send reissue=true)."},
    502: {"model": ErrorOut, "description": "The broker could not be reached or refused the change."},
}


def _service(coordinator: CoordinatorDep) -> EnrollmentService:
    return EnrollmentService(coordinator.settings, coordinator.store)


def _device_id(device_id: Annotated[str, Path(description="1-64 of A-Z a-z 0-9 _ . - (not the coordinator's id)",
                                              pattern=f"^{IDENTIFIER_PATTERN.pattern}$")]) -> str:
    if device_id == COORDINATOR_ID:
        raise RequestValidationError([{"loc": ("path", "device_id"), "type": "value_error",
                                       "msg": f"{COORDINATOR_ID!r} is the coordinator's id; pick another device id"}])
    return device_id


DeviceIdDep = Annotated[str, Depends(_device_id)]


@router.post("/api/devices/{device_id}/enroll", status_code=status.HTTP_201_CREATED,
             response_model=DeviceBundleOut, responses={k: ERRORS[k] for k in (409, 502)})
def enroll_device(device_id: DeviceIdDep, coordinator: CoordinatorDep, _token: AdminDep, response: Response,
                  body: Annotated[EnrollIn | None, Body()] = None) -> DeviceBundleOut:
    """Enroll a device: new key and broker credentials; answers its bundle (shown once)."""
    bundle = _service(coordinator).enroll(device_id, reissue=body.reissue if body else False)
    response.headers["Cache-Control"] = "no-store"
    return DeviceBundleOut.model_validate(bundle, from_attributes=True)


@router.post("/api/devices/{device_id}/revoke", response_model=EnrollmentOut,
             responses={k: ERRORS[k] for k in (404, 502)})
def revoke_device(device_id: DeviceIdDep, coordinator: CoordinatorDep, _token: AdminDep) -> EnrollmentOut:
    """Revoke a device now: its messages are rejected and its broker user deleted (disconnecting it)."""
    return EnrollmentOut.from_row(_service(coordinator).revoke(device_id))


@router.get("/api/enrollments", response_model=list[EnrollmentOut])
def list_enrollments(coordinator: CoordinatorDep, _token: ViewerDep) -> list[EnrollmentOut]:
    """Every enrolled or revoked device (never their keys)."""
    return [EnrollmentOut.from_row(row) for row in _service(coordinator).list()]
