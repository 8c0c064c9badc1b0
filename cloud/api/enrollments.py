"""Enrollment: ``POST /api/devices/{id}/enroll`` and ``.../revoke`` (admin token), ``GET /api/enrollments``.

Thin routes over :class:`cloud.enrollment.EnrollmentService` on the coordinator's own settings and store;
domain errors (409 already enrolled, 404 not enrolled, 422 bad id, 502 broker refused) are mapped by the
app's one error handler. The enroll answer holds the device's secrets and is sent ``Cache-Control: no-store``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Response, status

from cloud.api.deps import AUTH_RESPONSES, AdminDep, CoordinatorDep, ViewerDep
from cloud.enrollment import EnrollmentService
from cloud.schemas import DeviceBundleOut, EnrollIn, EnrollmentOut, ErrorOut

router = APIRouter(tags=["enrollments"], responses=AUTH_RESPONSES)

ERRORS = {
    404: {"model": ErrorOut, "description": "The device is not enrolled."},
    409: {"model": ErrorOut, "description": "The device is already enrolled (send reissue=true)."},
    422: {"model": ErrorOut, "description": "Not a valid device id."},
    502: {"model": ErrorOut, "description": "The broker could not be reached or refused the change."},
}


def _service(coordinator: CoordinatorDep) -> EnrollmentService:
    return EnrollmentService(coordinator.settings, coordinator.store)


@router.post("/api/devices/{device_id}/enroll", status_code=status.HTTP_201_CREATED,
             response_model=DeviceBundleOut, responses={k: ERRORS[k] for k in (409, 422, 502)})
def enroll_device(device_id: str, coordinator: CoordinatorDep, _token: AdminDep, response: Response,
                  body: Annotated[EnrollIn | None, Body()] = None) -> DeviceBundleOut:
    """Enroll a device: new key and broker credentials; answers its bundle (shown once)."""
    bundle = _service(coordinator).enroll(device_id, reissue=body.reissue if body else False)
    response.headers["Cache-Control"] = "no-store"
    return DeviceBundleOut.model_validate(bundle, from_attributes=True)


@router.post("/api/devices/{device_id}/revoke", response_model=EnrollmentOut,
             responses={k: ERRORS[k] for k in (404, 422, 502)})
def revoke_device(device_id: str, coordinator: CoordinatorDep, _token: AdminDep) -> EnrollmentOut:
    """Revoke a device now: its messages are rejected and its broker user deleted (disconnecting it)."""
    return EnrollmentOut.from_row(_service(coordinator).revoke(device_id))


@router.get("/api/enrollments", response_model=list[EnrollmentOut])
def list_enrollments(coordinator: CoordinatorDep, _token: ViewerDep) -> list[EnrollmentOut]:
    """Every enrolled or revoked device (never their keys)."""
    return [EnrollmentOut.from_row(row) for row in _service(coordinator).list()]
