"""Run jobs in this process, after the response, in threads of their own.

At most `INPROCESS_JOB_CONCURRENCY` jobs run at once; the others wait, queued. Jobs do
not share the threadpool that sync endpoints and dependencies use: there, a burst of
long jobs took all 40 threads, and requests waited for a job to end before they could
even start (a 202 took 3.4 s under 125 five-second jobs, measured by bench/run.py).

Nothing else to run, which suits development and small deployments. The limits:
- state lives in this process: a restart forgets every job, and with several server
  workers a `GET /jobs/{id}` may reach a worker that never saw the job;
- a job still running at shutdown gets uvicorn's graceful timeout
  (`--timeout-graceful-shutdown`) to finish, then is cancelled; a hard kill loses it.
{%- if cookiecutter.job_backend == "celery" %}
Choose the Celery backend when jobs must survive those.
{%- endif %}
"""

import logging
import threading
from collections import OrderedDict
from functools import partial
from typing import Any

import anyio
import anyio.to_thread

from .models import JobRequest, JobState, JobStatus, describe_error
from .queue import RunAfterResponse
from .registry import find_job

logger = logging.getLogger(__name__)

# Finished jobs beyond this many are forgotten, oldest first, so memory stays bounded.
DEFAULT_MAX_JOBS = 10_000
DEFAULT_CONCURRENCY = 4


class InMemoryJobStore:
    """Job states by id; safe to update from threadpool workers."""

    def __init__(self, max_jobs: int = DEFAULT_MAX_JOBS) -> None:
        self._jobs: OrderedDict[str, JobState] = OrderedDict()
        self._lock = threading.Lock()
        self._max_jobs = max_jobs

    def add(self, job_id: str) -> None:
        with self._lock:
            self._jobs[job_id] = JobState(id=job_id, status=JobStatus.QUEUED)
            self._forget_oldest_finished()

    def update(self, job_id: str, **changes: Any) -> None:
        with self._lock:
            self._jobs[job_id] = self._jobs[job_id].model_copy(update=changes)

    def get(self, job_id: str) -> JobState | None:
        with self._lock:
            return self._jobs.get(job_id)

    def _forget_oldest_finished(self) -> None:
        excess = len(self._jobs) - self._max_jobs
        if excess <= 0:
            return
        finished = (JobStatus.SUCCEEDED, JobStatus.FAILED)
        for job_id in [i for i, s in self._jobs.items() if s.status in finished][:excess]:
            del self._jobs[job_id]


class InProcessBackend:
    name = "inprocess"

    def __init__(
        self, store: InMemoryJobStore | None = None, concurrency: int = DEFAULT_CONCURRENCY
    ) -> None:
        self.store = store if store is not None else InMemoryJobStore()
        # Job threads are counted against this limiter, not anyio's default one.
        self.slots = anyio.CapacityLimiter(concurrency)

    async def submit(self, job: JobRequest, run_after_response: RunAfterResponse) -> None:
        self.store.add(job.id)
        # A partial, not a lambda: Starlette awaits it only if it can see a coroutine function.
        run_after_response(partial(self.run_when_a_slot_is_free, job))

    async def run_when_a_slot_is_free(self, job: JobRequest) -> None:
        # The thread gets a copy of the request's context, so the job's log lines
        # carry its request id.
        await anyio.to_thread.run_sync(self.run, job, limiter=self.slots)

    def run(self, job: JobRequest) -> None:
        """Run one job to its end, in a thread."""
        self.store.update(job.id, status=JobStatus.RUNNING)
        logger.info("job %s (%s) started", job.id, job.name)
        try:
            result = find_job(job.name)(job.params, lambda p: self.store.update(job.id, progress=p))
        except Exception as exc:
            logger.exception("job %s (%s) failed", job.id, job.name)
            self.store.update(job.id, status=JobStatus.FAILED, error=describe_error(exc))
        else:
            self.store.update(job.id, status=JobStatus.SUCCEEDED, progress=100, result=result)
            logger.info("job %s (%s) succeeded", job.id, job.name)

    async def get(self, job_id: str) -> JobState | None:
        return self.store.get(job_id)

    async def check_dependencies(self) -> dict[str, str]:
        return {}

    async def warnings(self) -> list[str]:
        return []

    async def aclose(self) -> None:
        return None
