"""Rate limits (RATE_LIMIT): per client, 429 past the limit, the RateLimit-* headers.

The layer sends its 429 itself and the app never runs. An `HTTPException` raised in a
middleware would reach the client as a 500 (middleware runs outside FastAPI's exception
handlers); a `BaseHTTPMiddleware` would run the app in another task and cost about
0.2 ms a request, more than the limit check itself.
"""

{% if cookiecutter.job_backend != "inprocess" -%}
import time
{% endif -%}
from collections.abc import Iterator
from typing import Any

import pytest
{%- if cookiecutter.job_backend != "inprocess" %}
import redis
{%- endif %}
from fastapi import FastAPI
from starlette.authentication import SimpleUser
from starlette.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from {{ cookiecutter.package_name }}.factory import create_app
from {{ cookiecutter.package_name }}.middleware import rate_limit
{%- if cookiecutter.job_backend != "inprocess" %}
from tests.celery_processes import RedisServer
{%- endif %}
from tests.probes import Recorder, probe_router
from tests.support import AUTH_HEADERS, LogCapture, make_settings

# A day: a test never sees its window end (it would start counting afresh).
LIMIT = "3/day"
WARNING = "rate limits are not enforced"


def limited_app(logs: LogCapture, **settings: Any) -> FastAPI:
    app = create_app(make_settings(rate_limit=LIMIT, **settings))
    logs.install()
    app.include_router(probe_router(Recorder()))
    return app


@pytest.fixture
def limited_client(logs: LogCapture) -> Iterator[TestClient]:
    with TestClient(limited_app(logs), headers=AUTH_HEADERS) as client:
        yield client


def test_the_request_past_the_limit_gets_429_with_retry_after(limited_client: TestClient) -> None:
    answers = [limited_client.get("/probe/sync") for _ in range(4)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    assert [r.headers["ratelimit-limit"] for r in answers] == ["3"] * 4
    assert [r.headers["ratelimit-remaining"] for r in answers] == ["2", "1", "0", "0"]
    refused = answers[-1]
    assert refused.json() == {"detail": "Too many requests: retry after the Retry-After seconds"}
    reset = int(refused.headers["ratelimit-reset"])
    assert 0 < reset <= 86_400
    assert refused.headers["retry-after"] == str(reset)
    # The edge layer outside it still gives the refusal an id and its headers.
    assert refused.headers["x-request-id"]
    assert refused.headers["x-content-type-options"] == "nosniff"


def test_health_checks_are_never_limited(limited_client: TestClient) -> None:
    for _ in range(4):
        limited_client.get("/probe/sync")
    assert limited_client.get("/probe/sync").status_code == 429
    for _ in range(5):
        live = limited_client.get("/health/live")
        assert live.status_code == 200
        assert "ratelimit-limit" not in live.headers
        assert limited_client.get("/health/ready").status_code != 429


def test_without_a_rate_limit_nothing_is_counted(client: TestClient) -> None:
    answers = [client.get("/health/live"), client.get("/jobs/no-such-job")]
    assert all("ratelimit-limit" not in r.headers for r in answers)


# The layer alone, around a plain app: the scope says who the client is.
async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def status_of(app: rate_limit.RateLimitMiddleware, address: str, user: str = "") -> int:
    scope: Scope = {
        "type": "http",
        "method": "GET",
        "path": "/things",
        "headers": [],
        "client": (address, 40_000),
    }
    if user:
        scope["user"] = SimpleUser(user)  # what an auth layer outside sets
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status: int = sent[0]["status"]
    return status


@pytest.mark.anyio
async def test_clients_are_counted_apart_by_identity_else_address() -> None:
    layer = rate_limit.RateLimitMiddleware(hello, limit="2/day", counts=rate_limit.MemoryCounts())
    assert [await status_of(layer, "192.0.2.10") for _ in range(3)] == [200, 200, 429]
    # Another address has its own count.
    assert [await status_of(layer, "192.0.2.11") for _ in range(3)] == [200, 200, 429]
    # Authenticated users behind the exhausted address count by who they are.
    assert [await status_of(layer, "192.0.2.10", "alice") for _ in range(3)] == [200, 200, 429]
    assert [await status_of(layer, "192.0.2.10", "bob") for _ in range(3)] == [200, 200, 429]
    # Alice is counted as Alice wherever she comes from.
    assert await status_of(layer, "198.51.100.7", "alice") == 429


@pytest.mark.anyio
async def test_memory_keeps_the_counts_of_the_current_window_only() -> None:
    """Memory does not grow with every client ever seen, nor slow each request."""
    counts = rate_limit.MemoryCounts()
    for address in range(1_000):
        await counts.hit(f"addr:192.0.2.{address}", window=7, window_seconds=60)
    assert await counts.hit("addr:192.0.2.1", window=7, window_seconds=60) == 2
    assert await counts.hit("addr:192.0.2.1", window=8, window_seconds=60) == 1
    assert len(counts.counts) == 1
{%- if cookiecutter.job_backend != "inprocess" %}


def redis_app(logs: LogCapture, server: RedisServer) -> FastAPI:
    return limited_app(logs, jobs_backend="celery", redis_url=server.url)


def test_two_api_processes_share_one_count_in_redis(
    private_redis: RedisServer, logs: LogCapture
) -> None:
    """Two app instances (as two processes or hosts) on one Redis: one count, whose
    key expires by itself when its window ends."""
    first, second = redis_app(logs, private_redis), redis_app(logs, private_redis)
    with (
        TestClient(first, headers=AUTH_HEADERS) as one,
        TestClient(second, headers=AUTH_HEADERS) as other,
    ):
        assert one.get("/probe/sync").headers["ratelimit-remaining"] == "2"
        assert other.get("/probe/sync").headers["ratelimit-remaining"] == "1"
        assert one.get("/probe/sync").headers["ratelimit-remaining"] == "0"
        assert other.get("/probe/sync").status_code == 429
        assert one.get("/probe/sync").status_code == 429
    client = redis.Redis.from_url(private_redis.url)
    (key,) = client.keys("*rate-limit*")
    assert 0 < client.ttl(key) <= 86_400
    client.close()


@pytest.mark.parametrize("outage", ["stopped", "frozen"])
def test_redis_down_lets_requests_through_with_one_warning(
    private_redis: RedisServer, logs: LogCapture, outage: str
) -> None:
    """Stopped (connections refused) or frozen (accepting, never answering): requests
    pass without RateLimit headers, never a 5xx, and one warning says limits are off,
    however many requests and store retries (one a second) follow. When Redis is back,
    requests are counted again, by themselves."""
    with TestClient(redis_app(logs, private_redis), headers=AUTH_HEADERS) as client:
        assert client.get("/probe/sync").headers["ratelimit-remaining"] == "2"
        if outage == "stopped":
            private_redis.stop()
        else:
            private_redis.freeze()
        try:
            answers = [client.get("/probe/sync") for _ in range(6)]
            time.sleep(1.2)  # past the retry interval: the store is asked again
            answers += [client.get("/probe/sync") for _ in range(6)]
        finally:
            if outage == "frozen":
                private_redis.thaw()
            else:
                private_redis.start()  # on the same port; empty, as it kept nothing
        time.sleep(1.2)
        back = client.get("/probe/sync")
    assert [r.status_code for r in answers] == [200] * 12
    assert all("ratelimit-limit" not in r.headers for r in answers)
    warnings = [r for r in logs.records() if r["message"].startswith(WARNING)]
    assert len(warnings) == 1, warnings
    assert warnings[0]["level"] == "WARNING"
    assert str(private_redis.port) not in warnings[0]["message"]
    assert back.status_code == 200
    if outage == "stopped":  # a new, empty Redis
        assert back.headers["ratelimit-remaining"] == "2"
    else:  # the counts sent while it was frozen land when it thaws
        assert int(back.headers["ratelimit-remaining"]) <= 1
    assert "rate limits are enforced again: the rate-limit store answers" in logs.messages()

{%- endif %}
