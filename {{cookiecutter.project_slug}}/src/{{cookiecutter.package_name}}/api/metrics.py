"""`GET /metrics`: the Prometheus text format, behind the same auth as every route."""

from fastapi import APIRouter, Request, Response

from ..middleware.metrics import METRICS_PATH
from .dependencies import JobBackendDep

router = APIRouter(tags=["metrics"])


# Left out of the OpenAPI document: it is for Prometheus, not for API clients.
@router.get(METRICS_PATH, include_in_schema=False)
async def metrics(request: Request, backend: JobBackendDep) -> Response:
    exposition = request.app.state.metrics.exposition
    body = exposition.render(waiting_jobs=await backend.waiting_jobs())
    return Response(body, media_type=exposition.content_type)
