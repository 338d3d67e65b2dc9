"""Real processes for the Celery tests: a Redis server and Celery workers.

Redis comes from `TEST_REDIS_URL` when set (never flushed: it is not ours); otherwise
the tests start `redis-server` on a free port. Without either, the Celery tests skip,
saying why, unless `REQUIRE_REDIS=1` turns that into a failure (as in CI).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

{% if cookiecutter.job_backend == "celery-rabbitmq" -%}
from tests import rabbitmq
{% endif -%}
from tests.support import (
    PACKAGE,
    broker_env,
    free_port,
    messages_of,
    wait_until,
    with_source_on_path,
)


def skip_or_fail(reason: str) -> None:
    if os.environ.get("REQUIRE_REDIS") == "1":
        pytest.fail(f"REQUIRE_REDIS=1 but {reason}", pytrace=False)
    pytest.skip(reason)


class RedisServer:
    """A throw-away `redis-server`; it can be stopped, restarted on the same port, or
    frozen (accepting connections, never answering). It keeps nothing on disk unless
    `persistent`: then it keeps an append-only file in `workdir`, and a restart comes
    back with the data, as a production Redis does."""

    def __init__(self, workdir: Path, *, persistent: bool = False) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.persistent = persistent
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes" if self.persistent else "no",
             "--appendfsync", "always", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis.from_url(self.url, socket_timeout=0.5)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_until(answers, 10, "redis-server to start")
        client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)  # in case it is frozen
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def freeze(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


@contextmanager
def redis_server(workdir: Path, *, persistent: bool = False) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        skip_or_fail("no redis-server binary on PATH to start a test Redis")
    server = RedisServer(workdir, persistent=persistent)
    {%- if cookiecutter.job_backend == "celery-rabbitmq" %}
    # Its broker first: a test that cannot have one skips before anything starts.
    with rabbitmq.broker_of(server.url):
        server.start()
        try:
            yield server
        finally:
            server.stop()
    {%- else %}
    server.start()
    try:
        yield server
    finally:
        server.stop()
    {%- endif %}


class WorkerProcess:
    """`celery -A <package>.worker worker` in its own process group, logging JSON to a
    file, exactly as it runs in production (prefork pool, not eager mode)."""

    def __init__(
        self,
        redis_url: str,
        name: str,
        workdir: Path,
        env: dict[str, str] | None = None,
        concurrency: int = 1,
        include: str | None = None,
    ) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self.redis_url = redis_url
        # Its metrics listener, on a port of its own: several test workers run at once.
        self.metrics_port = free_port()
        command = [
            sys.executable, "-m", "celery", "-A", f"{PACKAGE}.worker", "worker",
            "--pool", "prefork", "--concurrency", str(concurrency), "--hostname", f"{name}@%h",
            "--without-gossip", "--without-mingle", "--loglevel", "INFO",
        ]  # fmt: skip
        if include is not None:
            # More modules for the worker to import, e.g. jobs of the tests' own (with the
            # project root on PYTHONPATH, for `tests.`).
            command += ["--include", include]
        environment = {
            **with_source_on_path(os.environ),
            "REDIS_URL": redis_url,
            **broker_env(redis_url),
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
            "WORKER_METRICS_PORT": str(self.metrics_port),
            # Its metrics files go in here, even when the test kills it.
            "TMPDIR": str(workdir),
            **(env or {}),
        }
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                cwd=workdir,  # no developer `.env` in there
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def records(self) -> list[dict[str, Any]]:
        records = []
        for line in self.log_path.read_text().splitlines():
            if line.startswith("{"):
                records.append(json.loads(line))
        return records

    def messages(self) -> list[str]:
        return messages_of(self.records())

    def wait_ready(self, timeout: float = 30) -> None:
        wait_until(
            lambda: any("ready." in m for m in self.messages()) or self.process.poll() is not None,
            timeout,
            f"worker {self.name} to start",
        )
        if self.process.poll() is not None:
            raise AssertionError(f"worker {self.name} exited:\n{self.log_path.read_text()}")

    def kill(self) -> None:
        """SIGKILL the whole worker, pool processes included: a machine dying."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def pool_pids(self) -> list[int]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in children.read_text().split()]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # warm shutdown
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


@contextmanager
def running_worker(
    redis_url: str,
    name: str,
    workdir: Path,
    env: dict[str, str] | None = None,
    concurrency: int = 1,
    include: str | None = None,
) -> Iterator[WorkerProcess]:
    """A started worker, stopped on the way out whatever happens (a killed one too)."""
    worker = WorkerProcess(redis_url, name, workdir, env, concurrency, include)
    try:
        worker.wait_ready()
        yield worker
    finally:
        worker.stop()
