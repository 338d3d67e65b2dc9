"""Run jobs on Celery workers through Redis: durable, retried, and scaled out by
starting more workers, on any machine that reaches the same Redis.

Every call into Celery or Redis blocks, so each runs in a thread, with short timeouts:
a Redis that is down or hung costs a request about a second, never the event loop.
"""

import asyncio
import contextvars
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TypeVar

import redis
from celery.backends.redis import RedisBackend
from kombu.exceptions import KombuError

from ..settings import Settings
from .celery_app import (
    PROGRESS,
    QUEUED,
    REDIS_TIMEOUT_SECONDS,
    REQUEST_ID_HEADER,
    RUN_JOB_TASK,
    create_celery_app,
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
UNAVAILABLE_ERRORS = (redis.RedisError, KombuError, OSError, RuntimeError)

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
        self._threads = ThreadPoolExecutor(CLIENT_THREADS, thread_name_prefix="celery-client")

    async def _in_thread(self, call: Callable[[], T]) -> T:
        context = contextvars.copy_context()  # the request id, for the log lines
        return await asyncio.get_running_loop().run_in_executor(self._threads, context.run, call)

    async def submit(self, job: JobRequest, run_after_response: RunAfterResponse) -> None:
        await self._in_thread(partial(self._publish, job))
        # Logged here, on the event loop: from the client thread, the line would
        # contend for the log handler's lock with the loop's access lines.
        logger.info("job %s (%s) queued", job.id, job.name)

    def _publish(self, job: JobRequest) -> None:
        try:
            self._record_queued(job.id)
            self.app.send_task(
                RUN_JOB_TASK,
                args=(job.name, job.params),
                task_id=job.id,
                headers={REQUEST_ID_HEADER: job.request_id},
            )
        except UNAVAILABLE_ERRORS as exc:
            raise JobBackendUnavailableError(describe_error(exc)) from exc

    def _record_queued(self, job_id: str) -> None:
        """Store the id as QUEUED before publishing: from then on it reads QUEUED, not
        PENDING. One SET where `store_result` makes two round trips (it reads first, to
        never overwrite a finished task; a new id has nothing to overwrite)."""
        store = self.app.backend  # Celery keeps one per thread
        assert isinstance(store, RedisBackend)
        meta = {"status": QUEUED, "result": {"progress": 0}, "task_id": job_id}
        key, value = store.get_key_for_task(job_id), store.encode(meta)
        store.client.set(key, value, ex=self.retention_seconds)

    async def get(self, job_id: str) -> JobState | None:
        return await self._in_thread(partial(self._read_state, job_id))

    def _read_state(self, job_id: str) -> JobState | None:
        try:
            # One read of the stored meta: `AsyncResult.state` and `.info` each read
            # Redis, and a job that ends between the two would pair a running state
            # with the final result.
            meta = self.app.backend.get_task_meta(job_id)
        except UNAVAILABLE_ERRORS as exc:
            raise JobBackendUnavailableError(describe_error(exc)) from exc
        state, info = meta["status"], meta["result"]
        status = CELERY_STATE_TO_STATUS.get(state)
        if status is None:  # PENDING: never issued here, or expired
            return None
        if status is JobStatus.SUCCEEDED:
            return JobState(id=job_id, status=status, progress=100, result=info)
        if status is JobStatus.FAILED:
            error = str(info) if isinstance(info, JobFailedError) else describe_error(info)
            return JobState(id=job_id, status=status, error=error)
        progress = info.get("progress", 0) if isinstance(info, dict) else 0
        return JobState(id=job_id, status=status, progress=progress)

    async def check_dependencies(self) -> dict[str, str]:
        return await self._in_thread(self._check_dependencies)

    def _check_dependencies(self) -> dict[str, str]:
        try:
            self.redis.ping()
        except redis.RedisError as exc:
            return {"redis": f"unreachable: {describe_error(exc)}", "worker": "unknown"}
        try:
            replies = self.app.control.ping(timeout=REDIS_TIMEOUT_SECONDS)
        except UNAVAILABLE_ERRORS as exc:
            return {"redis": "ok", "worker": f"unknown: {describe_error(exc)}"}
        return {"redis": "ok", "worker": "ok" if replies else "no worker answered"}

    async def aclose(self) -> None:
        await self._in_thread(self.app.close)
        self._threads.shutdown()
