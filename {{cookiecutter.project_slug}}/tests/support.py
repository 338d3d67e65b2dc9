"""Helpers shared by the tests: settings without `.env`, log capture, a live server."""

import io
import json
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
from starlette.types import ASGIApp

import {{ cookiecutter.package_name }} as service_package
from {{ cookiecutter.package_name }}.logs import configure_logging
from {{ cookiecutter.package_name }}.settings import Settings
{%- if cookiecutter.use_bearer_auth %}

API_TOKEN = "test-token-0123456789abcdef"
AUTH_HEADERS = {"Authorization": f"Bearer {API_TOKEN}"}
{%- else %}

AUTH_HEADERS: dict[str, str] = {}
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
        {%- if cookiecutter.use_bearer_auth %}
        "api_token": API_TOKEN,
        {%- endif %}
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


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
