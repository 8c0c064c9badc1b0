"""``GET /api/runs/{id}/events``: the run's events as server-sent events (viewer token).

Each event is ``id: N`` / ``event: round|status|device_error`` / ``data: JSON`` (schema
:class:`~cloud.schemas.RunEventOut`). Without ``Last-Event-ID`` the stream starts with every event
the coordinator still keeps for the run (its in-memory ring), then follows new ones; with
``Last-Event-ID: N`` it resumes after event N. A comment line ``: keep-alive`` is sent every
``sse_keepalive_s`` seconds so proxies keep the connection open. The stream ends when the client
disconnects; a client that resumes past the ring's start re-reads ``/api/runs/{id}/rounds?since=N``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import StreamingResponse

from cloud.api.deps import AUTH_RESPONSES, CoordinatorDep, ViewerDep
from cloud.run_events import RunEventLog
from cloud.schemas import ErrorOut, RunEventOut

router = APIRouter(prefix="/api/runs", tags=["runs"], responses=AUTH_RESPONSES)

POLL_S = 0.05  # how often the stream looks for new events in the ring


@router.get("/{run_id}/events", response_class=StreamingResponse,
            responses={200: {"description": "`text/event-stream`; each event's `data` is a JSON object.",
                             "content": {"text/event-stream": {"schema": RunEventOut.model_json_schema()}}},
                       404: {"model": ErrorOut, "description": "No run with that id."}})
async def run_events(run_id: str, request: Request, coordinator: CoordinatorDep, _token: ViewerDep,
                     last_event_id: Annotated[int | None, Header(ge=0, description="Resume after this event id "
                                                                 "(sent by EventSource on reconnect).")] = None,
                     ) -> StreamingResponse:
    """Live events of a run: `round` (a round was recorded: its RoundOut), `status` (the run's status
    changed) and `device_error` (a device reported a failed task)."""
    coordinator.store.get_run(run_id)  # 404 for an unknown run
    stream = _event_stream(request, coordinator.events, run_id, last_event_id, coordinator.settings.sse_keepalive_s)
    return StreamingResponse(stream, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _event_stream(request: Request, events: RunEventLog, run_id: str, last_id: int | None,
                        keepalive_s: float) -> AsyncIterator[str]:
    yield "retry: 2000\n\n"
    last_sent = time.monotonic()
    while True:
        batch = events.after(run_id, last_id)
        if batch:
            yield "".join(event.to_sse() for event in batch)
            last_id, last_sent = batch[-1].id, time.monotonic()
        elif time.monotonic() - last_sent >= keepalive_s:
            yield ": keep-alive\n\n"
            last_sent = time.monotonic()
        if await request.is_disconnected():
            return
        await asyncio.sleep(POLL_S)
