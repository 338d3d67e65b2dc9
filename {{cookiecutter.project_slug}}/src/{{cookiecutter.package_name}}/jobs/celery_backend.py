"""Run jobs on Celery workers through Redis: durable, retried, and scaled out by
starting more workers, on any machine that reaches the same Redis.

Every call into Celery or Redis blocks, so each runs in a thread, with short timeouts,
and all the Redis work of one request shares one deadline (`JOB_BACKEND_DEADLINE_SECONDS`):
a Redis that is down or hung costs a request at most that, never the event loop.
"""

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TypeVar

import redis
from celery.backends.redis import RedisBackend

from ..settings import Settings
from .celery_app import (
    CONNECTION_ERRORS,
    PROGRESS,
    QUEUED,
    REDIS_TIMEOUT_SECONDS,
    REQUEST_ID_HEADER,
    RUN_JOB_TASK,
    create_celery_app,
    write_state,
)
from .models import (
    JobBackendUnavailableError,
    JobFailedError,
    JobRequest,
    JobState,
    JobStatus,
    describe_error,
)
from .queue import RunAfterResponse

logger = logging.getLogger(__name__)

# Celery keeps a Redis client per thread. A few threads of its own keep that to a few
# warm connections, where the shared threadpool would grow one per thread (up to 40),
# each connected on its first job.
CLIENT_THREADS = 4

T = TypeVar("T")

# What a broken connection to Redis looks like, depending on which layer noticed.
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (*CONNECTION_ERRORS, RuntimeError)

# What clients read for failures that Celery itself records, not the job's own errors.
CELERY_FAILURES = {
    "TimeLimitExceeded": "the job ran past its time limit (JOB_TIME_LIMIT_SECONDS) and was stopped",
    "WorkerLostError": "the worker process running the job died",
}

CELERY_STATE_TO_STATUS = {
    QUEUED: JobStatus.QUEUED,
    "RETRY": JobStatus.QUEUED,
    "STARTED": JobStatus.RUNNING,
    PROGRESS: JobStatus.RUNNING,
    "SUCCESS": JobStatus.SUCCEEDED,
    "FAILURE": JobStatus.FAILED,
    "REVOKED": JobStatus.FAILED,
}


class CeleryBackend:
    name = "celery"

    def __init__(self, settings: Settings) -> None:
        self.app = create_celery_app(settings)
        result_store = self.app.backend
        assert isinstance(result_store, RedisBackend), "REDIS_URL is the result backend"
        # Readiness pings Redis with the result store's own client: the same server,
        # the same short timeouts, no second connection pool.
        self.redis = result_store.client
        self.retention_seconds = settings.job_retention_seconds
        self.deadline_seconds = settings.job_backend_deadline_seconds
        self._persistence: str | None = None  # known after the first answer from Redis
        self._threads = ThreadPoolExecutor(CLIENT_THREADS, thread_name_prefix="celery-client")

    async def _in_thread(self, call: Callable[[float], T]) -> T:
        """`call(deadline)` in a client thread, bounded by this request's deadline.

        Each Redis call has its own short timeout, and a request may make several
        (a frozen Redis cost 1 s each, 3 s in all): the request gives up at the
        deadline whatever is still under way, and the thread checks it between calls.
        """
        deadline = time.monotonic() + self.deadline_seconds
        context = contextvars.copy_context()  # the request id, for the log lines
        future = asyncio.get_running_loop().run_in_executor(
            self._threads, context.run, call, deadline
        )
        try:
            return await asyncio.wait_for(future, self.deadline_seconds)
        except TimeoutError:
            raise JobBackendUnavailableError(
                f"Redis did not answer within {self.deadline_seconds:g}s"
            ) from None

    async def submit(self, job: JobRequest, run_after_response: RunAfterResponse) -> None:
        await self._in_thread(partial(self._publish, job))
        # Logged here, on the event loop: from the client thread, the line would
        # contend for the log handler's lock with the loop's access lines.
        logger.info("job %s (%s) queued", job.id, job.name)

    def _publish(self, job: JobRequest, deadline: float) -> None:
        try:
            # QUEUED before publishing: from then on the id reads QUEUED, not PENDING.
            write_state(self._store(), job.id, QUEUED, 0, self.retention_seconds)
            if time.monotonic() > deadline:  # the client has its 503: do not queue
                raise JobBackendUnavailableError("deadline passed before publishing")
            self.app.send_task(
                RUN_JOB_TASK,
                args=(job.name, job.params),
                task_id=job.id,
                headers={REQUEST_ID_HEADER: job.request_id},
            )
        except UNAVAILABLE_ERRORS as exc:
            raise JobBackendUnavailableError(describe_error(exc, ())) from exc

    def _store(self) -> RedisBackend:
        store = self.app.backend  # Celery keeps one per thread
        assert isinstance(store, RedisBackend)
        return store

    async def get(self, job_id: str) -> JobState | None:
        return await self._in_thread(partial(self._read_state, job_id))

    def _read_state(self, job_id: str, deadline: float) -> JobState | None:
        try:
            # One read of the stored meta: `AsyncResult.state` and `.info` each read
            # Redis, and a job that ends between the two would pair a running state
            # with the final result.
            meta = self.app.backend.get_task_meta(job_id)
        except UNAVAILABLE_ERRORS as exc:
            raise JobBackendUnavailableError(describe_error(exc, ())) from exc
        state, info = meta["status"], meta["result"]
        status = CELERY_STATE_TO_STATUS.get(state)
        if status is None:  # PENDING: never issued here, or expired
            return None
        if status is JobStatus.SUCCEEDED:
            return JobState(id=job_id, status=status, progress=100, result=info)
        if status is JobStatus.FAILED:
            return JobState(id=job_id, status=status, error=self._public_error(info))
        progress = info.get("progress", 0) if isinstance(info, dict) else 0
        return JobState(id=job_id, status=status, progress=progress)

    @staticmethod
    def _public_error(info: object) -> str:
        """A failed job's `error` for clients: the job's own description, or what
        Celery recorded, without internal addresses (the worker's log has them)."""
        if isinstance(info, JobFailedError):
            return str(info)
        if not isinstance(info, BaseException):
            return "the job failed"
        name = type(info).__name__
        if name in CELERY_FAILURES:
            return f"{name}: {CELERY_FAILURES[name]}"
        return describe_error(info, CONNECTION_ERRORS)

    async def check_dependencies(self) -> dict[str, str]:
        try:
            return await self._in_thread(self._check_dependencies)
        except JobBackendUnavailableError as exc:
            return {"redis": f"unreachable: {exc}", "worker": "unknown"}

    def _check_dependencies(self, deadline: float) -> dict[str, str]:
        try:
            self.redis.ping()
        except redis.RedisError as exc:
            logger.warning("readiness: Redis unreachable: %s", exc)
            return {"redis": f"unreachable ({type(exc).__name__})", "worker": "unknown"}
        remaining = deadline - time.monotonic()
        try:
            # Returns at the first reply: a healthy service answers in milliseconds,
            # and only a service with no worker waits the whole timeout.
            replies = self.app.control.ping(
                timeout=max(0.05, min(REDIS_TIMEOUT_SECONDS, remaining - 0.1)), limit=1
            )
        except UNAVAILABLE_ERRORS as exc:
            logger.warning("readiness: worker ping failed: %s", exc)
            return {"redis": "ok", "worker": f"unknown ({type(exc).__name__})"}
        return {"redis": "ok", "worker": "ok" if replies else "no worker answered"}

    def _read_persistence(self, deadline: float) -> str:
        """How the result store keeps its data: "aof", "rdb", "none" or "unknown".

        With neither append-only file nor snapshots, a Redis restart forgets every
        queued job: their ids answer 404 and they never run.
        """
        try:
            if self.redis.info("persistence").get("aof_enabled") == 1:
                return "aof"
            save = self.redis.config_get("save").get("save", "")
        except redis.ResponseError:  # CONFIG is often disabled on managed Redis
            return "unknown"
        return "rdb" if save else "none"

    async def warnings(self) -> list[str]:
        if self._persistence is None:
            try:
                self._persistence = await self._in_thread(self._read_persistence)
            except (JobBackendUnavailableError, redis.RedisError):
                return []  # not known yet: readiness asks again once Redis answers
        if self._persistence == "none":
            return [
                "Redis has no persistence (neither appendonly nor save): a Redis "
                "restart loses every queued job and every job state"
            ]
        return []

    def begin_shutdown(self) -> None:
        return None  # the jobs wait in Redis for the workers, whatever this process does

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._threads, self.app.close)
        self._threads.shutdown()
