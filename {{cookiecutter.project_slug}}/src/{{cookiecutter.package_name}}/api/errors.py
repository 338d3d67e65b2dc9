"""Errors as JSON: a dependency that is down is a 503, anything unexpected a 500."""

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ..context import request_id_var
from ..jobs import JobBackendUnavailableError

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = "5"


async def job_backend_unavailable(request: Request, exc: Exception) -> JSONResponse:
    logger.warning("job backend unavailable: %s", exc)
    return JSONResponse(
        {"detail": "The job queue is unavailable; retry later."},
        status_code=503,
        headers={"Retry-After": RETRY_AFTER_SECONDS},
    )


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    # Starlette's ServerErrorMiddleware calls this, then re-raises so the server logs
    # the traceback (with the request id: see the request-id middleware).
    return JSONResponse(
        {"detail": "Internal Server Error", "request_id": request_id_var.get()},
        status_code=500,
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(JobBackendUnavailableError, job_backend_unavailable)
    app.add_exception_handler(Exception, internal_error)
