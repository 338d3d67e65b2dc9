"""Following Celery jobs through Redis pub/sub: one subscriber connection per process.

Celery's Redis result store PUBLISHes every state it stores on the channel named by
the job's key (`celery-task-meta-<id>`), and the worker's progress reports do too
(`celery_app.write_state`). So a follower needs no polling: this process keeps one
pub/sub connection, subscribes it to each followed job's channel while anyone follows
that job (PUBSUB NUMSUB shows one subscriber per process, however many clients), and
hands each message, decoded once, to every follower of that job.

Why not a connection per client, or `GET` per client per tick: a thousand clients
would be a thousand Redis connections, or a thousand round trips a tick for states
that change a few times a job.

A follower is subscribed before it reads the job's state: it waits for Redis to
confirm the SUBSCRIBE, so a change stored between the two is delivered. After a lost
connection the subscriber connects again, subscribes to every channel still followed,
and tells their followers to read the state again (messages published meanwhile are
lost: pub/sub keeps nothing).
"""

import asyncio
import logging
from collections.abc import Callable
from functools import partial

import redis
import redis.asyncio
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .celery_app import REDIS_TIMEOUT_SECONDS
from .models import JobBackendUnavailableError, JobState
from .watch import RESYNC, Change, ChangeSlot

logger = logging.getLogger(__name__)

# An idle subscriber PINGs Redis this often (redis-py's health check), so a connection
# that died silently is noticed and replaced within about this long.
HEALTH_CHECK_SECONDS = 10.0
# Waits between attempts to connect again after the connection was lost.
RECONNECT_WAIT_SECONDS = (0.2, 0.5, 1.0, 2.0)
ERRORS: tuple[type[Exception], ...] = (redis.RedisError, OSError)
# What makes a follower's subscription fail: those, or no confirmation by its deadline.
SUBSCRIBE_ERRORS: tuple[type[Exception], ...] = (TimeoutError, *ERRORS)

# Decodes a published value into the job's state (None: not a state of a job we know).
Decode = Callable[[str, bytes], JobState | None]


class JobStateSubscriber:
    def __init__(self, redis_url: str, channel_prefix: str, decode: Decode) -> None:
        self._redis = redis.asyncio.Redis.from_url(
            redis_url,
            socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            socket_timeout=REDIS_TIMEOUT_SECONDS,
            health_check_interval=HEALTH_CHECK_SECONDS,
            # No silent reconnect inside redis-py: the reader does it, and resyncs.
            retry=Retry(NoBackoff(), 0),
        )
        self._prefix = channel_prefix
        self._decode = decode
        # Followers by channel, and for each subscribed channel, when Redis confirmed it.
        self._followers: dict[str, set[ChangeSlot]] = {}
        self._confirmed: dict[str, asyncio.Future[None]] = {}
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        # SUBSCRIBE and UNSUBSCRIBE of one channel must reach Redis in the order decided.
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    def channel_for(self, job_id: str) -> str:
        return f"{self._prefix}{job_id}"

    async def subscribe(self, job_id: str, slot: ChangeSlot, deadline_seconds: float) -> None:
        """Deliver the job's changes to `slot` from now on: returns once Redis has
        confirmed the subscription; raises JobBackendUnavailableError if it does not
        within the deadline."""
        channel = self.channel_for(job_id)
        self._followers.setdefault(channel, set()).add(slot)
        try:
            async with asyncio.timeout(deadline_seconds):
                async with self._lock:
                    pubsub = await self._connected()
                    confirmed = self._confirmed.get(channel)
                    if confirmed is None:
                        confirmed = asyncio.get_running_loop().create_future()
                        self._confirmed[channel] = confirmed
                        try:
                            await pubsub.subscribe(channel)
                        except BaseException:
                            del self._confirmed[channel]  # never sent: the next one tries
                            raise
                await self._confirmation(confirmed)
        except SUBSCRIBE_ERRORS as exc:
            self.unsubscribe(job_id, slot)
            reason = "no answer" if isinstance(exc, TimeoutError) else type(exc).__name__
            raise JobBackendUnavailableError(f"Redis pub/sub: {reason}") from None
        except BaseException:
            self.unsubscribe(job_id, slot)
            raise

    @staticmethod
    async def _confirmation(confirmed: "asyncio.Future[None]") -> None:
        try:
            # Shielded: one follower giving up must not cancel it for the others.
            await asyncio.shield(confirmed)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if confirmed.cancelled() and task is not None and not task.cancelling():
                # Not this request cancelled: the connection was lost before Redis
                # confirmed (see `_reset`).
                raise ConnectionError("lost before the subscription was confirmed") from None
            raise

    def unsubscribe(self, job_id: str, slot: ChangeSlot) -> None:
        """Stop delivering to `slot`; synchronous, so a cancelled stream can call it.
        The last follower of a job takes the channel's subscription with it."""
        channel = self.channel_for(job_id)
        followers = self._followers.get(channel)
        if followers is None:
            return
        followers.discard(slot)
        if not followers:
            del self._followers[channel]
            if not self._closing:
                task = asyncio.get_running_loop().create_task(self._drop(channel))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _drop(self, channel: str) -> None:
        async with self._lock:
            if channel in self._followers:
                return  # followed again meanwhile
            confirmed = self._confirmed.pop(channel, None)
            if confirmed is not None and not confirmed.done():
                confirmed.cancel()
            if self._pubsub is not None:
                try:
                    await self._pubsub.unsubscribe(channel)
                except ERRORS as exc:  # the reader notices and connects again
                    logger.debug("unsubscribe %s failed: %s", channel, exc)

    async def _connected(self) -> PubSub:
        """The pub/sub connection, subscribed to every channel followed, and its
        reader task; made on first use and after a lost connection. Call it holding
        the lock. Raises what connecting raises."""
        if self._pubsub is not None:
            return self._pubsub
        pubsub = self._redis.pubsub()
        try:
            # Channels followed before the connection was lost: their followers read
            # the state again once Redis confirms (they may have missed messages).
            channels = list(self._followers)
            for channel in channels:
                confirmed = asyncio.get_running_loop().create_future()
                confirmed.add_done_callback(partial(resync, self._followers[channel]))
                self._confirmed[channel] = confirmed
            # Either connects; with no channel, the PING's answer is read (and ignored)
            # by the reader like any message.
            await (pubsub.subscribe(*channels) if channels else pubsub.ping())
        except BaseException:
            await close_pubsub(pubsub)
            raise
        self._pubsub = pubsub
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._read())
        return pubsub

    async def _read(self) -> None:
        failures = 0
        while not self._closing:
            try:
                pubsub = self._pubsub
                if pubsub is None:  # lost: connect again
                    async with self._lock:
                        pubsub = await self._connected()
                    logger.info(
                        "job events: Redis pub/sub back; %d job(s) followed", len(self._followers)
                    )
                message = await pubsub.get_message(timeout=HEALTH_CHECK_SECONDS)
                failures = 0
            except Exception as exc:  # a lost connection, or a bug: this task must go on
                if self._closing:
                    return
                wait = RECONNECT_WAIT_SECONDS[min(failures, len(RECONNECT_WAIT_SECONDS) - 1)]
                failures += 1
                logger.warning(
                    "job events: Redis pub/sub lost (%s); %d job(s) followed, trying again in %gs",
                    type(exc).__name__,
                    len(self._followers),
                    wait,
                    exc_info=not isinstance(exc, ERRORS),
                )
                await self._reset()
                await asyncio.sleep(wait)
                continue
            if message is not None:
                self._dispatch(message)

    def _dispatch(self, message: dict[str, object]) -> None:
        kind, raw_channel = message["type"], message.get("channel")
        if not isinstance(raw_channel, bytes):
            return
        channel = raw_channel.decode()
        followers = self._followers.get(channel, ())
        if kind == "subscribe":
            confirmed = self._confirmed.get(channel)
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)
        elif kind == "message" and followers:
            data = message["data"]
            change: Change = RESYNC
            if isinstance(data, bytes):
                try:
                    change = self._decode(channel.removeprefix(self._prefix), data)
                # Whatever the bytes make Celery's decoder raise, this one reader task
                # must live on: the followers read the stored state instead.
                except Exception as exc:
                    logger.warning("job events: unreadable state on %s: %s", channel, exc)
            for slot in followers:
                slot.put(change)

    async def _reset(self) -> None:
        """Forget the broken connection; the reader makes a new one."""
        async with self._lock:
            pubsub, self._pubsub = self._pubsub, None
            for confirmed in self._confirmed.values():
                if not confirmed.done():
                    confirmed.cancel()
            self._confirmed.clear()
        if pubsub is not None:
            await close_pubsub(pubsub)

    async def aclose(self) -> None:
        self._closing = True
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        if self._pubsub is not None:
            await close_pubsub(self._pubsub)
        await self._redis.aclose()


def resync(followers: set[ChangeSlot], confirmed: "asyncio.Future[None]") -> None:
    if not confirmed.cancelled():
        for slot in followers:
            slot.put(RESYNC)


async def close_pubsub(pubsub: PubSub) -> None:
    await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
