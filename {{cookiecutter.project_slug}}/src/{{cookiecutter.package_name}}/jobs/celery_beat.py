"""Celery beat for the schedule (`schedule.py`): `celery -A <package>.beat beat`.

The scheduler is celery-redbeat's, which keeps each entry's last run and a lock in the
Redis the service already has. Why it: Celery's own `PersistentScheduler` keeps its
state in a local file and has no lock, so a second beat started by mistake (a second
replica, a deploy that overlaps the old one) sends every run twice; django-celery-beat
needs Django and an SQL database. RedBeat is maintained (2.4.2 came out in July 2026)
and widely used (among the 2,500 most downloaded packages on PyPI); its tests here run
it with Celery 5.7 and redis-py 8.1.

How the lock plays out: the beat that takes it (`<package>:beat::lock`) runs the ticks and
renews it every tick; another beat waits for it, trying every `BEAT_MAX_LOOP_SECONDS`.
A beat stopped with SIGTERM releases it at once; a beat killed outright holds it until
it expires, `BEAT_LOCK_SECONDS` at most, then a waiting beat takes over.

Each run goes through `JobQueue.submit`, exactly as from an endpoint (QUEUED record
and task message together, so `GET /jobs/{id}` answers at once), not through Celery's
`send_task`, which would leave the job unknown (404) until a worker starts it.
"""

import asyncio
import logging
from datetime import timedelta
from typing import Any

import redis
from celery.schedules import crontab, schedule
from redbeat import RedBeatScheduler  # type: ignore[import-untyped]
from redis.exceptions import LockNotOwnedError

from ..settings import Settings, load_settings
from .celery_app import APP_NAME, REDIS_TIMEOUT_SECONDS, RUN_JOB_TASK
from .celery_backend import CeleryBackend
from .periodic import BackgroundJobs, submit_scheduled
from .queue import JobBackend, JobQueue
from .schedule import ScheduledJob, ScheduleError

logger = logging.getLogger(__name__)

# Beat wakes at least this often, and a waiting beat tries the lock this often.
BEAT_MAX_LOOP_SECONDS = 5
# The running beat renews its lock at each tick; killed, it holds it this long at most.
BEAT_LOCK_SECONDS = 5 * BEAT_MAX_LOOP_SECONDS
# While Redis is away, beat tries again this often.
BEAT_REDIS_RETRY_SECONDS = 1.0
# RedBeat's keys: `<prefix>:lock`, `<prefix>:schedule`, and one per entry, `<prefix><name>`
# (hence the trailing colon, as in RedBeat's own default, `redbeat:`).
BEAT_KEY_PREFIX = f"{APP_NAME}:beat:"
BEAT_LOCK_KEY = f"{BEAT_KEY_PREFIX}:lock"


def celery_schedule(entry: ScheduledJob) -> schedule | crontab:
    if entry.every_seconds is not None:
        return schedule(timedelta(seconds=entry.every_seconds))
    assert entry.cron is not None
    try:
        return crontab.from_string(entry.cron)
    except ValueError as exc:  # what cronsim takes and Celery does not: `7` for Sunday, `L`
        raise ScheduleError(
            f"scheduled job {entry.name!r}: Celery cannot read cron {entry.cron!r}: {exc}"
        ) from None


def beat_schedule(entries: tuple[ScheduledJob, ...]) -> dict[str, dict[str, Any]]:
    """Celery's `beat_schedule` for `entries`: the `run_job` task with the job's name and
    params, as an endpoint's submission would send it."""
    return {
        entry.name: {
            "task": RUN_JOB_TASK,
            "schedule": celery_schedule(entry),
            "args": (entry.job, entry.params),
        }
        for entry in entries
    }


def beat_config(settings: Settings, entries: tuple[ScheduledJob, ...]) -> dict[str, Any]:
    return {
        "beat_scheduler": f"{__name__}:{ScheduledJobScheduler.__name__}",
        "beat_schedule": beat_schedule(entries),
        "beat_max_loop_interval": BEAT_MAX_LOOP_SECONDS,
        "redbeat_redis_url": settings.redis_url,
        "redbeat_redis_options": {
            "socket_timeout": REDIS_TIMEOUT_SECONDS,
            "socket_connect_timeout": REDIS_TIMEOUT_SECONDS,
        },
        # Of this service's own: two services sharing a Redis must not share one lock.
        "redbeat_key_prefix": BEAT_KEY_PREFIX,
        "redbeat_lock_timeout": BEAT_LOCK_SECONDS,
        "timezone": "UTC",  # cron lines are read in UTC, as the in-process schedule does
    }


def beat_lock_held(redis_url: str) -> bool:
    """Whether some beat holds the lock now (this one, or another)."""
    client = redis.Redis.from_url(
        redis_url,
        socket_timeout=REDIS_TIMEOUT_SECONDS,
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
    )
    try:
        return bool(client.exists(BEAT_LOCK_KEY))
    finally:
        client.close()


class ScheduledJobScheduler(RedBeatScheduler):  # type: ignore[misc]
    """RedBeat's scheduler, submitting `run_job` entries through `JobQueue`.

    Beat is synchronous; `JobQueue` and the Celery backend are asyncio. One event loop
    (an `asyncio.Runner`) lives as long as the scheduler and runs each submission in
    beat's own thread, so the backend keeps its Redis connection between runs. It is
    made at the first run: a beat still waiting for the lock builds nothing.
    """

    _runner: asyncio.Runner | None = None
    _backend: JobBackend | None = None

    def apply_async(
        self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any
    ) -> Any:
        if entry.task != RUN_JOB_TASK:  # an entry added to RedBeat by other means
            return super().apply_async(entry, producer, advance, **kwargs)
        entry = self.reserve(entry) if advance else entry
        job, params = entry.args
        if self._runner is None or self._backend is None:
            self._runner = asyncio.Runner()
            self._backend = self._runner.run(_celery_backend(load_settings()))
        queue = JobQueue(self._backend, BackgroundJobs())
        return self._runner.run(submit_scheduled(queue, entry.name, job, params))

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """RedBeat's tick, outliving a Redis outage: as it is, the first error reaching
        Redis (renewing the lock, reading the schedule) ends the beat process (measured:
        Redis stopped for 3 s, beat exited at once). Here beat logs it and tries again,
        except when its lock is gone: another beat may hold it now, and this one stops
        rather than run beside it."""
        try:
            interval: float = super().tick(*args, **kwargs)
        except LockNotOwnedError:
            logger.error("beat: the lock is no longer ours (expired while Redis was away?)")
            raise
        except redis.RedisError as exc:
            logger.warning(
                "beat: Redis unreachable (%s); trying again in %gs",
                type(exc).__name__,
                BEAT_REDIS_RETRY_SECONDS,
            )
            return BEAT_REDIS_RETRY_SECONDS
        return interval

    def close(self) -> None:
        if self._runner is not None:
            if self._backend is not None:
                self._runner.run(self._backend.aclose())
            self._runner.close()
            self._runner = self._backend = None
        super().close()


async def _celery_backend(settings: Settings) -> JobBackend:
    # Made inside the loop: the backend's asyncio Redis client belongs to it.
    return CeleryBackend(settings)
