from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from {{ cookiecutter.package_name }}.factory import create_app
from tests.probes import Recorder, probe_router
from tests.support import AUTH_HEADERS, LogCapture, make_settings


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
