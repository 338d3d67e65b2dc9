"""A real RabbitMQ for the Celery tests: a virtual host of the tests' own per Redis.

RabbitMQ comes from `TEST_BROKER_URL` when set (all tests share it, and nothing in it
is ever purged or deleted: it is not ours); otherwise each Redis the tests start gets a
vhost of the tests' own on the local RabbitMQ, made with `rabbitmqctl`, so that no
test's messages reach the workers of another. A vhost is made once and reused: when
its Redis stops, the queues the tests' apps declare in it are deleted (with what they
still hold) and the next Redis gets it; `rabbitmqctl` costs about 2 s a call, and a
suite starts some 25 Redis servers, at most three at once. The vhosts are deleted at
the end of the session (`delete_vhosts`). Without a broker, the tests that need one
skip, saying why, unless `REQUIRE_BROKER=1` turns that into a failure (as in CI).
"""

import contextlib
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import amqp
import pytest

# Where the local RabbitMQ listens, and the user `rabbitmqctl` gives each vhost to.
LOCAL_HOST, USER, PASSWORD = "127.0.0.1:5672", "guest", "guest"
RABBITMQCTL_TIMEOUT_SECONDS = 60
# Settings and processes that name no broker get this one, which refuses connections:
# nothing a test does lands on a vhost that is not the tests' own.
NO_BROKER_URL = "amqp://guest:guest@127.0.0.1:1//"
# What the apps declare in a vhost: the job queue, and the queues of Celery's native
# delayed delivery (countdown retries wait in them, celery_delayed_0 to 27).
DECLARED_QUEUES = ("celery", *(f"celery_delayed_{level}" for level in range(28)))

_free: list[str] = []  # vhosts of ours, emptied, for the next Redis
_made: list[str] = []  # every vhost made here, to delete at the end
# The broker of each Redis the tests run now (see `broker_for`).
_broker_of_redis: dict[str, str] = {}


def skip_or_fail(reason: str) -> None:
    if os.environ.get("REQUIRE_BROKER") == "1":
        pytest.fail(f"REQUIRE_BROKER=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def _rabbitmqctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["rabbitmqctl", *args],
        capture_output=True,
        text=True,
        timeout=RABBITMQCTL_TIMEOUT_SECONDS,
        check=False,
    )


def _make_vhost() -> str:
    if shutil.which("rabbitmqctl") is None:
        skip_or_fail("no TEST_BROKER_URL, and no rabbitmqctl to make a RabbitMQ vhost")
    name = f"tests-{secrets.token_hex(4)}"
    for args in (("add_vhost", name), ("set_permissions", "-p", name, USER, ".*", ".*", ".*")):
        done = _rabbitmqctl(*args)
        if done.returncode != 0:
            skip_or_fail(f"`rabbitmqctl {args[0]}` failed: {(done.stderr or done.stdout).strip()}")
        if args[0] == "add_vhost":
            _made.append(name)
    return name


def _empty(name: str) -> None:
    """Delete the queues the tests' apps declared in our vhost `name`."""
    connection = amqp.Connection(LOCAL_HOST, userid=USER, password=PASSWORD, virtual_host=name)
    connection.connect()
    try:
        channel = connection.channel()
        for queue in DECLARED_QUEUES:
            channel.queue_delete(queue)
    finally:
        connection.close()


@contextmanager
def vhost() -> Iterator[str]:
    """The URL of a broker for one Redis's tests: `TEST_BROKER_URL`, or a vhost of ours."""
    if url := os.environ.get("TEST_BROKER_URL"):
        yield url
        return
    name = _free.pop() if _free else _make_vhost()
    try:
        yield f"amqp://{USER}:{PASSWORD}@{LOCAL_HOST}/{name}"
    finally:
        # One that cannot be emptied is not reused (it is still deleted at the end).
        with contextlib.suppress(OSError, amqp.exceptions.AMQPError):
            _empty(name)
            _free.append(name)


@contextmanager
def broker_of(redis_url: str) -> Iterator[str]:
    """A broker for the tests' processes and settings that use this Redis, while it runs."""
    with vhost() as url:
        _broker_of_redis[redis_url] = url
        try:
            yield url
        finally:
            del _broker_of_redis[redis_url]


def broker_for(redis_url: str | None) -> str:
    """The broker that goes with a Redis of the tests; for any other (an address where
    nothing listens, say), one that refuses connections."""
    return _broker_of_redis.get(redis_url or "", NO_BROKER_URL)


def delete_vhosts() -> None:
    """Delete every vhost made here (only those), with all they hold."""
    while _made:
        _rabbitmqctl("delete_vhost", _made.pop())
    _free.clear()
