"""Run jobs in this process, after the response, in threads of their own.

At most `INPROCESS_JOB_CONCURRENCY` jobs run at once; the others wait, queued. Jobs do
not share the threadpool that sync endpoints and dependencies use: there, a burst of
long jobs took all 40 threads, and requests waited for a job to end before they could
even start (a 202 took 3.4 s under 125 five-second jobs, measured by bench/run.py).

Nothing else to run, which suits development and small deployments. The limits:
- state lives in this process: a restart forgets every job, and with several server
  workers a `GET /jobs/{id}` may reach a worker that never saw the job;
- on SIGTERM (or Ctrl-C) running jobs get uvicorn's graceful timeout
  (`--timeout-graceful-shutdown`) to finish; queued jobs never start and are marked
  failed, saying so; a second signal stops the process at once; a hard kill loses all;
- cancelling a running job asks it to stop at its next progress report; a thread
  cannot be killed, so a job that never reports runs to its end{% if cookiecutter.job_backend != "inprocess" %} (Celery terminates
  such a job after `JOB_CANCEL_GRACE_SECONDS`){% endif %};
- a finished job stays readable for `JOB_RETENTION_SECONDS`, and at most
  `INPROCESS_MAX_FINISHED_JOBS` finished jobs are kept (the oldest go first), which
  bounds their memory: 0.43 KB each for the example job, 2.1 MB at the default
  5,000 (tracemalloc; see `InMemoryJobStore`);
- at most `MAX_QUEUED_JOBS` jobs wait (default 1,000: at 4 at once, that is already
  hours of work for jobs of a few seconds); beyond it a submission is refused (429);
- an `Idempotency-Key` is remembered by this process only, like its jobs.
{%- if cookiecutter.job_backend != "inprocess" %}
Choose the Celery backend when jobs must survive those.
{%- endif %}
"""

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

import anyio
import anyio.to_thread
from pydantic import TypeAdapter

from .models import (
    FINAL_STATUSES,
    IdempotencyClaim,
    IdempotencyKeyReusedError,
    JobBackendUnavailableError,
    JobCancelledError,
    JobConflictError,
    JobRequest,
    JobState,
    JobStatus,
    QueueFullError,
    cancel_conflict,
    describe_error,
    retry_conflict,
)
from .queue import NO_JOB_EVENTS, JobEvents, RunAfterResponse
from .registry import find_job
from .watch import RESYNC, ChangeSlot, JobWatch

logger = logging.getLogger(__name__)

DEFAULT_MAX_FINISHED_JOBS = 5_000
DEFAULT_RETENTION_SECONDS = 86_400.0
DEFAULT_CONCURRENCY = 4
DEFAULT_MAX_QUEUED_JOBS = 1_000
NOT_STARTED_AT_SHUTDOWN = "not started: the server shut down first; submit it again"
NOT_JSON = "the job's result could not be stored: it is not JSON"
NO_REQUEST = "the job's name and parameters were not kept: it cannot be retried"
JOB_STATE = TypeAdapter(JobState)


class InMemoryJobStore:
    """Job states by id; safe to update from job threads.

    Finished jobs are forgotten `retention_seconds` after they end, or sooner, oldest
    first, when more than `max_finished` have ended. Queued and running jobs are kept.

    A finished job never changes again, so it is kept as the JSON a reader gets, not
    as a model: 0.43 KB against 0.88 KB for the example job (tracemalloc, 10,000 jobs).
    With the models, the default bound of 10,000 then grew the process by 19% in
    bench/run.py's part 6 (100,000 requests, 20,000 jobs; the target is 10%); as
    JSON, by 12% (10% once job ids stayed out of pydantic's string cache); with the
    default now 5,000, by 6%.

    What each job ran (its name and params, for a retry) is kept as JSON too, as long
    as its state: 0.12 KB more for the example job (0.37 KB to 0.49 KB a finished job,
    tracemalloc, 10,000 jobs).
    """

    def __init__(
        self,
        max_finished: int = DEFAULT_MAX_FINISHED_JOBS,
        retention_seconds: float = DEFAULT_RETENTION_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # Queued and running jobs, which their threads update.
        self._active: dict[str, JobState] = {}
        # Finished jobs in the order they ended, with when: the oldest come first.
        self._finished: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        # `{"name", "params"}` of each job above, for `POST /jobs/{id}/retry`.
        self._requests: dict[str, bytes] = {}
        # Running jobs asked to stop: their progress reporter raises JobCancelledError.
        self._cancelling: set[str] = set()
        # The ids of jobs not started yet: counted at each submission, so kept apart
        # rather than counted by a scan of every active job.
        self._queued: set[str] = set()
        # Idempotency keys, oldest first: key -> (claimed at, request hash, job id).
        self._claims: OrderedDict[str, tuple[float, str, str]] = OrderedDict()
        self._lock = threading.Lock()
        # Who follows which job (GET /jobs/{id}/events): called on each change, under
        # the lock, from whichever thread made it. No polling: a change wakes them.
        self._watchers: dict[str, list[Callable[[], None]]] = {}
        self.max_finished = max_finished
        self.retention_seconds = retention_seconds
        self._clock = clock

    def add(self, job_id: str, job: JobRequest | None = None) -> None:
        """Record a queued job; with `job`, what it runs, so that it can be retried."""
        with self._lock:
            self._forget_expired()
            self._add(job_id, job)

    def admit(
        self,
        job_id: str,
        max_queued: int,
        claim: IdempotencyClaim | None,
        job: JobRequest | None = None,
    ) -> str:
        """Add the job as queued and return its id, unless `claim`'s key names a job
        already (return that job's id) or `max_queued` jobs wait (QueueFullError).

        One lock around the look-up, the count and the add: two submissions with one
        key, from two threads or two requests, make one job."""
        with self._lock:
            self._forget_expired()
            if claim is not None and (first := self._claims.get(claim.key)) is not None:
                _, request_hash, first_id = first
                if request_hash != claim.request_hash:
                    raise IdempotencyKeyReusedError
                return first_id
            if len(self._queued) >= max_queued:
                raise QueueFullError(max_queued)
            self._add(job_id, job)
            if claim is not None:
                self._claims[claim.key] = (self._clock(), claim.request_hash, job_id)
            return job_id

    def _add(self, job_id: str, job: JobRequest | None) -> None:
        """Record a queued job; with `job`, what it runs, so that it can be retried."""
        self._active[job_id] = JobState(id=job_id, status=JobStatus.QUEUED)
        self._queued.add(job_id)
        if job is not None:
            what = {"name": job.name, "params": job.params}
            self._requests[job_id] = json.dumps(what).encode()

    def update(self, job_id: str, **changes: Any) -> None:
        with self._lock:
            state = self._active.get(job_id)
            if state is None:
                return  # forgotten, or ended already (failed at shutdown): keep the end
            state = state.model_copy(update=changes)
            if state.status is not JobStatus.QUEUED:
                self._queued.discard(job_id)
            if state.status in FINAL_STATUSES:
                self._finish(state)
                self._forget_expired()
            else:
                self._active[job_id] = state
            self._notify(job_id)

    def start_if_queued(self, job_id: str) -> bool:
        """Mark the job running, unless it is no longer queued (failed at shutdown)."""
        with self._lock:
            state = self._active.get(job_id)
            if state is None or state.status is not JobStatus.QUEUED:
                return False
            self._active[job_id] = state.model_copy(update={"status": JobStatus.RUNNING})
            self._notify(job_id)
            self._queued.discard(job_id)
            return True

    def cancel(self, job_id: str) -> JobState | None:
        """A queued job ends `cancelled` now; a running one is marked to stop (at its
        next progress report). The state after, or None for an unknown id."""
        with self._lock:
            self._forget_expired()
            state = self._active.get(job_id)
            if state is None:
                finished = self._finished.get(job_id)
                if finished is None:
                    return None
                raise cancel_conflict(JOB_STATE.validate_json(finished[1]))
            if state.status is JobStatus.QUEUED:
                state = state.model_copy(update={"status": JobStatus.CANCELLED})
                self._finish(state)
                self._notify(job_id)
            else:
                self._cancelling.add(job_id)
            return state

    def cancel_requested(self, job_id: str) -> bool:
        return job_id in self._cancelling  # one set lookup: atomic under the GIL

    def claim_retry(self, job_id: str, new_id: str) -> tuple[str, dict[str, Any]] | None:
        """Record `new_id` as the retry of the failed or cancelled `job_id`; return the
        name and params to run again, or None for an unknown id."""
        with self._lock:
            self._forget_expired()
            if (active := self._active.get(job_id)) is not None:
                conflict = retry_conflict(active)
                assert conflict is not None  # a job still active is queued or running
                raise conflict
            if (finished := self._finished.get(job_id)) is None:
                return None
            finished_at, frozen = finished
            state = JOB_STATE.validate_json(frozen)
            if (conflict := retry_conflict(state)) is not None:
                raise conflict
            if (request := self._requests.get(job_id)) is None:
                raise JobConflictError(NO_REQUEST, state)
            retried = state.model_copy(update={"retried_as": new_id})
            # In place: the job keeps its place in the order of ending.
            self._finished[job_id] = (finished_at, JOB_STATE.dump_json(retried))
            what = json.loads(request)
            return what["name"], what["params"]

    def release_retry(self, job_id: str, new_id: str) -> None:
        """Undo `claim_retry` of `new_id`, which could not be queued."""
        with self._lock:
            if (finished := self._finished.get(job_id)) is None:
                return
            finished_at, frozen = finished
            state = JOB_STATE.validate_json(frozen)
            if state.retried_as == new_id:
                released = state.model_copy(update={"retried_as": None})
                self._finished[job_id] = (finished_at, JOB_STATE.dump_json(released))

    def fail_queued(self, error: str) -> list[str]:
        """Mark every queued job failed with `error`; return their ids."""
        with self._lock:
            failed = [i for i, s in self._active.items() if s.status is JobStatus.QUEUED]
            for job_id in failed:
                self._finish(
                    self._active[job_id].model_copy(
                        update={"status": JobStatus.FAILED, "error": error}
                    )
                )
                self._notify(job_id)
            return failed

    def get(self, job_id: str) -> JobState | None:
        with self._lock:
            self._forget_expired()
            state = self._active.get(job_id)
            finished = self._finished.get(job_id) if state is None else None
        if finished is not None:
            return JOB_STATE.validate_json(finished[1])
        return state

    def watch(self, job_id: str, wake: Callable[[], None]) -> None:
        """Call `wake()` after each change of the job, until `unwatch`."""
        with self._lock:
            self._watchers.setdefault(job_id, []).append(wake)

    def unwatch(self, job_id: str, wake: Callable[[], None]) -> None:
        with self._lock:
            watchers = self._watchers.get(job_id, [])
            if wake in watchers:
                watchers.remove(wake)
            if not watchers:
                self._watchers.pop(job_id, None)

    def watcher_count(self) -> int:
        """Followers of any job: what a disconnected client must leave behind (none)."""
        with self._lock:
            return sum(len(w) for w in self._watchers.values())

    def _notify(self, job_id: str) -> None:
        # One dict lookup per update while no one follows the job.
        for wake in self._watchers.get(job_id, ()):
            wake()

    def queued_count(self) -> int:
        with self._lock:
            return len(self._queued)

    def __len__(self) -> int:
        with self._lock:
            return len(self._active) + len(self._finished)

    def _finish(self, state: JobState) -> None:
        try:
            frozen = JOB_STATE.dump_json(state)
        except ValueError as exc:  # pydantic's PydanticSerializationError
            # Caught here, where it can still be told: sent as is, it would be a 500
            # on every GET /jobs/{id}.
            logger.error("job %s: its result is not JSON: %s", state.id, exc)
            failed = {"status": JobStatus.FAILED, "result": None, "error": NOT_JSON}
            frozen = JOB_STATE.dump_json(state.model_copy(update=failed))
        del self._active[state.id]
        self._cancelling.discard(state.id)
        self._queued.discard(state.id)
        self._finished[state.id] = (self._clock(), frozen)

    def _forget_expired(self) -> None:
        # Oldest first, so each call stops at the first job still to keep: O(1) a call
        # when nothing is due (the count-only store before scanned every job each time).
        oldest_kept = self._clock() - self.retention_seconds
        while self._finished:
            job_id, (finished_at, _) = next(iter(self._finished.items()))
            if finished_at > oldest_kept and len(self._finished) <= self.max_finished:
                break
            del self._finished[job_id]
            self._requests.pop(job_id, None)
        # A key is kept as long as a finished job at most, and no more of them than of
        # jobs kept: a key whose job is forgotten could only name a 404.
        while self._claims:
            key, (claimed_at, _, _) = next(iter(self._claims.items()))
            if claimed_at > oldest_kept and len(self._claims) <= self.max_claims:
                break
            del self._claims[key]

    @property
    def max_claims(self) -> int:
        return self.max_finished + len(self._active)


class InProcessBackend:
    name = "inprocess"

    def __init__(
        self,
        store: InMemoryJobStore | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        events: JobEvents = NO_JOB_EVENTS,
        max_queued: int = DEFAULT_MAX_QUEUED_JOBS,
    ) -> None:
        self.store = store if store is not None else InMemoryJobStore()
        self.events = events
        self.max_queued = max_queued
        # Job threads are counted against this limiter, not anyio's default one.
        self.slots = anyio.CapacityLimiter(concurrency)
        # Jobs still waiting for a slot, by id: shutdown cancels the wait.
        self._waiting: dict[str, anyio.CancelScope] = {}
        self.stopping = False

    async def submit(
        self,
        job: JobRequest,
        run_after_response: RunAfterResponse,
        claim: IdempotencyClaim | None = None,
    ) -> str:
        if self.stopping:
            raise JobBackendUnavailableError("the server is shutting down")
        job_id = self.store.admit(job.id, self.max_queued, claim, job)
        if job_id == job.id:
            # A partial, not a lambda: Starlette awaits it only if it can see a coroutine
            # function.
            run_after_response(partial(self.run_when_a_slot_is_free, job))
        return job_id

    async def run_when_a_slot_is_free(self, job: JobRequest) -> None:
        with anyio.CancelScope() as waiting:
            self._waiting[job.id] = waiting
            try:
                # The thread gets a copy of the request's context, so the job's log lines
                # carry its request id.
                await anyio.to_thread.run_sync(self.run, job, limiter=self.slots)
            finally:
                self._waiting.pop(job.id, None)

    def run(self, job: JobRequest) -> None:
        """Run one job to its end, in a thread."""
        if not self.store.start_if_queued(job.id):
            return  # failed at shutdown before it could start
        logger.info("job %s (%s) started", job.id, job.name)
        self.events.started(job.name)
        started = time.perf_counter()
        try:
            result = find_job(job.name)(job.params, partial(self.report_progress, job.id))
        except JobCancelledError:
            logger.info("job %s (%s) cancelled", job.id, job.name)
            self.store.update(job.id, status=JobStatus.CANCELLED)
            self.events.ended(job.name, "cancelled", time.perf_counter() - started)
        except Exception as exc:
            logger.exception("job %s (%s) failed", job.id, job.name)
            self.store.update(job.id, status=JobStatus.FAILED, error=describe_error(exc))
            self.events.ended(job.name, "failed", time.perf_counter() - started)
        else:
            self.store.update(job.id, status=JobStatus.SUCCEEDED, progress=100, result=result)
            logger.info("job %s (%s) succeeded", job.id, job.name)
            self.events.ended(job.name, "succeeded", time.perf_counter() - started)

    def report_progress(self, job_id: str, percent: int) -> None:
        """A job's `report_progress`; raises JobCancelledError once it was cancelled."""
        if self.store.cancel_requested(job_id):
            raise JobCancelledError(f"job {job_id} was cancelled")
        self.store.update(job_id, progress=percent)

    async def cancel(self, job_id: str) -> JobState | None:
        state = self.store.cancel(job_id)
        if state is not None and state.status is JobStatus.CANCELLED:
            logger.info("job %s cancelled before it started", job_id)
            if (waiting := self._waiting.get(job_id)) is not None:
                waiting.cancel()  # it waits for a slot no more
        elif state is not None:
            logger.info("job %s asked to stop", job_id)
        return state

    async def retry(
        self, job_id: str, new_job: JobRequest, run_after_response: RunAfterResponse
    ) -> JobRequest | None:
        if self.stopping:
            raise JobBackendUnavailableError("the server is shutting down")
        claimed = self.store.claim_retry(job_id, new_job.id)
        if claimed is None:
            return None
        name, params = claimed
        job = replace(new_job, name=name, params=params)
        try:
            await self.submit(job, run_after_response)
        except QueueFullError:
            self.store.release_retry(job_id, job.id)  # not queued: it can be retried again
            raise
        logger.info("job %s retried as %s", job_id, job.id)
        return job

    def begin_shutdown(self) -> None:
        """The server got its stop signal: take no more jobs, start no queued one.

        Call it on the event loop. Running jobs go on; the server's graceful timeout
        bounds how long it waits for them.
        """
        if self.stopping:
            return
        self.stopping = True
        failed = self.store.fail_queued(NOT_STARTED_AT_SHUTDOWN)
        for job_id in failed:
            logger.info("job %s failed: %s", job_id, NOT_STARTED_AT_SHUTDOWN)
            if (waiting := self._waiting.get(job_id)) is not None:
                # Only the wait for a slot is cancelled; a job whose thread got a slot
                # already finds itself failed and returns at once.
                waiting.cancel()
        if failed:
            logger.warning("shutting down: %d queued job(s) will not start", len(failed))

    async def get(self, job_id: str) -> JobState | None:
        return self.store.get(job_id)

    async def follow(self, job_id: str) -> JobWatch | None:
        slot = ChangeSlot()
        loop = asyncio.get_running_loop()

        def wake() -> None:  # in a job thread, or on the loop (shutdown)
            with contextlib.suppress(RuntimeError):  # the loop closed: no one to tell
                loop.call_soon_threadsafe(slot.put, RESYNC)

        # Watch first, then read: a change between the two still wakes the slot.
        self.store.watch(job_id, wake)
        state = self.store.get(job_id)
        if state is None:
            self.store.unwatch(job_id, wake)
            return None

        async def read() -> JobState | None:
            return self.store.get(job_id)

        return JobWatch(state, slot, read, partial(self.store.unwatch, job_id, wake))

    async def check_dependencies(self) -> dict[str, str]:
        return {}

    async def warnings(self) -> list[str]:
        return []

    async def waiting_jobs(self) -> int:
        return self.store.queued_count()

    async def aclose(self) -> None:
        self.begin_shutdown()
