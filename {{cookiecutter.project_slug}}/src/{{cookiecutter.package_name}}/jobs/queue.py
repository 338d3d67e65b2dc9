"""The one interface endpoints use to run heavy jobs; it never names a backend.

    job_id = await jobs.submit("build_report", {"rows": 100})
    state = await jobs.get(job_id)

With `idempotency_key=`, a submission the client sends again (its connection broke
before the answer) finds the job the first one made instead of making another;
`admit` also says which happened, for the API's 202 or 200.

The backend is picked once, at start-up, from `JOBS_BACKEND`.
"""

import hashlib
import json
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ..context import request_id_var, subject_var
from .models import IdempotencyClaim, JobRequest, JobState
from .registry import find_job
from .watch import JobWatch

# Schedules a callable to run once the response has been sent (BackgroundTasks in
# the API). The in-process backend runs jobs through it; a backend that runs jobs
# elsewhere ignores it.
RunAfterResponse = Callable[[Callable[[], Awaitable[None]]], None]


class JobEvents(Protocol):
    """What happens to jobs, told to whoever counts it (the metrics): a few calls, so
    nothing here knows about Prometheus. Each is called once per event, in the process
    where it happens (a job's start and end where the job runs)."""

    def submitted(self, name: str) -> None: ...

    def started(self, name: str) -> None: ...

    def ended(self, name: str, outcome: str, seconds: float) -> None:
        """`outcome` is "succeeded", "failed", "retried" or "cancelled"."""


class NoJobEvents:
    """Counts nothing: for backends built without metrics (tests, tools)."""

    def submitted(self, name: str) -> None:
        return None

    def started(self, name: str) -> None:
        return None

    def ended(self, name: str, outcome: str, seconds: float) -> None:
        return None


NO_JOB_EVENTS = NoJobEvents()


class JobBackend(Protocol):
    name: str
    events: JobEvents

    async def submit(
        self,
        job: JobRequest,
        run_after_response: RunAfterResponse,
        claim: IdempotencyClaim | None = None,
    ) -> str:
        """Record the job as queued and hand it on, and return its id; raise
        JobBackendUnavailableError when that is not possible right now.

        Admission, decided atomically with the queueing (no read-then-write): with a
        `claim` whose key already names a job, return that job's id and queue nothing,
        or raise IdempotencyKeyReusedError if its request hash differs; else, while
        `MAX_QUEUED_JOBS` jobs wait, raise QueueFullError and queue nothing."""

    async def get(self, job_id: str) -> JobState | None:
        """The job's state, or None for an id this backend never issued."""

    async def check_dependencies(self) -> dict[str, str]:
        """What the backend needs, each mapped to "ok" or to why it is not."""

    async def warnings(self) -> list[str]:
        """What an operator should know that does not stop the service (a result
        store without persistence); logged at start-up and shown by readiness."""

    def begin_shutdown(self) -> None:
        """The server got its stop signal (called on the event loop): stop starting
        jobs this process holds. A backend whose jobs run elsewhere has nothing to do."""

    async def aclose(self) -> None:
        """Release connections at shutdown."""

    async def waiting_jobs(self) -> int | None:
        """Jobs submitted and not started yet, or None when that cannot be known now
        (its store is down): read for the queue-depth gauge at each scrape."""

    async def cancel(self, job_id: str) -> JobState | None:
        """Cancel the job: a queued one never starts (its state says `cancelled` at
        once), a running one is asked to stop (`JobCancelledError` at its next progress
        report). The state after, or None for an id never issued; raise
        JobConflictError for a job that has ended."""

    async def retry(
        self, job_id: str, new_job: JobRequest, run_after_response: RunAfterResponse
    ) -> JobRequest | None:
        """Submit the failed or cancelled `job_id` again as `new_job` (its id, request
        id and subject; the name and params are the old job's), record it as the old
        job's `retried_as`, once (of two retries at once, one gets JobConflictError),
        and return what was submitted. None for an id never issued; raise
        JobConflictError for a job in any other state."""

    # Live progress (GET /jobs/{id}/events)
    async def follow(self, job_id: str) -> JobWatch | None:
        """Subscribe to the job's changes, then read its state: a watch that yields
        it and each change after, or None (nothing left subscribed) for an id never
        issued. Raise JobBackendUnavailableError when the store cannot be reached."""


@dataclass(frozen=True)
class Admission:
    """A submission's outcome: the job's id, and whether this submission made it
    (false: its idempotency key named a job made before)."""

    id: str
    created: bool


def idempotency_claim(
    key: str, subject: str | None, name: str, params: Mapping[str, Any]
) -> IdempotencyClaim:
    """The claim a key makes. Scoped to the subject: two clients that pick the same
    key (`retry-1`) must neither share a job nor learn of each other's. The request hash
    is of the job as validated (name and params), so a body that differs only in
    spacing, key order or a default spelt out is the same request."""
    scoped = hashlib.sha256(f"{subject or ''}\n{key}".encode()).hexdigest()
    request = json.dumps([name, dict(params)], sort_keys=True, separators=(",", ":"))
    return IdempotencyClaim(scoped, hashlib.sha256(request.encode()).hexdigest())


class JobQueue:
    """A backend bound to one request's after-response hook."""

    def __init__(self, backend: JobBackend, run_after_response: RunAfterResponse) -> None:
        self._backend = backend
        self._run_after_response = run_after_response

    async def submit(
        self, name: str, params: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> str:
        """The job's id: a new job, or the one `idempotency_key` made before."""
        return (await self.admit(name, params, idempotency_key=idempotency_key)).id

    async def admit(
        self, name: str, params: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> Admission:
        """`submit`, saying also whether the job is new. Raises QueueFullError while
        MAX_QUEUED_JOBS jobs wait, IdempotencyKeyReusedError for a key seen with
        another job or params."""
        find_job(name)  # an unknown name fails here, in the request, on any backend
        subject = subject_var.get()
        job = JobRequest(
            id=uuid.uuid4().hex,
            name=name,
            params=dict(params),
            request_id=request_id_var.get(),
            subject=subject,
        )
        claim = None
        if idempotency_key is not None:
            claim = idempotency_claim(idempotency_key, subject, name, job.params)
        job_id = await self._backend.submit(job, self._run_after_response, claim)
        if job_id != job.id:
            return Admission(job_id, created=False)
        self._backend.events.submitted(name)
        return Admission(job.id, created=True)

    async def cancel(self, job_id: str) -> JobState | None:
        return await self._backend.cancel(job_id)

    async def retry(self, job_id: str) -> JobRequest | None:
        """A new job with the old one's name and params, submitted by this request;
        None for an unknown id."""
        # The backend fills in the old job's name and params.
        new_job = JobRequest(
            id=uuid.uuid4().hex,
            name="",
            request_id=request_id_var.get(),
            subject=subject_var.get(),
        )
        job = await self._backend.retry(job_id, new_job, self._run_after_response)
        if job is not None:
            self._backend.events.submitted(job.name)
        return job

    async def get(self, job_id: str) -> JobState | None:
        return await self._backend.get(job_id)

    async def follow(self, job_id: str) -> JobWatch | None:
        return await self._backend.follow(job_id)
