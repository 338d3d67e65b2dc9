"""Liveness and readiness, for load balancers and orchestrators."""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from .dependencies import JobBackendDep
from .responses import Readiness

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live")
async def live() -> dict[str, str]:
    """200 while the process serves requests; checks nothing else on purpose, so a
    broken dependency does not get the process restarted."""
    return {"status": "ok"}


@router.get(
    "/ready",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready: `checks` says why."}},
)
async def ready(request: Request, backend: JobBackendDep) -> JSONResponse:
    """200 when the service can do its work: start-up finished and every dependency of
    the job backend answers; else 503 naming what failed."""
    checks: dict[str, str] = {
        "startup": "ok" if getattr(request.app.state, "started", False) else "not finished",
        **await backend.check_dependencies(),
    }
    healthy = all(outcome == "ok" for outcome in checks.values())
    body = Readiness(
        status="ready" if healthy else "unavailable",
        jobs_backend=backend.name,
        checks=checks,
        warnings=await backend.warnings(),
    )
    return JSONResponse(body.model_dump(), status_code=200 if healthy else 503)
