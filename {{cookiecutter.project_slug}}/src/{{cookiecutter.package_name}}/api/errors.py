"""Errors as JSON: invalid input is a 422 that never echoes the input, a dependency
that is down a 503, a full job queue a 429, anything unexpected a 500."""

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ..context import request_id_var
from ..jobs import (
    IdempotencyKeyReusedError,
    JobBackendUnavailableError,
    JobConflictError,
    QueueFullError,
)
from ..logs import escape_control_characters

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = "5"
# Longest location part (a key of the client's JSON) a 422 repeats.
MAX_LOCATION_PART = 64


def validation_problems(exc: RequestValidationError) -> list[dict[str, Any]]:
    """`{"type", "loc", "msg"}` for each problem, as FastAPI documents them, without
    `input` and `ctx`.

    FastAPI's own handler repeats the client's input. That input may not survive
    encoding (`NaN`, `Infinity` and `1e400` parse as floats that JSON cannot carry; a
    lone surrogate `"\\ud800"` cannot be UTF-8), which turned a 422 into a 500; and
    repeating it would send secrets a client posted by mistake back into logs and
    proxies. The location keeps the client's key names, made safe.
    """
    return [
        {
            "type": error["type"],
            "loc": [
                part
                if isinstance(part, int)
                else escape_control_characters(str(part)[:MAX_LOCATION_PART])
                for part in error["loc"]
            ],
            "msg": escape_control_characters(error["msg"]),
        }
        for error in exc.errors()
    ]


async def invalid_request(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": validation_problems(exc)}, status_code=422)


async def job_backend_unavailable(request: Request, exc: Exception) -> JSONResponse:
    logger.warning("job backend unavailable: %s", exc)
    return JSONResponse(
        {"detail": "The job queue is unavailable; retry later."},
        status_code=503,
        headers={"Retry-After": RETRY_AFTER_SECONDS},
    )


async def job_conflict(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, JobConflictError)
    return JSONResponse(
        {"detail": exc.detail, "job": exc.state.model_dump(mode="json")}, status_code=409
    )


async def queue_full(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, QueueFullError)
    return JSONResponse(
        {
            "detail": (
                f"The job queue is full: {exc.limit} jobs are waiting (MAX_QUEUED_JOBS); "
                "nothing was queued. Retry later."
            )
        },
        status_code=429,
        headers={"Retry-After": RETRY_AFTER_SECONDS},
    )


async def idempotency_key_reused(request: Request, exc: Exception) -> JSONResponse:
    # Shaped like every other 422 (`loc` names the header); the key is the client's own,
    # visible ASCII by the header's rule, so it is safe to repeat.
    key = request.headers.get("idempotency-key", "")
    return JSONResponse(
        {
            "detail": [
                {
                    "type": "idempotency_key_reused",
                    "loc": ["header", "Idempotency-Key"],
                    "msg": (
                        f"Idempotency-Key {key!r} was first used with another request "
                        "body; use a new key for a new job"
                    ),
                }
            ]
        },
        status_code=422,
    )


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    # Starlette's ServerErrorMiddleware calls this, then re-raises so the server logs
    # the traceback (with the request id: see the request-id middleware).
    return JSONResponse(
        {"detail": "Internal Server Error", "request_id": request_id_var.get()},
        status_code=500,
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(JobBackendUnavailableError, job_backend_unavailable)
    app.add_exception_handler(JobConflictError, job_conflict)
    app.add_exception_handler(QueueFullError, queue_full)
    app.add_exception_handler(IdempotencyKeyReusedError, idempotency_key_reused)
    app.add_exception_handler(Exception, internal_error)
