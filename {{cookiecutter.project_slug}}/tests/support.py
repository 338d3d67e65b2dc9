"""Helpers shared by the tests: settings without `.env`, log capture, a live server."""

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from starlette.types import ASGIApp

import {{ cookiecutter.package_name }} as service_package
from {{ cookiecutter.package_name }}.logs import configure_logging
from {{ cookiecutter.package_name }}.settings import Settings
{%- set test_modules = [] %}
{%- if cookiecutter.auth == "jwt" %}{% set _ = test_modules.append("jwks_server") %}{% endif %}
{%- if cookiecutter.job_backend == "celery-rabbitmq" %}{% set _ = test_modules.append("rabbitmq") %}{% endif %}
{%- if test_modules %}
from tests import {{ test_modules | join(", ") }}
{%- endif %}
{%- if cookiecutter.auth == "token" %}

API_TOKEN = "test-token-0123456789abcdef"
AUTH_HEADERS = {"Authorization": f"Bearer {API_TOKEN}"}
# The settings a service process started by a test needs for its auth layer.
AUTH_ENV = {"API_TOKEN": API_TOKEN}
{%- elif cookiecutter.auth == "jwt" %}

# One identity provider for the whole session, serving its JWKS from a thread of this
# process: every app and server the tests start checks tokens against it. Tests of the
# key cache itself start issuers of their own (tests/test_jwt_auth.py).
ISSUER = jwks_server.Issuer().start()
AUTH_HEADERS = {"Authorization": f"Bearer {ISSUER.token()}"}
# The settings a service process started by a test needs for its auth layer.
AUTH_ENV = {"JWT_ISSUER": ISSUER.url, "JWT_AUDIENCE": jwks_server.AUDIENCE}
{%- else %}

AUTH_HEADERS: dict[str, str] = {}
AUTH_ENV: dict[str, str] = {}
{%- endif %}

PACKAGE = service_package.__name__
SOURCE_ROOT = Path(service_package.__file__).resolve().parents[1]


def with_source_on_path(env: Mapping[str, str]) -> dict[str, str]:
    """`env` for a subprocess that must import this very checkout of the package,
    installed or not (it runs in another directory, away from any `.env`)."""
    paths = [str(SOURCE_ROOT), env.get("PYTHONPATH", "")]
    return {**env, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def make_settings(**overrides: Any) -> Settings:
    """Settings from the test's own values only: a developer's `.env` must not leak in."""
    values: dict[str, Any] = {
        "jobs_backend": "inprocess",
        "log_level": "DEBUG",
        "log_format": "json",
        {%- if cookiecutter.auth == "token" %}
        "api_token": API_TOKEN,
        {%- elif cookiecutter.auth == "jwt" %}
        "jwt_issuer": ISSUER.url,
        "jwt_audience": jwks_server.AUDIENCE,
        {%- endif %}
    }
    values.update(overrides)
    {%- if cookiecutter.job_backend == "celery-rabbitmq" %}
    # The broker of the test's Redis: a RabbitMQ vhost of the tests' own.
    values.setdefault("broker_url", rabbitmq.broker_for(values.get("redis_url")))
    {%- endif %}
    return Settings(_env_file=None, **values)
{%- if cookiecutter.job_backend == "celery-rabbitmq" %}


def broker_env(redis_url: str) -> dict[str, str]:
    """BROKER_URL for a process the tests start on this Redis: its RabbitMQ vhost."""
    return {"BROKER_URL": rabbitmq.broker_for(redis_url)}
{%- elif cookiecutter.job_backend == "celery" %}


def broker_env(redis_url: str) -> dict[str, str]:
    """The broker settings of a process the tests start on this Redis: none, Redis is
    its own broker."""
    return {}
{%- endif %}


def json_log_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON records of a log file that processes may still be writing: the text after
    the last newline can be half a record, so only whole lines count (uvicorn's own text
    lines are skipped)."""
    lines = path.read_text(errors="replace").split("\n")[:-1]
    return [json.loads(line) for line in lines if line.startswith("{")]


def messages_of(records: list[dict[str, Any]], request_id: str | None = None) -> list[str]:
    """The messages of JSON log records, optionally only those of one request."""
    return [
        r["message"] for r in records if request_id is None or r.get("request_id") == request_id
    ]


def wait_until(condition: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `condition()` until it returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class LogCapture:
    """The service's log lines (JSON, one per line), captured from its real handler."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    def install(self) -> None:
        configure_logging("DEBUG", "json", stream=self.stream)

    def clear(self) -> None:
        self.stream.seek(0)
        self.stream.truncate()

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines() if line]

    def messages(self, request_id: str | None = None) -> list[str]:
        return messages_of(self.records(), request_id)


@contextmanager
def live_server(app: ASGIApp, graceful_timeout: int = 5) -> Iterator[str]:
    """Serve `app` with a real uvicorn on a free port, in a thread; yield its URL."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_config=None,  # keep the service's own logging configuration
        lifespan="on",
        timeout_graceful_shutdown=graceful_timeout,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=graceful_timeout + 5)


# The server options of the Dockerfile: the bounded request-head parser.
BOUNDED_HTTP = ["--http", f"{PACKAGE}.http_protocol:BoundedHttpToolsProtocol"]


@dataclass
class ServerProcess:
    """A real `uvicorn <package>.main:app` process of a test's own."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_records(self) -> list[dict[str, Any]]:
        """Its JSON log records."""
        return json_log_lines(self.log_path)

    def messages(self) -> list[str]:
        return messages_of(self.log_records())

    def rss_bytes(self) -> int:
        """The process's resident memory now (Linux /proc, else `ps`)."""
        status = Path(f"/proc/{self.process.pid}/status")
        if status.exists():
            for line in status.read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        output = subprocess.run(
            ["ps", "-o", "rss=", "-p", str(self.process.pid)],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        return int(output.strip()) * 1024


@contextmanager
def uvicorn_process(
    tmp_path: Path, options: Sequence[str] = BOUNDED_HTTP, **env: str
) -> Iterator[ServerProcess]:
    """Start `python -m uvicorn <package>.main:app` on a free loopback port with the
    given server options and settings (JSON logs); wait until it serves; kill it after."""
    port = free_port()
    log_path = tmp_path / f"server-{port}.log"
    settings = {
        "JOBS_BACKEND": "inprocess",
        "LOG_FORMAT": "json",
        **AUTH_ENV,
        **env,
    }
    command = [
        sys.executable, "-m", "uvicorn", f"{PACKAGE}.main:app",
        "--host", "127.0.0.1", "--port", str(port), *options,
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=tmp_path,  # away from any developer `.env`
            env={**with_source_on_path(os.environ), **settings},
            stdout=log,
            stderr=log,
        )
    server = ServerProcess(process, port, log_path)

    def serving() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"uvicorn exited:\n{log_path.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    try:
        wait_until(serving, 20, "uvicorn to serve", interval=0.1)
        yield server
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
