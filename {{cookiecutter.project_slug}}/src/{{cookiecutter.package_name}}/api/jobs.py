"""`POST /reports` submits the example heavy job; `GET /jobs/{id}` follows any job,
`DELETE /jobs/{id}` cancels it and `POST /jobs/{id}/retry` runs a failed one again."""

from fastapi import APIRouter, HTTPException, Request, Response, status
from pydantic import BaseModel

from ..jobs import JobQueue, JobState, JobStatus
from ..jobs.reports import ReportParams
from ..middleware.access_log import add_access_log_fields
from .dependencies import IdempotencyKey, JobQueueDep
from .responses import (
    CONFLICT,
    INVALID,
    LOCATION,
    NOT_FOUND,
    QUEUE_FULL,
    REPLAYED,
    UNAVAILABLE,
)
{%- if cookiecutter.auth == "jwt" %}
from .security import require_scopes
{%- endif %}

router = APIRouter(tags=["jobs"])


class JobAccepted(BaseModel):
    id: str
    status: JobStatus = JobStatus.QUEUED


@router.post(
    "/reports",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        202: {"description": "Queued; follow it at `Location`.", "headers": LOCATION},
        200: {
            "model": JobAccepted,
            "description": "The job this Idempotency-Key made before (nothing new queued).",
            "headers": {**LOCATION, **REPLAYED},
        },
        **INVALID,
        **QUEUE_FULL,
        **UNAVAILABLE,
    },
    {%- if cookiecutter.auth == "jwt" %}
    # The example of a scope: submitting work needs more than a valid token.
    dependencies=[require_scopes("reports:write")],
    {%- endif %}
)
async def create_report(
    params: ReportParams,
    request: Request,
    response: Response,
    jobs: JobQueueDep,
    idempotency_key: IdempotencyKey = None,
) -> JobAccepted:
    job = await jobs.admit("build_report", params.model_dump(), idempotency_key=idempotency_key)
    response.headers["Location"] = f"/jobs/{job.id}"
    add_access_log_fields(request, job_id=job.id)
    if job.created:
        return JobAccepted(id=job.id)
    return await replayed(job.id, response, jobs)


async def replayed(job_id: str, response: Response, jobs: JobQueue) -> JobAccepted:
    """The answer to a submission whose key made `job_id` before: 200, and the job as
    it is now (it may have run since)."""
    response.status_code = status.HTTP_200_OK
    response.headers["Idempotent-Replayed"] = "true"
    state = await jobs.get(job_id)
    return JobAccepted(id=job_id, status=state.status if state else JobStatus.QUEUED)


@router.get("/jobs/{job_id}", responses={**NOT_FOUND, **UNAVAILABLE})
async def get_job(job_id: str, jobs: JobQueueDep) -> JobState:
    state = await jobs.get(job_id)
    if state is None:
        raise no_such_job()
    return state


def no_such_job() -> HTTPException:
    return HTTPException(status_code=404, detail="No job with this id")


@router.delete(
    "/jobs/{job_id}",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        202: {
            "description": (
                "Cancelled: a queued job never starts (`cancelled` at once); a running "
                "one is asked to stop and shows `running` until it has."
            )
        },
        **CONFLICT,
        **NOT_FOUND,
        **UNAVAILABLE,
    },
    {%- if cookiecutter.auth == "jwt" %}
    dependencies=[require_scopes("reports:write")],
    {%- endif %}
)
async def cancel_job(job_id: str, jobs: JobQueueDep) -> JobState:
    state = await jobs.cancel(job_id)
    if state is None:
        raise no_such_job()
    return state


@router.post(
    "/jobs/{job_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        202: {"description": "The new job, queued; follow it at `Location`.", "headers": LOCATION},
        **CONFLICT,
        **NOT_FOUND,
        **QUEUE_FULL,
        **UNAVAILABLE,
    },
    {%- if cookiecutter.auth == "jwt" %}
    dependencies=[require_scopes("reports:write")],
    {%- endif %}
)
async def retry_job(
    job_id: str, request: Request, response: Response, jobs: JobQueueDep
) -> JobAccepted:
    job = await jobs.retry(job_id)
    if job is None:
        raise no_such_job()
    response.headers["Location"] = f"/jobs/{job.id}"
    add_access_log_fields(request, job_id=job.id)
    return JobAccepted(id=job.id)
