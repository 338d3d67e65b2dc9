"""Running the schedule (`schedule.py`): each run is a submission through `JobQueue`,
as from an endpoint, and its log lines carry an id of their own.

No request exists for a scheduled run, so there is no request id. Each run gets a log
id instead, `schedule:<entry name>:<12 hex digits>`, set where the request id would be
(`request_id_var`): the line saying the job was queued, the job's own lines and its
start and end (in the worker too: the id travels in the task's headers) all carry it.
`grep schedule:nightly-report` finds every run of one entry, the full id one run.

In-process (`JOBS_BACKEND=inprocess`) the API process runs the schedule in its lifespan
(`InProcessSchedule`). With several server workers (`--workers`, `WEB_CONCURRENCY`) on
one host, only the process holding an exclusive `flock` on `SCHEDULE_LOCK_FILE` runs it;
the others try again every `LOCK_RETRY_SECONDS`, so when the holder dies (the kernel
drops its lock with it) another takes over. A file lock cannot see other hosts or
containers: each of those runs the schedule too, which the service warns about at
start-up.
"""

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from cronsim import CronSim

from ..context import request_id_var
from .models import JobBackendUnavailableError, QueueFullError
from .queue import JobBackend, JobQueue
from .registry import JOBS
from .schedule import ScheduledJob, ScheduleError

logger = logging.getLogger(__name__)

# How often a process without the schedule lock tries to take it: the longest a
# schedule stays without a runner after the process running it dies.
LOCK_RETRY_SECONDS = 5.0
# How long shutdown waits for scheduled in-process jobs still running (the image's
# --timeout-graceful-shutdown): past it they are abandoned with the process.
SHUTDOWN_WAIT_SECONDS = 30.0


def check_schedule(schedule: Iterable[ScheduledJob]) -> None:
    """Raise ScheduleError naming the first entry with a duplicate name or a job that is
    not registered: at start-up, not at the first run, hours later."""
    seen: set[str] = set()
    for entry in schedule:
        if entry.name in seen:
            raise ScheduleError(f"scheduled job {entry.name!r}: two entries have this name")
        seen.add(entry.name)
        if entry.job not in JOBS:
            raise ScheduleError(
                f"scheduled job {entry.name!r}: no job {entry.job!r} in the registry "
                f"(known: {', '.join(sorted(JOBS))})"
            )


def new_log_id(entry_name: str) -> str:
    return f"schedule:{entry_name}:{secrets.token_hex(6)}"


async def submit_scheduled(
    queue: JobQueue, entry_name: str, job: str, params: dict[str, Any]
) -> str | None:
    """Submit one run of a scheduled job under a log id of its own; return its job id,
    or None when it could not be queued (logged: the run is skipped, the next one comes
    at its time)."""
    token = request_id_var.set(new_log_id(entry_name))
    try:
        job_id = await queue.submit(job, params)
    except (JobBackendUnavailableError, QueueFullError) as exc:
        # An outage, or more jobs waiting than MAX_QUEUED_JOBS: the next run may pass.
        logger.warning("scheduled %s: not queued, skipped: %s", entry_name, exc)
        return None
    except Exception:
        # The schedule must outlive one bad run (a job refusing its params at submission).
        logger.exception("scheduled %s: not queued, skipped", entry_name)
        return None
    else:
        logger.info("scheduled %s: job %s (%s) queued", entry_name, job_id, job)
        return job_id
    finally:
        request_id_var.reset(token)


def next_run(entry: ScheduledJob, after: float) -> float:
    """When `entry` runs next after the time `after` (seconds since the epoch)."""
    if entry.every_seconds is not None:
        return after + entry.every_seconds
    assert entry.cron is not None
    return next(CronSim(entry.cron, datetime.fromtimestamp(after, UTC))).timestamp()


class BackgroundJobs:
    """`run_after_response` for submissions made outside a request: the in-process
    backend hands it each job's coroutine, which runs as a task of the event loop,
    kept here until it ends."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, run: Callable[[], Awaitable[None]]) -> None:
        async def run_it() -> None:
            await run()

        # Created in the submitter's context: the job's thread sees its log id.
        task = asyncio.get_running_loop().create_task(run_it())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait(self, seconds: float) -> None:
        """Until every job ends, or `seconds` have passed."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=seconds)


class ScheduleLock:
    """An exclusive, non-blocking `flock` on a file: held by one process of the host at
    a time, and let go by the kernel when that process ends, however it ends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def try_acquire(self) -> bool:
        """True when this process now holds the lock; raises OSError when the file
        cannot be locked at all (a file system without flock)."""
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        except OSError:
            handle.close()
            raise
        # The holder's pid, for whoever looks at the file (and for the standby's line).
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle
        return True

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


class InProcessSchedule:
    """The schedule, run by the API process for the in-process backend (see the module's
    docstring for the once-per-host lock)."""

    def __init__(
        self,
        schedule: Iterable[ScheduledJob],
        backend: JobBackend,
        lock_path: Path,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.schedule = tuple(schedule)
        check_schedule(self.schedule)
        self.backend = backend
        self.lock = ScheduleLock(lock_path)
        self.jobs = BackgroundJobs()
        self.queue = JobQueue(backend, self.jobs)
        self._clock = clock
        self._runner: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Wait for the lock, then submit each entry at its times, until cancelled."""
        try:
            await self._wait_for_lock()
            await self._run_entries()
        finally:
            self.lock.release()

    async def _wait_for_lock(self) -> None:
        told = False
        while True:
            try:
                if self.lock.try_acquire():
                    break
            except OSError as exc:
                logger.warning(
                    "periodic jobs: cannot lock %s (%s): every server worker of this host "
                    "runs the schedule; set SCHEDULE_LOCK_FILE to a local file",
                    self.lock.path,
                    exc,
                )
                return
            if not told:
                logger.info(
                    "periodic jobs: process %s runs the schedule (%s); this one stands by",
                    self.lock.holder(),
                    self.lock.path,
                )
                told = True
            await asyncio.sleep(LOCK_RETRY_SECONDS)
        logger.info(
            "periodic jobs: this process (%d) runs the schedule: %s",
            os.getpid(),
            ", ".join(entry.name for entry in self.schedule),
        )

    async def _run_entries(self) -> None:
        started = self._clock()
        due = {entry.name: next_run(entry, started) for entry in self.schedule}
        entries = {entry.name: entry for entry in self.schedule}
        while True:
            name = min(due, key=due.__getitem__)
            await asyncio.sleep(max(0.0, due[name] - self._clock()))
            entry = entries[name]
            await submit_scheduled(self.queue, name, entry.job, entry.params)
            # From when it ran: a run that came late is never followed by one sooner
            # than its period (nor by a burst).
            due[name] = next_run(entry, max(due[name], self._clock()))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Run the schedule while inside; on the way out stop it, and give scheduled
        jobs still running `SHUTDOWN_WAIT_SECONDS` to end (queued ones never start:
        the backend's shutdown fails them, as it does a request's)."""
        if not self.schedule:
            yield
            return
        logger.warning(
            "periodic jobs run in the API process: once per host (a lock on %s), but "
            "every other host or container running this service runs them too",
            self.lock.path,
        )
        self._runner = asyncio.get_running_loop().create_task(self.run())
        try:
            yield
        finally:
            self.begin_shutdown()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self.backend.begin_shutdown()
            await self.jobs.wait(SHUTDOWN_WAIT_SECONDS)

    def begin_shutdown(self) -> None:
        """The server got its stop signal (called on the event loop): no more runs,
        rather than one refused submission a tick while the server drains."""
        if self._runner is not None:
            self._runner.cancel()
