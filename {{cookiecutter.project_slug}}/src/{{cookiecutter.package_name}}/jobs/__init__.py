"""Heavy jobs: one interface (`JobQueue`), two backends, chosen once from settings."""

from ..settings import Settings
from .inprocess import DEFAULT_MAX_QUEUED_JOBS, InMemoryJobStore, InProcessBackend
from .models import (
    IdempotencyKeyReusedError,
    JobBackendUnavailableError,
    JobCancelledError,
    JobConflictError,
    JobRequest,
    JobState,
    JobStatus,
    QueueFullError,
)
from .queue import (
    NO_JOB_EVENTS,
    Admission,
    JobBackend,
    JobEvents,
    JobQueue,
    RunAfterResponse,
)


def build_job_backend(settings: Settings, events: JobEvents = NO_JOB_EVENTS) -> JobBackend:
    {%- if cookiecutter.job_backend != "inprocess" %}
    if settings.jobs_backend == "celery":
        # Imported only when chosen: an in-process service never loads Celery.
        from .celery_backend import CeleryBackend

        return CeleryBackend(settings, events)
    {%- endif %}
    store = InMemoryJobStore(
        max_finished=settings.inprocess_max_finished_jobs,
        retention_seconds=settings.job_retention_seconds,
    )
    return InProcessBackend(
        store,
        concurrency=settings.inprocess_job_concurrency,
        events=events,
        max_queued=settings.max_queued_jobs or DEFAULT_MAX_QUEUED_JOBS,
    )


__all__ = [
    "NO_JOB_EVENTS",
    "Admission",
    "IdempotencyKeyReusedError",
    "JobBackend",
    "JobBackendUnavailableError",
    "JobCancelledError",
    "JobConflictError",
    "JobEvents",
    "JobQueue",
    "JobRequest",
    "JobState",
    "JobStatus",
    "QueueFullError",
    "RunAfterResponse",
    "build_job_backend",
]
