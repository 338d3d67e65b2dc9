"""Per-client rate limits (`RATE_LIMIT`), as a pure-ASGI layer on the `limits` library.

A client is its authenticated identity (`scope["user"].identity`, set by an auth layer
outside this one), else its address (`scope["client"]`, which uvicorn has already
rewritten from `X-Forwarded-For` when the request came through a trusted proxy:
FORWARDED_ALLOW_IPS). The health checks and `/metrics` are never limited: an
orchestrator or a scraper must not be locked out by its own polling.

Windows are fixed and aligned to the clock (`limits`' fixed-window strategy, with the
window's number in the key): one `incr` per request, one store round trip, answers
the count, the remaining requests and the reset time for the `RateLimit-*` headers;
`limits`' own `hit` plus `get_window_stats` would take three. `limits` parses
RATE_LIMIT{% if cookiecutter.job_backend != "inprocess" %} and talks to Redis{% endif %}; the in-process counts are this module's own
(`MemoryCounts` says why). A client can send up to
twice the limit across a window boundary, the price of one round trip.

Over the limit: a 429 sent by this layer, never an `HTTPException` (in middleware
that would become a 500), and the app never runs.
"""

import asyncio
import logging
import math
import time
from collections.abc import Collection
from typing import Protocol

from limits import parse
{%- if cookiecutter.job_backend != "inprocess" %}
from limits.aio.storage import RedisStorage, Storage
{%- endif %}
from starlette.authentication import BaseUser
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..settings import Settings
from .metrics import METRICS_PATH
from .paths import HEALTH_PATHS

logger = logging.getLogger(__name__)

EXEMPT_PATHS = (*HEALTH_PATHS, METRICS_PATH)
# A store that does not answer within this is skipped for the request: a hung store
# adds at most 0.25 s to a request, and (see STORE_RETRY_SECONDS) only to the requests
# of one quarter second each second; a refused connection fails in about a millisecond.
STORE_TIMEOUT_SECONDS = 0.25
# After a failure the store is not asked again for this long: requests pass at once.
STORE_RETRY_SECONDS = 1.0
WARNING_INTERVAL_SECONDS = 60.0
TOO_MANY_BODY = b'{"detail":"Too many requests: retry after the Retry-After seconds"}'


class Counts(Protocol):
    """Where the layer counts: `hit` adds one to `key` in `window` and returns the sum."""

    errors: tuple[type[BaseException], ...]  # what it raises when it cannot answer
    remote: bool  # across the network: then it gets a timeout

    async def hit(self, key: str, window: int, window_seconds: int) -> int: ...


class MemoryCounts:
    """Counts in this process's memory, for the current window only.

    Not `limits`' async MemoryStorage: it scans every key it holds on every request to
    expire the old ones, so each client seen in a window slows every request (measured
    here with uvloop: +6 us a request with one client, +113 us with 1,000, +1.1 ms with
    10,000; a client with many IPv6 addresses is many clients). Windows here are aligned
    to the clock, so when a new one begins the old one's counts go all at once: the same
    small cost a request whatever the number of clients. No await between the read and
    the write: one event loop cannot interleave two hits.
    """

    errors: tuple[type[BaseException], ...] = ()
    remote = False

    def __init__(self) -> None:
        self.window = -1
        self.counts: dict[str, int] = {}

    async def hit(self, key: str, window: int, window_seconds: int) -> int:
        if window != self.window:
            self.window, self.counts = window, {}
        count = self.counts.get(key, 0) + 1
        self.counts[key] = count
        return count
{%- if cookiecutter.job_backend != "inprocess" %}


class StoredCounts:
    """Counts in a `limits` storage (Redis): one `incr` with its expiry, one round trip.
    The window's number is in the key, and the key expires when its window has."""

    remote = True

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        base_errors = storage.base_exceptions
        self.errors: tuple[type[BaseException], ...] = (
            base_errors if isinstance(base_errors, tuple) else (base_errors,)
        )

    async def hit(self, key: str, window: int, window_seconds: int) -> int:
        return await self.storage.incr(f"{key}/{window}", window_seconds)
{%- endif %}


class RateLimitMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        limit: str,
        counts: Counts,
        exempt_paths: Collection[str] = EXEMPT_PATHS,
        store_timeout: float | None = STORE_TIMEOUT_SECONDS,
    ) -> None:
        self.app = app
        item = parse(limit)
        self.amount = item.amount
        self.window_seconds = item.get_expiry()
        # The limit is in the key, so a changed RATE_LIMIT never reads an old count.
        self.key_prefix = item.key_for()
        self.counts = counts
        self.store_errors: tuple[type[BaseException], ...] = (
            TimeoutError,
            OSError,
            *counts.errors,
        )
        # Memory answers at once; a timer per request would cost more than the count.
        self.store_timeout = store_timeout if counts.remote else None
        self.exempt_paths = frozenset(exempt_paths)
        self.limit_header = (b"ratelimit-limit", b"%d" % self.amount)
        self.retry_at = 0.0  # monotonic time before which the failed store is not asked
        self.warned_at = -math.inf
        self.failing = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt_paths:
            await self.app(scope, receive, send)
            return

        now = time.time()
        window = int(now // self.window_seconds)
        reset = max(1, math.ceil((window + 1) * self.window_seconds - now))
        count = await self.count(f"{self.key_prefix}/{client_key(scope)}", window)
        if count is None:  # the store is down: let it through (see `store_failed`)
            await self.app(scope, receive, send)
            return

        headers = [
            self.limit_header,
            (b"ratelimit-remaining", b"%d" % max(0, self.amount - count)),
            (b"ratelimit-reset", b"%d" % reset),
        ]
        if count > self.amount:
            await send_too_many(send, headers, reset)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *headers]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def count(self, key: str, window: int) -> int | None:
        """This request's number in its client's window, or None if the store failed."""
        if self.retry_at and time.monotonic() < self.retry_at:
            return None
        try:
            if self.store_timeout is None:
                count = await self.counts.hit(key, window, self.window_seconds)
            else:
                async with asyncio.timeout(self.store_timeout):
                    count = await self.counts.hit(key, window, self.window_seconds)
        except self.store_errors as error:
            self.store_failed(error)
            return None
        if self.failing:
            self.failing = False
            self.retry_at = 0.0
            logger.info("rate limits are enforced again: the rate-limit store answers")
        return count

    def store_failed(self, error: BaseException) -> None:
        """Fail open: the request passes. The limit is there to keep one client from
        taking the service down; refusing every client while its store is away would take
        it down for all of them instead. A warning at most once a minute, not one per
        request, which would flood the logs exactly when an operator reads them. The
        error's type only: its text may carry the store's address."""
        now = time.monotonic()
        self.failing = True
        self.retry_at = now + STORE_RETRY_SECONDS
        if now - self.warned_at >= WARNING_INTERVAL_SECONDS:
            self.warned_at = now
            logger.warning(
                "rate limits are not enforced: the rate-limit store did not answer (%s); "
                "requests pass until it does",
                type(error).__name__,
            )


def client_key(scope: Scope) -> str:
    """Who the request counts against: its authenticated identity, else its address."""
    user = scope.get("user")
    if isinstance(user, BaseUser) and user.is_authenticated:
        return "user:" + user.identity
    client = scope.get("client")
    return "addr:" + (client[0] if client else "unknown")


async def send_too_many(send: Send, headers: list[tuple[bytes, bytes]], reset: int) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 429,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(TOO_MANY_BODY)),
                (b"retry-after", b"%d" % reset),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": TOO_MANY_BODY})


def rate_limit_counts(settings: Settings) -> Counts:
    """Where the counts live.
    {%- if cookiecutter.job_backend != "inprocess" %} With the Celery backend, in Redis
    (REDIS_URL): every API process and host sees one count, and keys expire by
    themselves at the end of their window. Through redis-py, which the service uses
    already (`limits` would use coredis by default).
    {%- endif %}
    In-process, in this process's memory: each server worker counts on its own.
    """
    {%- if cookiecutter.job_backend != "inprocess" %}
    if settings.jobs_backend == "celery":
        storage = RedisStorage(
            # `limits` picks its async storage by the URL's scheme.
            "async+" + settings.redis_url.replace("unix://", "redis+unix://", 1),
            implementation="redispy",
            key_prefix=__name__.partition(".")[0] + ":rate-limit",
            socket_timeout=STORE_TIMEOUT_SECONDS,
            socket_connect_timeout=STORE_TIMEOUT_SECONDS,
        )
        return StoredCounts(storage)
    {%- endif %}
    return MemoryCounts()


def rate_limit_layers(settings: Settings) -> list[Middleware]:
    """The rate-limit layer, or none when RATE_LIMIT is empty."""
    if not settings.rate_limit:
        return []
    counts = rate_limit_counts(settings)
    return [Middleware(RateLimitMiddleware, limit=settings.rate_limit, counts=counts)]
