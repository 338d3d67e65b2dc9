"""A real RabbitMQ for the Celery tests: a virtual host of the tests' own per Redis.

Each Redis the tests start gets a vhost of the tests' own, so that no test's messages
reach the workers of another: on the local RabbitMQ, made with `rabbitmqctl`; or, with
`TEST_BROKER_URL` (amqp://user:password@host:port, a CI service say, where there is
no `rabbitmqctl`), on that server, made through its management API
(`TEST_BROKER_MANAGEMENT_URL`, by default http://host:15672 with the same user). A
vhost is made once and reused: when its Redis stops, the queues the tests' apps
declared in it are deleted (with what they still hold) and the next Redis gets it;
`rabbitmqctl` costs about 2 s a call, and a suite starts some 25 Redis servers, at
most three at once. The vhosts are deleted at the end of the session
(`delete_vhosts`); nothing else on the server is touched. Without a broker, the tests
that need one skip, saying why, unless `REQUIRE_BROKER=1` turns that into a failure
(as in CI).
"""

import base64
import contextlib
import json
import os
import secrets
import shutil
import socket
import struct
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import amqp
import pytest

# The local RabbitMQ, where `rabbitmqctl` makes the vhosts, and the user it gives them.
LOCAL_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672"
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


def _server() -> str:
    """amqp://user:password@host:port of the server the vhosts are made on."""
    url = os.environ.get("TEST_BROKER_URL") or LOCAL_BROKER_URL
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="", query="", fragment=""))


def _vhost_url(name: str) -> str:
    return f"{_server()}/{quote(name, safe='')}"


def _rabbitmqctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["rabbitmqctl", *args],
        capture_output=True,
        text=True,
        timeout=RABBITMQCTL_TIMEOUT_SECONDS,
        check=False,
    )


def _management(method: str, path: str, body: object = None) -> object:
    """One call of the management API of TEST_BROKER_URL's server; its JSON answer."""
    parts = urlsplit(_server())
    base = os.environ.get("TEST_BROKER_MANAGEMENT_URL") or f"http://{parts.hostname}:15672"
    if urlsplit(base).scheme not in ("http", "https"):
        skip_or_fail("TEST_BROKER_MANAGEMENT_URL must be an http:// or https:// URL")
    credentials = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
    request = urllib.request.Request(  # noqa: S310 - http(s), checked above
        f"{base.rstrip('/')}/api/{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={
            "Authorization": "Basic " + base64.b64encode(credentials.encode()).decode(),
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(request, timeout=RABBITMQCTL_TIMEOUT_SECONDS) as answer:  # noqa: S310
        text = answer.read()
    return json.loads(text) if text else None


def _make_vhost() -> str:
    name = f"tests-{secrets.token_hex(4)}"
    user = unquote(urlsplit(_server()).username or "guest")
    if os.environ.get("TEST_BROKER_URL"):
        try:
            _management("PUT", f"vhosts/{quote(name, safe='')}", {})
            _made.append(name)
            everything = {"configure": ".*", "write": ".*", "read": ".*"}
            _management("PUT", f"permissions/{quote(name, safe='')}/{quote(user)}", everything)
        except OSError as exc:  # urllib's errors, HTTP ones included
            skip_or_fail(f"TEST_BROKER_URL's management API refused a vhost: {exc}")
        return name
    if shutil.which("rabbitmqctl") is None:
        skip_or_fail("no TEST_BROKER_URL, and no rabbitmqctl to make a RabbitMQ vhost")
    for args in (("add_vhost", name), ("set_permissions", "-p", name, user, ".*", ".*", ".*")):
        done = _rabbitmqctl(*args)
        if done.returncode != 0:
            skip_or_fail(f"`rabbitmqctl {args[0]}` failed: {(done.stderr or done.stdout).strip()}")
        if args[0] == "add_vhost":
            _made.append(name)
    return name


def _empty(broker_url: str) -> None:
    """Delete the queues the tests' apps declared in the tests' vhost."""
    connection = _connect(broker_url)
    try:
        channel = connection.channel()
        for queue in DECLARED_QUEUES:
            channel.queue_delete(queue)
    finally:
        connection.close()


@contextmanager
def vhost() -> Iterator[str]:
    """The URL of a vhost of the tests' own, for one Redis's tests."""
    name = _free.pop() if _free else _make_vhost()
    url = _vhost_url(name)
    try:
        yield url
    finally:
        # One that cannot be emptied is not reused (it is still deleted at the end).
        with contextlib.suppress(OSError, amqp.exceptions.AMQPError):
            _empty(url)
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
        name = _made.pop()
        if os.environ.get("TEST_BROKER_URL"):
            with contextlib.suppress(OSError):
                _management("DELETE", f"vhosts/{quote(name, safe='')}")
        else:
            _rabbitmqctl("delete_vhost", name)
    _free.clear()


def _connect(broker_url: str) -> amqp.Connection:
    parts = urlsplit(broker_url)
    connection = amqp.Connection(
        f"{parts.hostname}:{parts.port or 5672}",
        userid=unquote(parts.username or "guest"),
        password=unquote(parts.password or "guest"),
        virtual_host=unquote(parts.path[1:]) or "/",
    )
    connection.connect()
    return connection


def queued_task_ids(broker_url: str, queue: str = "celery") -> list[str]:
    """The ids of the tasks waiting in `queue`, read without taking them: each message
    is fetched unacknowledged, and closing the connection puts them all back."""
    connection = _connect(broker_url)
    ids = []
    try:
        channel = connection.channel()
        while (message := channel.basic_get(queue, no_ack=False)) is not None:
            assert message.headers is not None, "a task message has headers"
            ids.append(str(message.headers["id"]))
    finally:
        connection.close()
    return ids


def queued_count(broker_url: str, queue: str = "celery") -> int:
    """How many tasks wait in `queue` (RabbitMQ's count: delivered ones are not in it)."""
    connection = _connect(broker_url)
    try:
        declared = connection.channel().queue_declare(queue, passive=True)
        assert declared is not None, "a passive declare answers"
        _, count, _ = declared
    finally:
        connection.close()
    return int(count)


def unacknowledged(broker_url: str, queue: str = "celery") -> int | None:
    """How many of `queue`'s messages a worker holds unacknowledged (RabbitMQ's count;
    None while it has none to give)."""
    name = unquote(urlsplit(broker_url).path[1:])
    if os.environ.get("TEST_BROKER_URL"):
        stats = _management("GET", f"queues/{quote(name, safe='')}/{quote(queue, safe='')}")
        count = stats.get("messages_unacknowledged") if isinstance(stats, dict) else None
        return count if isinstance(count, int) else None
    listed = _rabbitmqctl("list_queues", "-q", "-p", name, "name", "messages_unacknowledged")
    for line in listed.stdout.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0] == queue and fields[1].isdigit():
            return int(fields[1])
    return None


class TcpProxy:
    """A broker the test can cut: a loopback port that relays to RabbitMQ; `url` is
    `broker_url` through it.

    `stop()` refuses new connections and resets the open ones (a broker that died or
    restarted); `freeze()` accepts and holds connections but relays nothing (a hung
    broker, or a network that drops packets); `start()` and `thaw()` undo them.
    """

    def __init__(self, broker_url: str) -> None:
        self.broker_url = broker_url
        parts = urlsplit(broker_url)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 5672)
        self.port = 0  # the first start picks one, and later ones take it again
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._relaying = threading.Event()
        self._relaying.set()

    @property
    def url(self) -> str:
        parts = urlsplit(self.broker_url)
        credentials = parts.netloc.rpartition("@")[0]
        return urlunsplit(parts._replace(netloc=f"{credentials}@127.0.0.1:{self.port}"))

    def start(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            # Shut down first: a close alone leaves it listening under the blocked accept.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                # SO_LINGER 0: a reset, as from a process that is gone; the shutdown wakes
                # the relay blocked on it (a close alone would not end the connection).
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def freeze(self) -> None:
        self._relaying.clear()

    def thaw(self) -> None:
        self._relaying.set()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._relay, args=(source, sink), daemon=True).start()

    def _relay(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self._relaying.wait()
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
