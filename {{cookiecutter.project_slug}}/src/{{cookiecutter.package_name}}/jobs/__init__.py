"""Heavy jobs: one interface (`JobQueue`), two backends, chosen once from settings."""

from {{ cookiecutter.package_name }}.jobs.inprocess import InProcessBackend
from {{ cookiecutter.package_name }}.jobs.models import (
    JobBackendUnavailableError,
    JobRequest,
    JobState,
    JobStatus,
)
from {{ cookiecutter.package_name }}.jobs.queue import JobBackend, JobQueue, RunAfterResponse
from {{ cookiecutter.package_name }}.settings import Settings


def build_job_backend(settings: Settings) -> JobBackend:
    {%- if cookiecutter.job_backend == "celery" %}
    if settings.jobs_backend == "celery":
        # Imported only when chosen: an in-process service never loads Celery.
        from {{ cookiecutter.package_name }}.jobs.celery_backend import CeleryBackend

        return CeleryBackend(settings)
    {%- else %}
    del settings  # one backend in this project; JOBS_BACKEND can only say "inprocess"
    {%- endif %}
    return InProcessBackend()


__all__ = [
    "JobBackend",
    "JobBackendUnavailableError",
    "JobQueue",
    "JobRequest",
    "JobState",
    "JobStatus",
    "RunAfterResponse",
    "build_job_backend",
]
