"""``/api/runs``: create, start, stop, list, inspect, delete runs and download their global model.

GETs need a viewer token, creating, starting, stopping and deleting an operator token. Domain errors
(404, 409, 422, 503) are raised by the coordinator and mapped to HTTP by the app's one handler.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response, status
from fastapi.responses import FileResponse

from cloud.api.deps import AUTH_RESPONSES, CoordinatorDep, OperatorDep, PageDep, ViewerDep
from cloud.coordinator import Coordinator
from cloud.run_config import RunConfig
from cloud.schemas import ROUND_LIST, ErrorOut, RoundOut, RunDetailOut, RunSummaryOut, rounds_from_json

JSON = "application/json"  # the big GETs return pydantic's own JSON bytes (response_model kept for OpenAPI)

router = APIRouter(prefix="/api/runs", tags=["runs"], responses=AUTH_RESPONSES)

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorOut, "description": "No run with that id."}}
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorOut, "description": "The run cannot do that in its current state (e.g. another run is "
          "running, or it already finished)."}}


@router.post("", status_code=status.HTTP_201_CREATED, response_model=RunDetailOut,
             responses={422: {"description": "Invalid run config, or one this coordinator cannot run (e.g. an "
                              "evaluation data dir outside the `data_roots` setting); `detail` names the field.",
                              "content": {"application/json": {"schema": {
                                  "$ref": "#/components/schemas/HTTPValidationError"}}}}})
def create_run(config: RunConfig, coordinator: CoordinatorDep, _token: OperatorDep) -> RunDetailOut:
    """Create a run (status `created`); the config is checked against what this coordinator can run."""
    return RunDetailOut.from_parts(coordinator.create_run(config), [])


@router.get("", response_model=list[RunSummaryOut])
def list_runs(coordinator: CoordinatorDep, _token: ViewerDep, page: PageDep) -> list[RunSummaryOut]:
    """Every run, including those of earlier coordinator processes, oldest first (paginated with
    `limit`/`offset`; the header `X-Total-Count` gives the number of runs)."""
    progress = coordinator.store.run_progress()
    return [RunSummaryOut.from_row(r, progress.get(r.id), coordinator.run_phase(r.id))
            for r in page.slice(coordinator.list_runs())]


@router.get("/{run_id}", response_model=RunDetailOut, responses=NOT_FOUND)
def get_run(run_id: str, coordinator: CoordinatorDep, _token: ViewerDep) -> Response:
    """Config, status, counters and per-round metrics of one run."""
    return Response(_detail(coordinator, run_id).model_dump_json(), media_type=JSON)


@router.get("/{run_id}/rounds", response_model=list[RoundOut], responses=NOT_FOUND)
def list_rounds(run_id: str, coordinator: CoordinatorDep, _token: ViewerDep,
                since: Annotated[int, Query(ge=0, description="Only rounds after this one (a cursor: pass the last "
                                            "round you have).")] = 0,
                limit: Annotated[int, Query(ge=1, le=10_000, description="At most this many rounds.")] = 1000,
                ) -> Response:
    """Completed rounds of a run with `round > since`, in round order, at most `limit` of them: page
    through a long run by passing the last round received as the next `since`."""
    coordinator.store.get_run(run_id)
    rounds = rounds_from_json(coordinator.store.round_texts(run_id, since=since, limit=limit))
    return Response(ROUND_LIST.dump_json(rounds), media_type=JSON)


@router.post("/{run_id}/start", response_model=RunDetailOut,
             responses={**NOT_FOUND, **CONFLICT, 503: {"model": ErrorOut, "description": "The coordinator is not "
                                                        "connected to the MQTT broker."}})
def start_run(run_id: str, coordinator: CoordinatorDep, _token: OperatorDep) -> RunDetailOut:
    """Start a created run (one run is active at a time)."""
    coordinator.start_run(run_id)
    return _detail(coordinator, run_id)


@router.post("/{run_id}/resume", response_model=RunDetailOut,
             responses={**NOT_FOUND, 409: {"model": ErrorOut, "description": "The run is not `interrupted`, or "
                                           "another run is running."},
                        503: {"model": ErrorOut, "description": "The coordinator is not connected to the MQTT "
                              "broker."}})
def resume_run(run_id: str, coordinator: CoordinatorDep, _token: OperatorDep) -> RunDetailOut:
    """Resume an `interrupted` run from its last completed round (status `running` again); the round it had
    open is reopened with the same devices and task. Needed only with the setting `resume_runs` off (by
    default a restarted coordinator resumes its run by itself) or for an older interrupted run."""
    coordinator.resume_run(run_id)
    return _detail(coordinator, run_id)


@router.post("/{run_id}/stop", response_model=RunDetailOut, responses={**NOT_FOUND, **CONFLICT})
def stop_run(run_id: str, coordinator: CoordinatorDep, _token: OperatorDep) -> RunDetailOut:
    """Stop a created or running run (publishes `Abort` on the run's control topic). Answers once the run
    has stopped (status `stopped`, or `completed`/`failed` if it ended first), so a start right after it
    is not refused because this run is still running."""
    coordinator.stop_run(run_id)
    return _detail(coordinator, run_id)


@router.delete("/{run_id}", status_code=status.HTTP_204_NO_CONTENT, responses={**NOT_FOUND, **{
    409: {"model": ErrorOut, "description": "The run is running: stop it first."}}})
def delete_run(run_id: str, coordinator: CoordinatorDep, _token: OperatorDep) -> Response:
    """Delete a run that is not running, with its stored rounds and model files."""
    coordinator.delete_run(run_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{run_id}/model", response_class=FileResponse,
            responses={200: {"content": {"application/octet-stream": {}},
                             "description": "safetensors: parameters by name, masks as '<name>.mask' (bool)"},
                       404: {"model": ErrorOut, "description": "No run with that id, or it has no model yet."}})
def get_model(run_id: str, coordinator: CoordinatorDep, _token: ViewerDep) -> FileResponse:
    """The run's current global model."""
    return FileResponse(coordinator.model_file(run_id), media_type="application/octet-stream",
                        filename=f"{run_id}.safetensors")


ONNX_MEDIA_TYPE = "application/octet-stream"


@router.get("/{run_id}/model.onnx", response_class=Response,
            responses={200: {"content": {ONNX_MEDIA_TYPE: {}},
                             "description": "ONNX (opset 17) with the model card as metadata (docs/inference.md)"},
                       404: {"model": ErrorOut, "description": "No run with that id, or no model of that round."}})
def get_model_onnx(run_id: str, coordinator: CoordinatorDep, _token: ViewerDep,
                   server_round: Annotated[int | None, Query(alias="round", ge=0,
                                                             description="Default: the latest round.")] = None,
                   ) -> Response:
    """The run's global model (of `round`, default the current one) as ONNX."""
    data = coordinator.model_onnx(run_id, server_round)
    name = f"{run_id}.onnx" if server_round is None else f"{run_id}-round-{server_round}.onnx"
    return Response(data, media_type=ONNX_MEDIA_TYPE, headers={"Content-Disposition": f'attachment; filename="{name}"'})


def _detail(coordinator: Coordinator, run_id: str) -> RunDetailOut:
    """The run with every round, validated from the stored JSON in one pass (``rounds_from_json``)."""
    row = coordinator.store.get_run(run_id)
    rounds = rounds_from_json(coordinator.store.round_texts(run_id))
    return RunDetailOut.from_parts(row, rounds, coordinator.run_phase(run_id))
