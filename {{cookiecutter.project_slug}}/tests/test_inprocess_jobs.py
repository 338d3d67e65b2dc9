"""The in-process backend's lifecycle: shutdown and its stated limits."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio.to_thread
import httpx2 as httpx
import pytest
from fastapi import FastAPI

from {{ cookiecutter.package_name }}.factory import create_app
from tests.asgi import run_lifespan
from tests.support import (
    {%- if cookiecutter.use_bearer_auth %}
    API_TOKEN,
    {%- endif %}
    AUTH_HEADERS,
    PACKAGE,
    LogCapture,
    free_port,
    live_server,
    make_settings,
    wait_until,
    with_source_on_path,
)


def test_a_running_job_finishes_when_the_server_gets_sigterm(tmp_path: Path) -> None:
    """A real `uvicorn <package>.main:app` process: SIGTERM arrives while a job runs;
    uvicorn waits for it (up to `--timeout-graceful-shutdown`) and exits cleanly."""
    port = free_port()
    log_path = tmp_path / "server.log"
    env = {
        **with_source_on_path(os.environ),
        "JOBS_BACKEND": "inprocess",
        "LOG_FORMAT": "json",
        {%- if cookiecutter.use_bearer_auth %}
        "API_TOKEN": API_TOKEN,
        {%- endif %}
    }
    command = [
        sys.executable, "-m", "uvicorn", f"{PACKAGE}.main:app",
        "--host", "127.0.0.1", "--port", str(port), "--timeout-graceful-shutdown", "10",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        server = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=log)
    try:
        url = f"http://127.0.0.1:{port}"

        def serving() -> bool:
            try:
                return httpx.get(f"{url}/health/live", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(serving, 20, "uvicorn to serve", interval=0.1)
        response = httpx.post(
            f"{url}/reports", json={"rows": 4, "simulate_seconds": 1.5}, headers=AUTH_HEADERS
        )
        job_id = response.json()["id"]
        assert httpx.get(f"{url}/jobs/{job_id}", headers=AUTH_HEADERS).json()["status"] in (
            "queued",
            "running",
        )
        server.send_signal(signal.SIGTERM)
        # After its graceful shutdown uvicorn re-raises the signal it caught, so the
        # process ends "killed by SIGTERM" either way; the log shows what happened.
        assert server.wait(timeout=20) in (0, -signal.SIGTERM)
    finally:
        if server.poll() is None:
            server.kill()
    messages = [json.loads(line)["message"] for line in log_path.read_text().splitlines()]
    assert f"job {job_id} (build_report) succeeded" in messages
    assert messages.index(f"job {job_id} (build_report) succeeded") < messages.index(
        "service stopped"
    )


@pytest.mark.anyio
async def test_several_server_workers_are_warned_about_at_start_up(logs: LogCapture) -> None:
    app: FastAPI = create_app(make_settings(web_concurrency=4))
    logs.install()

    async def nothing() -> None:
        return None

    await run_lifespan(app, nothing)
    (warning,) = [r for r in logs.records() if r["level"] == "WARNING"]
    assert warning["message"].startswith("in-process jobs with 4 server workers")


def test_jobs_wait_for_a_slot_of_their_own_and_leave_the_threadpool_free() -> None:
    """Jobs beyond `INPROCESS_JOB_CONCURRENCY` wait, queued; running ones take no thread
    from the pool that sync endpoints and dependencies need, so a burst of long jobs
    cannot hold requests up."""
    app: FastAPI = create_app(make_settings(inprocess_job_concurrency=1))

    @app.get("/test/threadpool")
    async def threadpool() -> dict[str, float]:
        return {"borrowed": anyio.to_thread.current_default_thread_limiter().borrowed_tokens}

    with (
        live_server(app) as url,
        httpx.Client(base_url=url, headers=AUTH_HEADERS, timeout=10) as http,
    ):
        body = {"rows": 4, "simulate_seconds": 1.5}
        first, second = (http.post("/reports", json=body).json()["id"] for _ in range(2))

        def status(job_id: str) -> str:
            state: str = http.get(f"/jobs/{job_id}").json()["status"]
            return state

        wait_until(lambda: status(first) == "running", 5, "the first job to start")
        assert status(second) == "queued"
        assert http.get("/test/threadpool").json() == {"borrowed": 0}
        wait_until(lambda: status(second) == "succeeded", 10, "the second job to end")
        assert status(first) == "succeeded"
