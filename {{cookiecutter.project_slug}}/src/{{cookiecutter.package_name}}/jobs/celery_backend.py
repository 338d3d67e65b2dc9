"""Run jobs on Celery workers through a broker (Redis or RabbitMQ, `BROKER_URL`), with
their states in Redis: durable, retried, and scaled out by starting more workers, on
any machine that reaches the same broker and Redis.

Submitting a job never leaves the event loop (see `QueuePublisher`); reading a job's
state and the readiness checks call Celery, which blocks, so each runs in a thread. All
the Redis work of one request shares one deadline (`JOB_BACKEND_DEADLINE_SECONDS`), and
every Redis client has short timeouts: a Redis that is down or hung costs a request at
most that, never the event loop.
"""

import asyncio
import contextlib
import contextvars
import hashlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from typing import Any, TypeVar

import amqp.exceptions
import redis
import redis.asyncio
from celery import Celery
from celery import states as celery_states
from celery.backends.redis import RedisBackend
from celery.exceptions import TaskRevokedError
from kombu import Connection, Producer
from kombu.transport.base import StdChannel
from kombu.utils.encoding import bytes_to_str
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError

from ..settings import Settings
from .broker import encode_task_message
from .celery_app import (
    CANCELLED_REASON,
    CANCELLED_WHILE_QUEUED,
    CANCELLED_WHILE_RUNNING,
    CONNECTION_ERRORS,
    PROGRESS,
    QUEUED,
    REDIS_TIMEOUT_SECONDS,
    REQUEST_ID_HEADER,
    RUN_JOB_TASK,
    SUBJECT_HEADER,
    cancel_key,
    create_celery_app,
    encode_state,
    retried_key,
)
from .models import (
    FINAL_STATUSES,
    IdempotencyClaim,
    IdempotencyKeyReusedError,
    JobBackendUnavailableError,
    JobConflictError,
    JobFailedError,
    JobRequest,
    JobState,
    JobStatus,
    QueueFullError,
    cancel_conflict,
    describe_error,
    retry_conflict,
)
from .queue import NO_JOB_EVENTS, JobEvents, RunAfterResponse
from .redis_watch import JobStateSubscriber
from .watch import ChangeSlot, JobWatch

logger = logging.getLogger(__name__)

# Celery keeps a Redis client per thread. A few threads of its own keep that to a few
# warm connections, where the shared threadpool would grow one per thread (up to 40),
# each connected on its first job.
CLIENT_THREADS = 4

T = TypeVar("T")

# Waiting messages at most: 10,000 of the example job's (about 1 KB each) hold 10 MB
# of Redis memory; past it, a backlog is better told to clients (429) than stored.
DEFAULT_MAX_QUEUED_JOBS = 10_000

# A scrape reads the queue's length: a dead or hung Redis must not hold /metrics up.
QUEUE_LENGTH_TIMEOUT_SECONDS = 0.5

# What a broken connection to Redis looks like, depending on which layer noticed.
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (*CONNECTION_ERRORS, RuntimeError)
# What a step done after the response (a termination, a claim released) may meet.
AFTER_RESPONSE_ERRORS: tuple[type[Exception], ...] = (
    JobBackendUnavailableError,
    *UNAVAILABLE_ERRORS,
)
# What ends a batch of submissions on the wire: those, or its deadline.
SEND_ERRORS: tuple[type[Exception], ...] = (TimeoutError, *UNAVAILABLE_ERRORS)
# What a publish to RabbitMQ may meet besides: a channel or connection the broker
# closed (py-amqp's own errors), or a message it refused (a negative confirm).
AMQP_SEND_ERRORS: tuple[type[Exception], ...] = (
    *SEND_ERRORS,
    amqp.exceptions.AMQPError,
    amqp.exceptions.MessageNacked,
)

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
    "REVOKED": JobStatus.CANCELLED,
}
# Celery's states of a task that a worker is running.
RUNNING_STATES = frozenset({"STARTED", PROGRESS})
NO_REQUEST = "the job's name and parameters were not kept: it cannot be retried"
TERMINATED = "terminated: it did not stop at a progress report within JOB_CANCEL_GRACE_SECONDS"
# Deletes a retry's claim only if it is still this retry's (the key holds its id).
RELEASE_CLAIM = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


# Where an idempotency key names its first job, beside Celery's `celery-task-meta-<id>`.
IDEMPOTENCY_KEY_PREFIX = "idempotency-key-"

# Admission and queueing in one step on the Redis server, so that it is atomic (two
# submissions with one key make one job, and the queue never passes its limit, whatever
# the number of API processes) and costs no round trip of its own: one call of the
# script a batch, in the batch's pipeline, where the SET and LPUSH of each job were.
# For each job in order: a key already claimed answers its claim (request hash and first
# job id) and queues nothing; a full queue answers 0 and queues nothing; else the claim,
# the QUEUED record and the message are written, in that order, and it answers 1.
# One call a batch, not a job: a call costs the server about 10 us beyond the commands
# it runs (EVALSHA per job: 16-22 us of Redis CPU a job against 5.3 us for SET and
# LPUSH, bench/publish_cost.py).
# With RabbitMQ as the broker the messages go there instead (see `AmqpPublisher`): the
# script then only claims and records, against the queue length RabbitMQ gave.
# KEYS: the queue, then each job's state key and idempotency key (its state key again
# when it has none). ARGV: MAX_QUEUED_JOBS, the expiry in seconds, the queue's length
# ("": read and push to the Redis list KEYS[1]), then each job's state, message and
# claim ("" when it has none).
ADMIT_SCRIPT = """
local limit, expires = tonumber(ARGV[1]), ARGV[2]
local in_redis = ARGV[3] == ''
local waiting = in_redis and redis.call('LLEN', KEYS[1]) or tonumber(ARGV[3])
local replies = {}
for job = 1, (#KEYS - 1) / 2 do
  local state_key, claim_key = KEYS[2 * job], KEYS[2 * job + 1]
  local state, message, claim = ARGV[3 * job + 1], ARGV[3 * job + 2], ARGV[3 * job + 3]
  local first = claim ~= '' and redis.call('GET', claim_key)
  if first then
    replies[job] = first
  elseif waiting >= limit then
    replies[job] = 0
  else
    if claim ~= '' then redis.call('SET', claim_key, claim, 'EX', expires) end
    redis.call('SET', state_key, state, 'EX', expires)
    if in_redis then redis.call('LPUSH', KEYS[1], message) end
    waiting = waiting + 1
    replies[job] = 1
  end
end
return replies
"""
ADMIT_SCRIPT_SHA = hashlib.sha1(ADMIT_SCRIPT.encode(), usedforsecurity=False).hexdigest()
# Jobs a call of the script at most: a few milliseconds of Redis's time at the most.
ADMIT_SCRIPT_JOBS = 128
ADMITTED, QUEUE_FULL = 1, 0
# Undoes an admission whose message RabbitMQ did not take: the QUEUED record goes, and
# the idempotency claim if it is still this job's, so that the id was never issued and
# the key is free for the client's retry. KEYS: state key, claim key (the state key
# when none). ARGV: the claim as the admission wrote it ("" when none).
UNDO_ADMISSION = """
redis.call('DEL', KEYS[1])
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 0
"""


class Submission:
    """One job's writes, waiting for a batch: its claim, its QUEUED record, its message.

    `sent` resolves to the id of the job that answers the submission: its own, or the
    first job of its idempotency key."""

    __slots__ = (
        "claim",
        "job_id",
        "message",
        "sent",
        "state",
        "state_key",
        "task_args",
        "task_headers",
    )

    def __init__(
        self,
        job_id: str,
        state_key: str,
        state: bytes,
        task_args: tuple[str, dict[str, Any]],
        task_headers: dict[str, Any],
        claim: IdempotencyClaim | None = None,
    ) -> None:
        self.job_id = job_id
        self.state_key = state_key
        self.state = state
        self.task_args = task_args
        self.task_headers = task_headers
        # The task message as the Redis list holds it (`QueuePublisher.prepare`).
        self.message = ""
        self.claim = claim
        self.sent: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    @property
    def claim_key(self) -> str:
        """Where its claim goes: its state key again when it has none (a key the
        admission script reads but, with no claim, never writes)."""
        return self.state_key if self.claim is None else IDEMPOTENCY_KEY_PREFIX + self.claim.key

    @property
    def claim_value(self) -> str:
        return "" if self.claim is None else f"{self.claim.request_hash} {self.job_id}"

    def settle(self, reply: object, max_queued: int) -> None:
        """Resolve `sent` from the script's reply."""
        if reply == ADMITTED:
            self.sent.set_result(self.job_id)
        elif reply == QUEUE_FULL:
            self.sent.set_exception(QueueFullError(max_queued))
        elif isinstance(reply, bytes) and self.claim is not None:
            request_hash, _, first_id = reply.decode().partition(" ")
            if request_hash == self.claim.request_hash:
                self.sent.set_result(first_id)
            else:
                self.sent.set_exception(IdempotencyKeyReusedError())
        else:  # not a reply the script gives: a bug, answered as one (500)
            self.sent.set_exception(RuntimeError(f"unexpected admission reply {reply!r}"))


class QueuePublisher:
    """Publishes jobs from the event loop, in batches: each job's QUEUED record and its
    task message go to Redis in one pipeline, and the jobs submitted while one pipeline
    is on the wire go together in the next one.

    Why not `send_task` in a thread, as before: measured on 2 cores with the template's
    benchmark (`bench/run.py`, part `enqueue`, and the API process's CPU time under
    wrk), an empty call through the thread hop alone cost about 540 us of CPU per
    request (the thread's wake-up and GIL hand-offs with a busy event loop), and every
    blocking Redis call in the thread took the GIL back from the loop again: a
    `POST /reports` cost 4,200-5,100 us. `send_task` itself cost 1,100-1,400 us a job
    (kombu's transport builds a new `redis.Redis` client per publish, declares the
    queue again, `saferepr` of the arguments, two round trips). Here a job costs the
    message, built with Celery's own `create_task_message` (`broker.encode_task_message`),
    and two commands in a shared pipeline: about 330 us with 16 in flight, 615 us one
    at a time. One API process went from 0.16 to 0.37 of its `GET /health/live` rate
    in jobs accepted per second. The `hiredis` parser (`redis[hiredis]`) takes about a
    quarter off a job with 16 in flight (198-220 us against 251-301 us).

    Order and failures: in each pipeline a job's QUEUED record precedes its message,
    and Redis runs one connection's commands in order, so a worker never finds a job
    whose record is missing, and nothing a worker writes is overwritten by QUEUED. A
    job whose deadline passes before its batch is sent is not sent (its client has its
    503). A batch that fails or passes its deadline on the wire gives each of its jobs
    a 503; like any timeout, a frozen Redis that wakes up later may still run what was
    already sent (jobs are idempotent, and the client was told to retry).
    """

    def __init__(
        self,
        redis_url: str,
        queue: str,
        state_expires: int,
        deadline_seconds: float,
        max_queued: int,
    ) -> None:
        # One retry on a broken connection (Redis restarted under a pooled one); none on
        # a timeout, which only a deadline ends.
        retry = Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))
        self._redis = redis.asyncio.Redis.from_url(
            redis_url,
            socket_timeout=REDIS_TIMEOUT_SECONDS,
            socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            retry=retry,
        )
        self.queue = queue
        self.state_expires = state_expires
        self.deadline_seconds = deadline_seconds
        self.max_queued = max_queued
        self._waiting: list[Submission] = []
        self._sender: asyncio.Task[None] | None = None

    def prepare(self, app: Celery, submission: Submission) -> None:
        """Build the submission's task message, as kombu's Redis transport stores it."""
        submission.message = encode_task_message(
            app,
            RUN_JOB_TASK,
            submission.job_id,
            submission.task_args,
            submission.task_headers,
            self.queue,
        )

    async def publish(self, submission: Submission) -> str:
        """Send it with the next batch, and return the id of the job that answers it
        (see `Submission`); raise JobBackendUnavailableError if Redis does not take it
        within the deadline, QueueFullError or IdempotencyKeyReusedError if the script
        refused it."""
        self._waiting.append(submission)
        if self._sender is None:
            # Starts at the loop's next turn: the requests already read join this batch.
            # An empty context: its log lines belong to no one request.
            self._sender = asyncio.get_running_loop().create_task(
                self._send_batches(), context=contextvars.Context()
            )
        try:
            async with asyncio.timeout(self.deadline_seconds):
                # Cancelled at the deadline: then it is not sent.
                return await submission.sent
        except TimeoutError:
            raise JobBackendUnavailableError(
                f"Redis did not answer within {self.deadline_seconds:g}s"
            ) from None

    async def _send_batches(self) -> None:
        try:
            while self._waiting:
                batch = [s for s in self._waiting if not s.sent.done()]
                self._waiting = []
                if batch:
                    await self._send(batch)
        finally:
            self._sender = None

    async def _send(self, batch: list[Submission]) -> None:
        try:
            async with asyncio.timeout(self.deadline_seconds):
                # No PUBLISH of QUEUED, unlike every later state: no one can follow a job
                # before its id is returned, after this write. It would cost 9 us of CPU a
                # job (bench/state_publish_cost.py), for no reader.
                replies = await self._admit_loaded(batch)
        except SEND_ERRORS as exc:
            self._fail(batch, exc)
            return
        self._settle(batch, replies)

    async def _admit_loaded(self, batch: list[Submission], waiting: int | None = None) -> list[Any]:
        replies = await self._admit(batch, waiting)
        if any(isinstance(r, NoScriptError) for r in replies):
            # Redis restarted (or its scripts were flushed) since it last ran the
            # script: a refused EVALSHA did nothing, so the batch goes again.
            await self._redis.script_load(ADMIT_SCRIPT)
            replies = await self._admit(batch, waiting)
        return replies

    def _settle(
        self, batch: list[Submission], replies: list[Any], *, hold_admitted: bool = False
    ) -> list[Submission]:
        """Answer each submission from the script's replies; with `hold_admitted`, the
        admitted ones are returned instead, for their messages to be sent."""
        admitted = []
        chunks = range(0, len(batch), ADMIT_SCRIPT_JOBS)
        for start, reply in zip(chunks, replies, strict=True):
            chunk = batch[start : start + ADMIT_SCRIPT_JOBS]
            if isinstance(reply, Exception):  # a Redis error for this call (OOM...)
                self._fail(chunk, reply)
                continue
            for submission, job_reply in zip(chunk, reply, strict=True):
                if hold_admitted and job_reply == ADMITTED:
                    admitted.append(submission)
                elif not submission.sent.done():
                    submission.settle(job_reply, self.max_queued)
        return admitted

    @staticmethod
    def _fail(batch: list[Submission], exc: Exception) -> None:
        logger.warning("%d job(s) not queued: %s: %s", len(batch), type(exc).__name__, exc)
        error = JobBackendUnavailableError(describe_error(exc, ()))
        for submission in batch:
            if not submission.sent.done():
                submission.sent.set_exception(error)

    async def _admit(self, batch: list[Submission], waiting: int | None = None) -> list[Any]:
        """The batch through the admission script, in one pipeline: a reply a call
        (the list of its jobs' replies), or the error of that call. `waiting`: the
        broker queue's length, where the broker is not this Redis."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for start in range(0, len(batch), ADMIT_SCRIPT_JOBS):
                keys = [self.queue]
                # A later call counts the earlier calls' jobs as queued: at most the limit.
                length = "" if waiting is None else waiting + start
                args: list[str | bytes | int] = [self.max_queued, self.state_expires, length]
                for submission in batch[start : start + ADMIT_SCRIPT_JOBS]:
                    keys += [submission.state_key, submission.claim_key]
                    args += [submission.state, submission.message, submission.claim_value]
                pipe.evalsha(ADMIT_SCRIPT_SHA, len(keys), *keys, *args)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
            return replies

    async def queue_length(self) -> int:
        length: int = await self._redis.llen(self.queue)
        return length

    async def aclose(self) -> None:
        if self._sender is not None:
            await asyncio.wait([self._sender], timeout=self.deadline_seconds)
        await self._redis.aclose()


class AmqpPublisher(QueuePublisher):
    """Publishes jobs to RabbitMQ (`BROKER_URL` amqp://), admitted in Redis first.

    A batch takes three steps: the queue's length from RabbitMQ (a passive declare),
    the admission script in Redis with that length (the claims and QUEUED records, no
    message), then each admitted job's message, waiting for RabbitMQ's confirm. A job
    whose message was not confirmed loses its record and claim again and gets a 503:
    its id was never issued. The record precedes the message, so a worker never finds
    a job without one.

    py-amqp blocks, and a connection is not to be shared between threads: one thread of
    this publisher's own keeps one connection and does all the broker work, between
    batches too, so a batch costs one thread hop for the length and one for its
    messages, however many jobs it holds. Celery's `send_task` is not used: it would
    also subscribe this process to every job's result (the Redis result store's
    `on_task_call`), which the API never waits on.

    MAX_QUEUED_JOBS counts the messages RabbitMQ holds and has not delivered; API
    processes that admit at the same moment read the same length, so the queue can
    pass the limit by up to a batch per process (with Redis as the broker, the script
    counts and pushes in one atomic step, and it never does).
    """

    def __init__(
        self,
        app: Celery,
        redis_url: str,
        queue: str,
        state_expires: int,
        deadline_seconds: float,
        max_queued: int,
    ) -> None:
        super().__init__(redis_url, queue, state_expires, deadline_seconds, max_queued)
        self._app = app
        self._broker_thread = ThreadPoolExecutor(1, thread_name_prefix="amqp-publisher")
        self._connection: Connection | None = None
        self._channel: StdChannel | None = None
        self._producer: Producer | None = None

    def prepare(self, app: Celery, submission: Submission) -> None:
        return None  # the message is built where it is sent, in the broker thread

    async def _send(self, batch: list[Submission]) -> None:
        try:
            async with asyncio.timeout(self.deadline_seconds):
                waiting = await self._in_broker_thread(self._count_waiting)
                replies = await self._admit_loaded(batch, waiting)
        except AMQP_SEND_ERRORS as exc:
            self._fail(batch, exc)
            return
        admitted = self._settle(batch, replies, hold_admitted=True)
        if not admitted:
            return
        # Not under the deadline: each publish is bounded by the connection's timeouts,
        # and a job's client has its 503 at its own deadline anyway (`publish`).
        confirmed, error = await self._in_broker_thread(partial(self._publish_each, admitted))
        for submission in admitted[:confirmed]:
            if not submission.sent.done():
                submission.sent.set_result(submission.job_id)
        if error is not None:
            unsent = admitted[confirmed:]
            self._fail(unsent, error)
            await self._undo(unsent)

    async def _in_broker_thread(self, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._broker_thread, call)

    def _connected(self) -> tuple[StdChannel, Producer]:
        if self._channel is None or self._producer is None:
            connection = self._app.connection_for_write()
            try:
                connection.connect()
                channel = connection.channel()
                # The queue as the workers declare it (a quorum queue, bound to its
                # exchange): a job published before any worker started is kept.
                self._app.amqp.queues[self.queue].bind(channel).declare()
            except BaseException:
                connection.release()
                raise
            self._connection, self._channel = connection, channel
            self._producer = Producer(channel)
        return self._channel, self._producer

    def _drop_connection(self) -> None:
        """Forget a connection that failed: the next batch opens a new one."""
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.release()
        self._connection = self._channel = self._producer = None

    def _count_waiting(self) -> int:
        try:
            channel, _ = self._connected()
            queue = self._app.amqp.queues[self.queue].bind(channel)
            # (name, message count, consumer count): kombu's stubs say str.
            declared: Any = queue.queue_declare(passive=True)
        except AMQP_SEND_ERRORS:
            self._drop_connection()
            raise
        return int(declared.message_count)

    def _publish_each(self, admitted: list[Submission]) -> tuple[int, Exception | None]:
        """Publish the jobs in order, each confirmed; stop at the first that fails.
        Returns how many were confirmed, and the error that stopped the rest."""
        amqp_app = self._app.amqp
        for done, submission in enumerate(admitted):
            try:
                _, producer = self._connected()
                name, params = submission.task_args
                message = amqp_app.create_task_message(
                    submission.job_id,
                    RUN_JOB_TASK,
                    (name, params),
                    {},
                    reply_to=self._app.thread_oid,
                    ignore_result=None,  # what `send_task` passes when its caller names none
                )
                amqp_app.send_task_message(
                    producer,
                    RUN_JOB_TASK,
                    message,
                    queue=self.queue,
                    headers=submission.task_headers,
                    retry=False,
                    confirm_timeout=REDIS_TIMEOUT_SECONDS,
                )
            except AMQP_SEND_ERRORS as exc:
                self._drop_connection()
                return done, exc
        return len(admitted), None

    async def _undo(self, unsent: list[Submission]) -> None:
        try:
            async with asyncio.timeout(self.deadline_seconds):
                async with self._redis.pipeline(transaction=False) as pipe:
                    for submission in unsent:
                        keys = (submission.state_key, submission.claim_key)
                        pipe.eval(UNDO_ADMISSION, 2, *keys, submission.claim_value)
                    await pipe.execute()
        except SEND_ERRORS as exc:
            # Their ids read QUEUED until they expire, and their keys answer with them.
            logger.warning("%d job(s) not queued keep their records: %s", len(unsent), exc)

    async def queue_length(self) -> int:
        return await self._in_broker_thread(self._count_waiting)

    async def check(self) -> str:
        """Readiness: RabbitMQ answers (a passive declare of the queue)."""
        try:
            async with asyncio.timeout(self.deadline_seconds):
                await self.queue_length()
        except AMQP_SEND_ERRORS as exc:
            logger.warning("readiness: RabbitMQ unreachable: %s", type(exc).__name__)
            return f"unreachable ({type(exc).__name__})"
        return "ok"

    async def aclose(self) -> None:
        await super().aclose()
        await self._in_broker_thread(self._drop_connection)
        self._broker_thread.shutdown()


class CeleryBackend:
    name = "celery"

    def __init__(self, settings: Settings, events: JobEvents = NO_JOB_EVENTS) -> None:
        # Only `submitted` is counted here: the worker counts the rest, where jobs run.
        self.events = events
        self.app = create_celery_app(settings)
        result_store = self.app.backend
        assert isinstance(result_store, RedisBackend), "REDIS_URL is the result backend"
        # Readiness pings Redis with the result store's own client: the same server,
        # the same short timeouts, no second connection pool.
        self.redis = result_store.client
        self.retention_seconds = settings.job_retention_seconds
        self.deadline_seconds = settings.job_backend_deadline_seconds
        self.cancel_grace_seconds = settings.job_cancel_grace_seconds
        # Cancelled jobs to terminate if still running at the end of their grace time.
        self._terminations: set[asyncio.Task[None]] = set()
        self._persistence: str | None = None  # known after the first answer from Redis
        self._threads = ThreadPoolExecutor(CLIENT_THREADS, thread_name_prefix="celery-client")
        self._result_store = result_store
        queue_options: dict[str, Any] = {
            "queue": self.app.conf.task_default_queue,
            "state_expires": self.retention_seconds,
            "deadline_seconds": self.deadline_seconds,
            "max_queued": settings.max_queued_jobs or DEFAULT_MAX_QUEUED_JOBS,
        }
        self._publisher = (
            AmqpPublisher(self.app, settings.redis_url, **queue_options)
            if settings.broker_is_rabbitmq
            else QueuePublisher(settings.redis_url, **queue_options)
        )
        # GET /jobs/{id}/events: one pub/sub connection for all followers (redis_watch.py).
        self._subscriber = JobStateSubscriber(
            settings.redis_url, bytes_to_str(result_store.task_keyprefix), self._decode_published
        )

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

    async def submit(
        self,
        job: JobRequest,
        run_after_response: RunAfterResponse,
        claim: IdempotencyClaim | None = None,
    ) -> str:
        store = self._result_store
        # QUEUED from the moment the message is there: an id that reads PENDING (which
        # Celery reports for any unknown id) was never issued.
        # With what it runs, for a retry (see `celery_app.encode_state`).
        state = encode_state(store, job.id, QUEUED, 0, (job.name, job.params))
        submission = Submission(
            job.id,
            store.get_key_for_task(job.id),
            state,
            (job.name, job.params),
            {REQUEST_ID_HEADER: job.request_id, SUBJECT_HEADER: job.subject},
            claim,
        )
        self._publisher.prepare(self.app, submission)
        job_id = await self._publisher.publish(submission)
        if job_id == job.id:
            logger.info("job %s (%s) queued", job.id, job.name)
        return job_id

    async def get(self, job_id: str) -> JobState | None:
        return await self._in_thread(partial(self._read_state, job_id))

    def _read_state(self, job_id: str, deadline: float) -> JobState | None:
        return self._read(job_id)[0]

    def _read(self, job_id: str) -> tuple[JobState | None, dict[str, Any]]:
        """The job's state, and Celery's meta it comes from, in one round trip."""
        store = self._result_store
        try:
            # One read of the stored meta: `AsyncResult.state` and `.info` each read
            # Redis, and a job that ends between the two would pair a running state
            # with the final result. The cancel flag and `retried_as` come with it.
            raw_meta, cancelled, retried_as = store.client.mget(
                store.get_key_for_task(job_id), cancel_key(job_id), retried_key(job_id)
            )
        except UNAVAILABLE_ERRORS as exc:
            raise JobBackendUnavailableError(describe_error(exc, ())) from exc
        if raw_meta is None:  # never issued here, or expired
            return None, {}
        meta: dict[str, Any] = store.decode_result(raw_meta)
        return self._state_from_meta(job_id, meta, cancelled, retried_as), meta

    def _decode_published(self, job_id: str, published: bytes) -> JobState | None:
        """A state the result store published (the same bytes it stored)."""
        return self._state_from_meta(job_id, self._result_store.decode_result(published))

    def _state_from_meta(
        self,
        job_id: str,
        meta: dict[str, Any],
        cancelled: bytes | None = None,
        retried_as: bytes | None = None,
    ) -> JobState | None:
        """The job's state from Celery's meta and, where read with it, the cancel flag
        and `retried_as` (a published state comes without them: a cancel while queued
        publishes a REVOKED meta of its own, see `_cancel`)."""
        state, info = meta["status"], meta["result"]
        status = CELERY_STATE_TO_STATUS.get(state)
        if status is None:
            return None
        common: dict[str, Any] = {"id": job_id, "status": status}
        if retried_as is not None:
            common["retried_as"] = retried_as.decode()
        if status is JobStatus.SUCCEEDED:
            return JobState(progress=100, result=info, **common)
        if status is JobStatus.FAILED:
            return JobState(error=self._public_error(info), **common)
        if status is JobStatus.CANCELLED:
            terminated = str(info) != CANCELLED_REASON and isinstance(info, BaseException)
            return JobState(error=TERMINATED if terminated else None, **common)
        progress = info.get("progress", 0) if isinstance(info, dict) else 0
        if cancelled == CANCELLED_WHILE_QUEUED:
            # It never starts: a worker that takes it reads the flag and stores REVOKED
            # (one taking it as the flag was set stops at its first progress report).
            common["status"] = JobStatus.CANCELLED
        return JobState(progress=progress, **common)

    async def cancel(self, job_id: str) -> JobState | None:
        state = await self._in_thread(partial(self._cancel, job_id))
        if state is not None:
            # Queued ones too: a worker may have taken it as the flag was set.
            self._terminate_later(job_id)
        return state

    def _cancel(self, job_id: str, deadline: float) -> JobState | None:
        state = self._read_state(job_id, deadline)
        if state is None:
            return None
        if state.status in FINAL_STATUSES:
            raise cancel_conflict(state)
        queued = state.status is JobStatus.QUEUED
        flag = CANCELLED_WHILE_QUEUED if queued else CANCELLED_WHILE_RUNNING
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                # NX: a second cancel of a running job keeps the first one's flag.
                pipe.set(cancel_key(job_id), flag, ex=self.retention_seconds, nx=True)
                if queued:
                    # Its followers (GET /jobs/{id}/events) learn it now, not when a
                    # worker takes it: what every read says from now on, published.
                    pipe.publish(self._result_store.get_key_for_task(job_id), self._revoked(job_id))
                pipe.execute()
        except UNAVAILABLE_ERRORS as exc:
            raise JobBackendUnavailableError(describe_error(exc, ())) from exc
        if queued:
            logger.info("job %s cancelled before it started", job_id)
            return state.model_copy(update={"status": JobStatus.CANCELLED})
        logger.info("job %s asked to stop", job_id)
        return state

    def _revoked(self, job_id: str) -> bytes:
        """A REVOKED meta as Celery's `mark_as_revoked` stores it for a cancelled job."""
        store = self._result_store
        reason = store.prepare_exception(TaskRevokedError(CANCELLED_REASON))
        encoded: bytes = store.encode(
            {"status": celery_states.REVOKED, "result": reason, "task_id": job_id}
        )
        return encoded

    def _terminate_later(self, job_id: str) -> None:
        """Terminate the job if it still runs at the end of its grace time.

        The timer lives in this API process: if it stops first, the job is not
        terminated, though it still stops at its next progress report, and a worker
        that gets it again after a crash does not run it (the flag).
        """

        async def terminate() -> None:
            await asyncio.sleep(self.cancel_grace_seconds)
            try:
                await self._in_thread(partial(self._terminate_if_running, job_id))
            except AFTER_RESPONSE_ERRORS as exc:
                logger.warning("job %s not terminated: %s", job_id, exc)

        # The request's context: its id on the log lines.
        task = asyncio.get_running_loop().create_task(terminate())
        self._terminations.add(task)
        task.add_done_callback(self._terminations.discard)

    def _terminate_if_running(self, job_id: str, deadline: float) -> None:
        if self.app.backend.get_task_meta(job_id)["status"] not in RUNNING_STATES:
            return
        logger.warning(
            "job %s still running %gs after its cancel: terminating it",
            job_id,
            self.cancel_grace_seconds,
        )
        # The worker running it kills the pool process and stores REVOKED; SIGKILL,
        # which a job cannot catch or ignore. Every worker also keeps the id on its
        # revoke list (in memory), and the flag keeps it from running anywhere again.
        self.app.control.revoke(job_id, terminate=True, signal="SIGKILL")

    async def retry(
        self, job_id: str, new_job: JobRequest, run_after_response: RunAfterResponse
    ) -> JobRequest | None:
        claimed = await self._in_thread(partial(self._claim_retry, job_id, new_job.id))
        if claimed is None:
            return None
        name, params = claimed
        job = replace(new_job, name=name, params=params)
        try:
            await self.submit(job, run_after_response)
        except (JobBackendUnavailableError, QueueFullError):
            # Not queued: the old job can be retried again. Best effort: with Redis away
            # this fails too, and the old job names a retry that was never queued (its
            # id answers 404) until it expires.
            with contextlib.suppress(*AFTER_RESPONSE_ERRORS):
                await self._in_thread(partial(self._release_retry, job_id, job.id))
            raise
        logger.info("job %s retried as %s", job_id, job.id)
        return job

    def _claim_retry(
        self, job_id: str, new_id: str, deadline: float
    ) -> tuple[str, dict[str, Any]] | None:
        state, meta = self._read(job_id)
        if state is None:
            return None
        if (conflict := retry_conflict(state)) is not None:
            raise conflict
        # What it ran: Celery's extended result (`result_extended`) keeps the task's
        # arguments in every state it stores, and the QUEUED record has them too.
        match meta.get("args"):
            case [str() as name, dict() as params]:
                pass
            case _:
                raise JobConflictError(NO_REQUEST, state)
        try:
            # NX: of two retries at once, one claims the job; the other gets 409.
            claimed = self.redis.set(
                retried_key(job_id), new_id, ex=self.retention_seconds, nx=True
            )
        except UNAVAILABLE_ERRORS as exc:
            raise JobBackendUnavailableError(describe_error(exc, ())) from exc
        if not claimed:
            now = self._read_state(job_id, deadline)
            raise retry_conflict(now or state) or JobConflictError("retried already", state)
        return name, params

    def _release_retry(self, job_id: str, new_id: str, deadline: float) -> None:
        self.redis.eval(RELEASE_CLAIM, 1, retried_key(job_id), new_id)

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

    async def follow(self, job_id: str) -> JobWatch | None:
        slot = ChangeSlot()
        # Subscribed (Redis confirmed it) before the state is read: nothing stored
        # between the two is missed.
        await self._subscriber.subscribe(job_id, slot, self.deadline_seconds)
        close = partial(self._subscriber.unsubscribe, job_id, slot)
        try:
            state = await self.get(job_id)
        except BaseException:
            close()
            raise
        if state is None:
            close()
            return None
        return JobWatch(state, slot, partial(self.get, job_id), close)

    async def check_dependencies(self) -> dict[str, str]:
        """Redis (the job states) and the workers; RabbitMQ, where it is the broker, on
        its own line: each may be down without the other."""
        checks: dict[str, str] = {}
        if isinstance(self._publisher, AmqpPublisher):
            checks["broker"] = await self._publisher.check()
        # The workers answer a ping through the broker: with the broker down, their
        # state is unknown, and a ping would only wait for a connection.
        ping = partial(self._check_dependencies, ping_workers=checks.get("broker", "ok") == "ok")
        try:
            checks.update(await self._in_thread(ping))
        except JobBackendUnavailableError as exc:
            checks.update({"redis": f"unreachable: {exc}", "worker": "unknown"})
        return checks

    def _check_dependencies(self, deadline: float, *, ping_workers: bool = True) -> dict[str, str]:
        try:
            self.redis.ping()
        except redis.RedisError as exc:
            logger.warning("readiness: Redis unreachable: %s", exc)
            return {"redis": f"unreachable ({type(exc).__name__})", "worker": "unknown"}
        if not ping_workers:
            return {"redis": "ok", "worker": "unknown"}
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

    async def waiting_jobs(self) -> int | None:
        """The broker queue's length: tasks no worker has taken yet (a task a worker
        holds, running or reserved, is no longer in it)."""
        try:
            async with asyncio.timeout(QUEUE_LENGTH_TIMEOUT_SECONDS):
                return await self._publisher.queue_length()
        except SEND_ERRORS as exc:
            logger.warning("queue depth unknown: %s", type(exc).__name__)
            return None

    def begin_shutdown(self) -> None:
        return None  # the jobs wait in Redis for the workers, whatever this process does

    async def aclose(self) -> None:
        # Pending terminations end with this process (see `_terminate_later`).
        for termination in self._terminations:
            termination.cancel()
        await asyncio.gather(*self._terminations, return_exceptions=True)
        await self._subscriber.aclose()
        await self._publisher.aclose()
        await asyncio.get_running_loop().run_in_executor(self._threads, self.app.close)
        self._threads.shutdown()
