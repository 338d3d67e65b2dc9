"""Dependencies shared by the routers."""

from typing import Annotated

from fastapi import BackgroundTasks, Depends, Header, Request

from ..jobs import JobBackend, JobQueue


# `async def`, though they await nothing: FastAPI runs a plain `def` dependency in the
# threadpool, a thread hop per request for a lookup.
async def job_backend(request: Request) -> JobBackend:
    backend: JobBackend = request.app.state.job_backend
    return backend


async def job_queue(
    backend: Annotated[JobBackend, Depends(job_backend)], background_tasks: BackgroundTasks
) -> JobQueue:
    # FastAPI hands every dependency of a request the same BackgroundTasks object; the
    # in-process backend queues its jobs on it, to run after the response.
    return JobQueue(backend, background_tasks.add_task)


JobQueueDep = Annotated[JobQueue, Depends(job_queue)]
JobBackendDep = Annotated[JobBackend, Depends(job_backend)]

# 1 to 128 visible ASCII characters (the rule; a UUID is the usual choice). A
# bad one is a 422 whose `loc` names the header, like any invalid field.
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=128,
        pattern=r"^[!-~]+$",
        description=(
            "Makes the submission safe to send again: the same key with the same body "
            "returns the first job (200) for JOB_RETENTION_SECONDS; with another body, 422."
        ),
    ),
]
