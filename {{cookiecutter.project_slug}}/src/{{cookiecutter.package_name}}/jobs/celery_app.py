"""The Celery app: configuration, the one task that runs registered jobs, and the
signals that carry the request id into the worker's log lines.

Both sides build their app here: the API publishes with it, `worker.py` runs it.
"""

import logging
import math
import time
from typing import Any

from celery import Celery, Task, signals
from celery import states as celery_states
from celery.backends.redis import RedisBackend
from celery.exceptions import Ignore, Reject
from kombu.exceptions import KombuError, OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..context import request_id_var, subject_var
from ..settings import Settings
from . import broker
from .models import (
    JobCancelledError,
    JobFailedError,
    TransientJobError,
    describe_error,
)
from .queue import NO_JOB_EVENTS, JobEvents
from .registry import JOBS, find_job

logger = logging.getLogger(__name__)

APP_NAME = "{{ cookiecutter.package_name }}"
RUN_JOB_TASK = f"{APP_NAME}.run_job"
# Custom task-message header with the submitting request's id. Not `correlation_id`:
# Celery already uses that name for the task id.
REQUEST_ID_HEADER = "x_request_id"
# The submitting request's subject (issue 11), for the task's log lines.
SUBJECT_HEADER = "x_subject"
# Extra task states beside Celery's own: the API records an id as QUEUED before it
# publishes (so PENDING, which Celery reports for any unknown id, means "never issued"),
# and the task reports PROGRESS while it runs.
QUEUED = "QUEUED"
PROGRESS = "PROGRESS"

# Keys beside Celery's own `celery-task-meta-<id>`, kept as long (JOB_RETENTION_SECONDS).
# The cancel flag: `DELETE /jobs/{id}` sets it, to the status the job had then
# (`queued` or `running`). It lives here, in the result store, and not only in Celery's
# revoke list: a worker keeps revoked ids in memory, so a restarted worker, or another
# one that gets the task redelivered after a crash, would run a revoked job again. The
# task reads the flag when it starts and at each progress report.
CANCEL_KEY_PREFIX = "job-cancel-"
# The id of the job that retried this one (`retried_as`), set once (SET NX).
RETRIED_KEY_PREFIX = "job-retried-as-"
CANCELLED_WHILE_QUEUED = b"queued"
CANCELLED_WHILE_RUNNING = b"running"
# The reason a cancelled job's REVOKED state records.
CANCELLED_REASON = "cancelled"


def cancel_key(job_id: str) -> str:
    return CANCEL_KEY_PREFIX + job_id


def retried_key(job_id: str) -> str:
    return RETRIED_KEY_PREFIX + job_id


# Errors worth another try: the job's own transient failures and lost connections.
# Anything else is a bug or bad input, and retrying it would only fail again.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    TransientJobError,
    ConnectionError,
    TimeoutError,
    RedisConnectionError,
    RedisTimeoutError,
    OperationalError,
)
MAX_RETRIES = 3
# Errors whose text names a host and port; clients read only their type.
CONNECTION_ERRORS: tuple[type[Exception], ...] = (OSError, RedisError, KombuError)
# Seconds a client of Redis waits to connect or for an answer: short, so a dead or
# hung Redis turns into a fast 503 instead of a hanging request.
REDIS_TIMEOUT_SECONDS = 1.0
# After a progress update fails (Redis away), the job skips updates this long, so an
# outage costs the job at most one timeout per interval, not one per update.
PROGRESS_PAUSE_SECONDS = 5.0
# The worker waits out a Redis outage where the API fails fast. Publishing a retry:
# tries with waits of 0, 0.5, 1, 1.5, then 2 seconds, about a minute in all; after that
# the task goes back to the queue instead (see DurableTask).
WORKER_PUBLISH_RETRY_POLICY = {
    "max_retries": 30,
    "interval_start": 0,
    "interval_step": 0.5,
    "interval_max": 2,
}
# Storing a job's state: tries until Redis answers, backing off to 2 s between tries.
WORKER_STORE_MAX_WAIT_MS = 2000
# The worker's AMQP heartbeat: RabbitMQ closes a silent connection after about twice
# this, and hands its unacknowledged jobs to other workers (see `rabbitmq_config`).
RABBITMQ_HEARTBEAT_SECONDS = 10


class PollingRedisBackend(RedisBackend):
    """Celery's Redis result store, without the subscription `send_task` makes.

    Celery subscribes the sender to each new task's result channel so that
    `AsyncResult.get()` could wait on it. This service never waits: `GET /jobs/{id}`
    reads the stored state. The subscription cost two more Redis commands a job and a
    pub/sub connection per API thread (measured by bench/run.py).
    """

    def on_task_call(self, producer: Any, task_id: str) -> None:
        return None


def celery_config(settings: Settings) -> dict[str, Any]:
    hard_limit = settings.job_time_limit_seconds
    return {
        "broker_url": settings.celery_broker_url,
        **(rabbitmq_config() if settings.broker_is_rabbitmq else redis_broker_config(hard_limit)),
        # `<class>+<url>`: Celery's own notation for a result store class of one's own.
        "result_backend": f"{__name__}:{PollingRedisBackend.__name__}+{settings.redis_url}",
        # JSON only: pickle would let anyone who can write to Redis run code here.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # Ack after the task ends, not when it starts, and put the task back when the
        # process running it dies (OOM kill): a crash re-runs the job instead of losing
        # it. Jobs must therefore be idempotent; the job id is the task id.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # One task reserved per process: a long job does not hold others hostage.
        "worker_prefetch_multiplier": 1,
        "task_track_started": True,
        # The soft limit raises SoftTimeLimitExceeded inside the job so it can stop
        # cleanly; the hard limit kills the process. Soft must be below hard, or the
        # hard limit never fires.
        "task_time_limit": hard_limit,
        "task_soft_time_limit": max(1, math.floor(hard_limit * 0.9)),
        "result_backend_transport_options": {
            "visibility_timeout": math.ceil(hard_limit * 1.5),
            # The default retries a failed store 20 times (about 20 s per request
            # while Redis is down); once is enough, the caller gets a 503 and retries.
            "retry_policy": {"max_retries": 1},
        },
        "redis_socket_timeout": REDIS_TIMEOUT_SECONDS,
        "redis_socket_connect_timeout": REDIS_TIMEOUT_SECONDS,
        "redis_retry_on_timeout": False,
        # Publishing: no retry loop inside a request, and a bounded wait for a
        # connection from the pool, so a dead broker cannot hang the API.
        "task_publish_retry": False,
        "broker_connection_timeout": REDIS_TIMEOUT_SECONDS,
        "broker_pool_acquire_timeout": REDIS_TIMEOUT_SECONDS,
        # The worker keeps retrying the broker at start-up (it may come up later).
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "result_expires": settings.job_retention_seconds,
        # Every state Celery stores carries the task's arguments (the job's name and
        # params): what `POST /jobs/{id}/retry` runs again. Stored there, the API's
        # submission stays one SET and one LPUSH (its QUEUED record has the arguments
        # too): bench/publish_cost.py, x16 in flight, 89-95 us of CPU a job against
        # 82-99 us before; a record of its own, one more SET in the pipeline, cost
        # 104-107 us.
        "result_extended": True,
        "worker_hijack_root_logger": False,
    }


def redis_broker_config(hard_limit: int) -> dict[str, Any]:
    """Redis as the broker: the task messages in a list, acks in a sorted set."""
    # Redis redelivers a task whose worker has not acked it within the visibility
    # timeout. It must exceed the hard limit, or a job still running would be started
    # a second time beside the first.
    visibility_timeout = math.ceil(hard_limit * 1.5)
    # How often the worker sweeps for tasks abandoned by a dead worker. kombu scans on
    # every Nth sweep (throttle); 1 makes the interval the only knob.
    restore_interval = max(1, min(10, visibility_timeout // 10))
    # A sweep holds a lock in Redis for the few milliseconds it takes; a worker killed
    # while holding it would leave it for kombu's default 5 minutes, during which no
    # worker restores anything. A few sweep intervals are plenty.
    sweep_lock_seconds = 5 * restore_interval
    return {
        # kombu's Redis transport, checking each message it pops: a malformed one is
        # set aside instead of stopping the worker (see broker.py).
        "broker_transport": f"{broker.__name__}:{broker.Transport.__name__}",
        # The visibility timeout is read from three places, depending on the
        # component; set it in each, as the Celery docs for Redis say.
        "broker_transport_options": {
            "visibility_timeout": visibility_timeout,
            "unacked_restore_interval": restore_interval,
            "unacked_restore_throttle": 1,
            "unacked_mutex_expire": sweep_lock_seconds,
            "socket_timeout": REDIS_TIMEOUT_SECONDS,
            "socket_connect_timeout": REDIS_TIMEOUT_SECONDS,
        },
        "visibility_timeout": visibility_timeout,
        # With Redis, acks do not depend on the connection that delivered the task, so
        # a Redis blip need not cancel running jobs (measured: a 4 s outage with this on
        # revoked the running job, and it was never run again).
        "worker_cancel_long_running_tasks_on_connection_loss": False,
    }


def rabbitmq_config() -> dict[str, Any]:
    """RabbitMQ as the broker (`BROKER_URL` amqp://), configured for durability.

    RabbitMQ hands a consumer's unacknowledged messages to another consumer as soon as
    the consumer's connection closes: there is no visibility timeout to wait out.
    """
    return {
        # Quorum queues: durable and replicated (Raft) across the nodes of a cluster, the
        # queue type RabbitMQ recommends for data safety; a classic queue lives on one
        # node. Celery 5.5+ then uses per-consumer prefetch, which they require.
        "task_default_queue_type": "quorum",
        # A retry with a countdown (`autoretry_for` backs off) goes through Celery's
        # native delayed delivery, which quorum queues need (they cannot hold ETA
        # tasks in a worker with a global prefetch) and which routes through a topic
        # exchange; a direct one makes Celery fall back with a warning.
        "task_default_exchange_type": "topic",
        # The delay queues of that delivery (celery_delayed_0 to 27, a retry waits in
        # them, then is dead-lettered to its queue) as classic durable queues: as quorum
        # queues (Celery's default) they dead-letter through RabbitMQ's at-least-once
        # workers, and on RabbitMQ 3.10 deleting them (a vhost, say) killed the
        # supervisor of those workers: every later declare of such a queue failed
        # (INTERNAL_ERROR), the workers could not set up delayed delivery, and each
        # countdown retry published after that was dropped, until RabbitMQ restarted.
        "broker_native_delayed_delivery_queue_type": "classic",
        "broker_transport_options": {
            # Publisher confirms: a publish returns once RabbitMQ has the message (a
            # quorum queue: written to a majority of its nodes), so a 202 means the job
            # is there; a refused one raises instead of vanishing.
            "confirm_publish": True,
            # A broker that accepts the connection and never answers: a bounded wait.
            "read_timeout": REDIS_TIMEOUT_SECONDS,
            "write_timeout": REDIS_TIMEOUT_SECONDS,
        },
        # A worker's jobs come back to the queue when its connection drops, so a
        # running job would run twice (here and on the worker that gets it) unless
        # the worker stops it: it does, on a lost connection.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # How soon RabbitMQ notices a worker that vanished (a dead host sends no TCP
        # reset): the connection is closed after about two silent intervals, and its
        # jobs go to another worker. Celery's default is 120 s.
        "broker_heartbeat": RABBITMQ_HEARTBEAT_SECONDS,
    }


def worker_config(settings: Settings) -> dict[str, Any]:
    """The worker's configuration: the API's, except that it waits out a Redis outage.

    The API fails fast so a client gets its 503 at once; a worker holding a running
    job has nothing better to do than wait. So a job's state (started, the result, the
    error) is stored once Redis is back, however long that takes, and a retry is
    published after up to a minute of tries. A job that reaches its hard time limit
    while it waits is stopped by the limit as usual.
    """
    config = celery_config(settings)
    if settings.broker_is_rabbitmq:
        # The worker's connection waits on the broker in its event loop, with
        # heartbeats: a socket timeout there would break its idle connection.
        config["broker_transport_options"] = {"confirm_publish": True}
    return {
        **config,
        # Without this, Celery retries only the final write of a store (its read of the
        # current state before it is not): a 10 s freeze failed every running job.
        "result_backend_always_retry": True,
        "result_backend_max_sleep_between_retries_ms": WORKER_STORE_MAX_WAIT_MS,
        "task_publish_retry": True,
        "task_publish_retry_policy": WORKER_PUBLISH_RETRY_POLICY,
    }


def encode_state(
    store: RedisBackend,
    job_id: str,
    state: str,
    progress: int,
    args: tuple[str, dict[str, Any]] | None = None,
) -> bytes:
    """A QUEUED or PROGRESS state as Celery's result store keeps it (`get_task_meta`
    reads it back); with the task's `args`, as Celery's extended result has them."""
    meta: dict[str, Any] = {"status": state, "result": {"progress": progress}, "task_id": job_id}
    if args is not None:
        meta.update(name=RUN_JOB_TASK, args=args, kwargs={})
    encoded: bytes = store.encode(meta)
    return encoded


# SET and PUBLISH unless the stored state is final, and read the job's cancel flag: one
# atomic step
# in Redis, one round trip. A worker that froze mid-job (a hung host) and resumes after
# another worker re-ran and finished the job must not turn its result back into
# "running" (found by the template's scale-out test: the late PROGRESS write, then
# Celery's FAILURE from the blown time limit, replaced the other host's SUCCESS; Celery
# guards only its own stores, and only SUCCESS). A cancelled job is REVOKED, final too.
# KEYS: the state, the cancel flag; ARGV: the new state, its expiry, the final states.
WRITE_PROGRESS = """
local current = redis.call('GET', KEYS[1])
local final = false
if current then
  local decoded, meta = pcall(cjson.decode, current)
  if decoded and type(meta) == 'table' then
    for i = 3, #ARGV do
      if meta['status'] == ARGV[i] then final = true end
    end
  end
end
if not final then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  redis.call('PUBLISH', KEYS[1], ARGV[1])
end
return redis.call('EXISTS', KEYS[2])
"""
FINAL_STATES = sorted(celery_states.READY_STATES)


def write_state(store: RedisBackend, job_id: str, state: str, progress: int, expires: int) -> bool:
    """Store a job's PROGRESS state in one round trip, and no retry: the caller decides
    what a failure means. Celery's `store_result` reads the key first and retries;
    neither helps a state that the next update replaces. A final state stays (see
    WRITE_PROGRESS). (The API writes QUEUED with the task message, see
    `celery_backend.QueuePublisher`.)

    The state is published on its key's channel, as Celery's own `RedisBackend.set`
    does, for the followers of `GET /jobs/{id}/events` (redis_watch.py). The whole
    script cost the worker 47-63 us of CPU a report against 32 us for a plain SET
    (bench/state_publish_cost.py, two runs on a busy machine): at most about 3 ms for
    a job reporting every percent, for three guarantees in one round trip.

    Returns whether the job was cancelled: its cancel flag, read by the same script,
    costs no round trip more."""
    state_bytes = encode_state(store, job_id, state, progress)
    write_progress = store.client.register_script(WRITE_PROGRESS)  # hashes it, no I/O
    cancelled = write_progress(
        keys=[store.get_key_for_task(job_id), cancel_key(job_id)],
        args=[state_bytes, expires, *FINAL_STATES],
    )
    return bool(cancelled)


class ProgressReporter:
    """`report_progress` for a job on a worker: best effort, never raising, except
    JobCancelledError once the job was cancelled.

    Progress is a courtesy to whoever polls: when Redis is away, an update is logged
    and skipped (and updates pause a few seconds), and the job goes on. A failed update
    must not fail or retry the job: that turned every running job of a 3 s outage into
    a failed one. Each update reads the cancel flag in the same pipeline as its SET
    (`write_state`): no round trip more than before.
    """

    def __init__(self, task: Task[Any, Any]) -> None:
        self.task = task
        self.last_reported = -1
        self.paused_until = 0.0

    def __call__(self, percent: int) -> None:
        if percent == self.last_reported or time.monotonic() < self.paused_until:
            return
        store, job_id = self.task.backend, self.task.request.id
        assert isinstance(store, RedisBackend)
        assert job_id is not None
        try:
            expires = self.task.app.conf.result_expires
            cancelled = write_state(store, job_id, PROGRESS, percent, expires)
        except RedisError as exc:
            self.paused_until = time.monotonic() + PROGRESS_PAUSE_SECONDS
            logger.warning(
                "job %s: progress %d%% not stored (%s); the job goes on",
                self.task.request.id,
                percent,
                type(exc).__name__,
            )
        else:
            self.last_reported = percent
            if cancelled:
                raise JobCancelledError(f"job {job_id} was cancelled")


class DurableTask(Task):  # type: ignore[type-arg]
    """A task whose retry is never lost to a broker outage.

    When `retry` cannot publish the new attempt, Celery rejects the message *without*
    requeueing it and the job fails for good. Requeueing instead hands the job back
    to the queue (or, with Redis still away, leaves it unacknowledged, and Redis
    redelivers it after the visibility timeout): jobs are idempotent, so a re-run is
    safe, and a lost job is not.
    """

    def retry(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().retry(*args, **kwargs)
        except Reject as rejected:
            reason, requeue = rejected.args  # Reject(reason, requeue)
            if requeue:
                raise
            logger.warning("job %s: retry not published; back to the queue", self.request.id)
            raise Reject(reason, requeue=True) from rejected


def is_cancelled(task: Task[Any, Any]) -> bool:
    store = task.backend
    assert isinstance(store, RedisBackend)
    return bool(store.client.exists(cancel_key(str(task.request.id))))


def end_cancelled(task: Task[Any, Any], name: str, when: str) -> Ignore:
    """Store the job as REVOKED (read as `cancelled`) and return the Ignore to raise:
    Celery then acks the message and stores nothing over it. Never FAILURE, which
    `autoretry_for` and clients would take for an error."""
    logger.info("job %s (%s) cancelled %s", task.request.id, name, when)
    task.backend.mark_as_revoked(str(task.request.id), CANCELLED_REASON, request=task.request)
    return Ignore()


def run_job(task: Task[Any, Any], name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run the registered job `name`, storing its progress as it goes; a cancelled job
    does not start, and a running one stops at its next progress report."""
    # A queued job cancelled, or a cancelled one redelivered: one EXISTS a task start.
    if is_cancelled(task):
        raise end_cancelled(task, name, "before it started")
    logger.info("job %s (%s) started, attempt %d", task.request.id, name, task.request.retries + 1)
    try:
        result = find_job(name)(params, ProgressReporter(task))
    except JobCancelledError:
        raise end_cancelled(task, name, "while running") from None
    except TRANSIENT_ERRORS:
        if is_cancelled(task):  # not worth a retry: nobody wants the result
            raise end_cancelled(task, name, "after a transient error") from None
        raise  # retried by `autoretry_for`
    except Exception as exc:
        # Celery stores the error as JSON and rebuilds it in the API process; a plain
        # message survives that, where e.g. pydantic's ValidationError does not.
        raise JobFailedError(describe_error(exc, CONNECTION_ERRORS)) from exc
    if finished_elsewhere(task):
        logger.warning("job %s (%s) stopped: finished elsewhere meanwhile", task.request.id, name)
        raise Ignore()
    logger.info("job %s (%s) succeeded", task.request.id, name)
    return result


def finished_elsewhere(task: Task[Any, Any]) -> bool:
    """Whether the job's stored state is final already: a worker that froze mid-job
    (RabbitMQ gave the job to another one meanwhile) finishes a stale copy. Measured in
    the template's scale-out lane: a thawed host ran its copy to the end in 3 of 3
    tries; the heartbeat notices the dead connection only at the next write, the ack.
    One read of Redis per finished job; the copy ends as an Ignore (counted as
    `cancelled` in the job metrics), its result unstored."""
    try:
        meta = task.backend.get_task_meta(str(task.request.id), cache=False)
    except RedisError:
        return False  # unknown: Celery's own store keeps a SUCCESS anyway
    return meta.get("status") in celery_states.READY_STATES


# How a run of the task ended (Celery's state after it), as the job metrics name it.
# REJECTED: requeued after a broker outage (DurableTask), so it runs again.
# IGNORED: cancelled (see `end_cancelled`).
ENDED_AS = {
    "SUCCESS": "succeeded",
    "FAILURE": "failed",
    "RETRY": "retried",
    "REJECTED": "retried",
    "IGNORED": "cancelled",
}
UNKNOWN_JOB = "unknown"


def report_job_events(app: Celery, events: JobEvents) -> None:
    """Tell `events` when this app's jobs start and end, in the pool process that runs
    them: each run is counted once, by the worker, whichever API process submitted it.

    A pool process killed mid-job (the hard time limit, the OOM killer) sends no end:
    its job is counted when it is run again.
    """
    started: dict[str, tuple[str, float]] = {}

    def job_name(task: Task[Any, Any], args: Any) -> str | None:
        if task.app is not app or task.name != RUN_JOB_TASK:
            return None
        name = args[0] if args else None
        # Only registered names: a label value from a message must stay bounded.
        return name if isinstance(name, str) and name in JOBS else UNKNOWN_JOB

    def on_prerun(task_id: str, task: Task[Any, Any], args: Any = (), **_: Any) -> None:
        if (name := job_name(task, args)) is not None:
            started[task_id] = (name, time.perf_counter())
            events.started(name)

    def on_postrun(task_id: str, state: str | None = None, **_: Any) -> None:
        if (begun := started.pop(task_id, None)) is not None:
            name, at = begun
            if (outcome := ENDED_AS.get(state or "")) is not None:
                events.ended(name, outcome, time.perf_counter() - at)

    # Strong references: the handlers live as long as the worker.
    signals.task_prerun.connect(on_prerun, weak=False)
    signals.task_postrun.connect(on_postrun, weak=False)


def create_celery_app(
    settings: Settings, *, worker: bool = False, events: JobEvents = NO_JOB_EVENTS
) -> Celery:
    """The Celery app; `worker=True` for the worker process (see `worker_config`), which
    reports its jobs' starts and ends to `events`."""
    app = Celery(APP_NAME, set_as_current=False)
    app.conf.update(worker_config(settings) if worker else celery_config(settings))
    app.task(
        bind=True,
        base=DurableTask,
        name=RUN_JOB_TASK,
        autoretry_for=TRANSIENT_ERRORS,
        max_retries=MAX_RETRIES,
        retry_backoff=2,
        retry_backoff_max=60,
        retry_jitter=True,
    )(run_job)
    if worker:
        report_job_events(app, events)
    return app


@signals.task_prerun.connect
def _bind_request_id(task: Task[Any, Any], **_: Any) -> None:
    # Custom message headers show up as attributes of the task request.
    request_id_var.set(getattr(task.request, REQUEST_ID_HEADER, None))
    subject_var.set(getattr(task.request, SUBJECT_HEADER, None))


@signals.task_postrun.connect
def _unbind_request_id(**_: Any) -> None:
    request_id_var.set(None)
    subject_var.set(None)
