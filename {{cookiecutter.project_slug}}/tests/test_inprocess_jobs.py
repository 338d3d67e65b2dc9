"""The in-process backend's lifecycle: shutdown and its stated limits."""

import threading
import time

import httpx2 as httpx
import pytest
import uvicorn
from fastapi import FastAPI

from {{ cookiecutter.package_name }}.factory import create_app
from {{ cookiecutter.package_name }}.jobs import inprocess
from tests.asgi import run_lifespan
from tests.support import AUTH_HEADERS, LogCapture, make_settings


def test_a_running_job_finishes_during_a_graceful_shutdown(logs: LogCapture) -> None:
    """uvicorn, told to stop (what SIGTERM does), waits for running requests and their
    background tasks up to `--timeout-graceful-shutdown`: the job completes."""
    app = create_app(make_settings())
    logs.install()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, timeout_graceful_shutdown=10)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    response = httpx.post(
        f"http://127.0.0.1:{port}/reports",
        json={"rows": 4, "simulate_seconds": 1.0},
        headers=AUTH_HEADERS,
    )
    job_id = response.json()["id"]
    backend = app.state.job_backend
    assert isinstance(backend, inprocess.InProcessBackend)
    state = backend.store.get(job_id)
    assert state is not None
    assert state.status != "succeeded"  # still running when shutdown begins

    server.should_exit = True
    thread.join(timeout=15)
    assert not thread.is_alive()
    finished = backend.store.get(job_id)
    assert finished is not None
    assert finished.status == "succeeded"


@pytest.mark.anyio
async def test_several_server_workers_are_warned_about_at_start_up(logs: LogCapture) -> None:
    app: FastAPI = create_app(make_settings(web_concurrency=4))
    logs.install()

    async def nothing() -> None:
        return None

    await run_lifespan(app, nothing)
    (warning,) = [r for r in logs.records() if r["level"] == "WARNING"]
    assert warning["message"].startswith("in-process jobs with 4 server workers")
