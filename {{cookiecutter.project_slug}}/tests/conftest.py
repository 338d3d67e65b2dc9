{% if cookiecutter.job_backend != "inprocess" -%}
import os
{% endif -%}
from collections.abc import Iterator
{%- if cookiecutter.job_backend != "inprocess" %}
from pathlib import Path
{%- endif %}

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from {{ cookiecutter.package_name }}.factory import create_app
{%- if cookiecutter.job_backend != "inprocess" %}
{%- if cookiecutter.job_backend == "celery-rabbitmq" %}
from tests import rabbitmq
{%- endif %}
from tests.celery_processes import RedisServer, WorkerProcess, redis_server, running_worker
{%- endif %}
from tests.probes import Recorder, probe_router
from tests.support import AUTH_HEADERS, LogCapture, make_settings


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio, as uvicorn does."""
    return "asyncio"


@pytest.fixture
def logs() -> LogCapture:
    return LogCapture()


@pytest.fixture
def app(logs: LogCapture) -> FastAPI:
    application = create_app(make_settings())
    logs.install()  # after create_app, which configured logging to stderr
    return application


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, headers=AUTH_HEADERS) as test_client:
        yield test_client


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def probe_app(app: FastAPI, recorder: Recorder) -> FastAPI:
    app.include_router(probe_router(recorder))
    return app


@pytest.fixture
def probe_client(probe_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(probe_app, headers=AUTH_HEADERS) as test_client:
        yield test_client
{%- if cookiecutter.job_backend != "inprocess" %}


{% if cookiecutter.job_backend == "celery-rabbitmq" -%}
# What the service's processes started by the tests read when a test names no broker
# (see tests/rabbitmq.py): never the developer's RabbitMQ, nor its default vhost.
os.environ["BROKER_URL"] = rabbitmq.NO_BROKER_URL


@pytest.fixture(scope="session", autouse=True)
def _rabbitmq_vhosts() -> Iterator[None]:
    """The tests' own RabbitMQ vhosts, deleted once the session ends."""
    yield
    rabbitmq.delete_vhosts()


{% endif -%}
@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis: `TEST_REDIS_URL` if set, else a `redis-server` of our own."""
    if url := os.environ.get("TEST_REDIS_URL"):
        {%- if cookiecutter.job_backend == "celery-rabbitmq" %}
        with rabbitmq.broker_of(url):
            yield url
        {%- else %}
        yield url
        {%- endif %}
        return
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture(scope="session")
def celery_worker(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """One real worker process for the job API tests, shared by the session."""
    with running_worker(redis_url, "api-tests", tmp_path_factory.mktemp("worker")) as worker:
        yield worker


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis for one test alone, which it may stop, freeze and restart."""
    with redis_server(tmp_path) as server:
        yield server
{%- endif %}
