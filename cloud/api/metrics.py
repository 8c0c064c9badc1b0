"""``/metrics``: the Prometheus text exposition of :class:`cloud.metrics.CoordinatorMetrics`.

Open by default, like most Prometheus targets (it reveals counts, never ids or secrets); with the
setting ``metrics_require_token`` (env ``FEDDST_CLOUD_METRICS_REQUIRE_TOKEN=true``) it needs a
viewer token, sent by Prometheus as ``authorization: {credentials: TOKEN}`` in its scrape config.
Not part of the OpenAPI document (its body is not JSON).
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from cloud.api.deps import BearerCredentials, CoordinatorDep, authorize

router = APIRouter(tags=["metrics"])


@router.get("/metrics", include_in_schema=False)
def metrics(coordinator: CoordinatorDep, credentials: BearerCredentials) -> Response:
    """Every coordinator metric in the Prometheus text format (version 0.0.4)."""
    if coordinator.settings.metrics_require_token:
        authorize(coordinator, credentials, "viewer")
    return Response(coordinator.metrics.render(), media_type=coordinator.metrics.CONTENT_TYPE)
