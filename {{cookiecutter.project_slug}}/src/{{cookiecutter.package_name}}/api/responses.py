"""The error and status bodies the API answers with, declared once, so the OpenAPI
document describes every response (status, body and headers) a client can get, and a
client generated from it handles them."""

from typing import Any

from pydantic import BaseModel, Field

from ..jobs import JobState

Responses = dict[int | str, dict[str, Any]]


class ErrorBody(BaseModel):
    """A 4xx or 503 whose `detail` says what went wrong, in words."""

    detail: str


class ValidationProblem(BaseModel):
    type: str = Field(description="pydantic's error type, e.g. `missing`, `int_type`.")
    loc: list[str | int] = Field(description='Where the problem is, e.g. `["body", "rows"]`.')
    msg: str = Field(description="What is wrong, in words.")


class ValidationErrorBody(BaseModel):
    """422: one entry a problem; the client's input is never repeated."""

    detail: list[ValidationProblem]


class InternalErrorBody(BaseModel):
    detail: str = "Internal Server Error"
    request_id: str | None = Field(description="Quote it to find the request's log lines.")


class Readiness(BaseModel):
    status: str = Field(description="`ready` or `unavailable`.")
    jobs_backend: str
    checks: dict[str, str] = Field(description='Each dependency: `"ok"`, or why it is not.')
    warnings: list[str] = Field(description="What an operator should know; not fatal.")


RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "string"},
    }
}
LOCATION = {
    "Location": {
        "description": "Where to follow the job: `/jobs/{id}`.",
        "schema": {"type": "string"},
    }
}

INVALID: Responses = {
    400: {"model": ErrorBody, "description": "The body is not UTF-8, or nested too deeply."},
    413: {"model": ErrorBody, "description": "The body is over MAX_REQUEST_BODY_BYTES."},
    422: {"model": ValidationErrorBody, "description": "Invalid fields, or malformed JSON."},
}
UNAVAILABLE: Responses = {
    503: {
        "model": ErrorBody,
        "description": "The job queue cannot take or show jobs now; retry later.",
        "headers": RETRY_AFTER,
    }
}
# Job submissions (issue 10): backpressure, and a key sent again.
QUEUE_FULL: Responses = {
    429: {
        "model": ErrorBody,
        "description": "MAX_QUEUED_JOBS jobs wait already; nothing was queued. Retry later.",
        "headers": RETRY_AFTER,
    }
}
REPLAYED = {
    "Idempotent-Replayed": {
        "description": "`true`: the Idempotency-Key named a job made before; this is it.",
        "schema": {"type": "string"},
    }
}
NOT_FOUND: Responses = {404: {"model": ErrorBody, "description": "No job was issued with this id."}}


class ConflictBody(BaseModel):
    """409: the job's state forbids the request; `job` is that state."""

    detail: str
    job: JobState


# Cancel and retry (issue 10).
CONFLICT: Responses = {
    409: {"model": ConflictBody, "description": "The job's state forbids it; `job` shows it."}
}
# On every operation: a bug answers this, with the request id.
INTERNAL: Responses = {500: {"model": InternalErrorBody, "description": "A bug; see the log."}}
{%- if cookiecutter.auth != "none" %}
CHALLENGE = {
    "WWW-Authenticate": {
        "description": "The bearer challenge (RFC 6750), with `error` when a token was sent.",
        "schema": {"type": "string"},
    }
}
# Every route but the health checks and the docs: the auth middleware answers it.
UNAUTHORIZED: Responses = {
    401: {
        "model": ErrorBody,
        {%- if cookiecutter.auth == "jwt" %}
        "description": "No bearer token, or an invalid one (`error_description` says why).",
        {%- else %}
        "description": "No bearer token, or the wrong one.",
        {%- endif %}
        "headers": CHALLENGE,
    }
}
{%- endif %}
{%- if cookiecutter.auth == "jwt" %}
# Routes with `require_scopes`: the token is valid but lacks a scope. Declared on every
# protected route, as any may come to require one.
FORBIDDEN: Responses = {
    403: {
        "model": ErrorBody,
        "description": (
            'The token lacks a scope the operation needs (`error="insufficient_scope"`).'
        ),
        "headers": CHALLENGE,
    }
}
{%- endif %}
