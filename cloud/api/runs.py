"""``/api/runs``: create, start, stop, list, inspect runs and download their global model."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import FileResponse

from cloud.api.deps import CoordinatorDep
from cloud.errors import ModelNotAvailableError, RunNotFoundError, RunStateError
from cloud.run_config import RunConfig
from cloud.schemas import RunDetailOut, RunSummaryOut

router = APIRouter(prefix="/api/runs", tags=["runs"])


def _detail(coordinator: CoordinatorDep, run_id: str) -> RunDetailOut:
    try:
        row, rounds = coordinator.get_run(run_id)
    except RunNotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    return RunDetailOut.from_parts(row, rounds)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=RunDetailOut)
def create_run(config: RunConfig, coordinator: CoordinatorDep) -> RunDetailOut:
    row = coordinator.create_run(config)
    return RunDetailOut.from_parts(row, [])


@router.get("", response_model=list[RunSummaryOut])
def list_runs(coordinator: CoordinatorDep) -> list[RunSummaryOut]:
    return [RunSummaryOut.from_row(r) for r in coordinator.list_runs()]


@router.get("/{run_id}", response_model=RunDetailOut)
def get_run(run_id: str, coordinator: CoordinatorDep) -> RunDetailOut:
    return _detail(coordinator, run_id)


@contextmanager
def _run_errors_as_http() -> Iterator[None]:
    """Map the coordinator's domain errors to HTTP statuses (routes are the only place that does)."""
    try:
        yield
    except RunNotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except RunStateError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc


@router.post("/{run_id}/start", response_model=RunDetailOut)
def start_run(run_id: str, coordinator: CoordinatorDep) -> RunDetailOut:
    with _run_errors_as_http():
        coordinator.start_run(run_id)
    return _detail(coordinator, run_id)


@router.post("/{run_id}/stop", response_model=RunDetailOut)
def stop_run(run_id: str, coordinator: CoordinatorDep) -> RunDetailOut:
    with _run_errors_as_http():
        coordinator.stop_run(run_id)
    return _detail(coordinator, run_id)


@router.get("/{run_id}/model", response_class=FileResponse,
            responses={200: {"content": {"application/octet-stream": {}},
                             "description": "safetensors: parameters by name, masks as '<name>.mask' (bool)"}})
def get_model(run_id: str, coordinator: CoordinatorDep) -> FileResponse:
    try:
        path = coordinator.model_file(run_id)
    except (RunNotFoundError, ModelNotAvailableError) as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    return FileResponse(path, media_type="application/octet-stream", filename=f"{run_id}.safetensors")
