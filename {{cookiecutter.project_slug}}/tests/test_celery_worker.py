"""Durability of the Celery path, with real worker processes and a real Redis that the
tests kill, stop and freeze. Each test prints how long recovery took."""

import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from {{ cookiecutter.package_name }}.factory import create_app
from {{ cookiecutter.package_name }}.jobs import celery_app
from tests.celery_processes import RedisServer, WorkerProcess, running_worker
from tests.support import AUTH_HEADERS, LogCapture, live_server, make_settings, wait_until

# Short limits so a dead worker's task is redelivered within seconds: the visibility
# timeout is 1.5 times the hard limit, and the sweep for abandoned tasks runs every
# second at this size.
FAST_REDELIVERY = {"JOB_TIME_LIMIT_SECONDS": "4"}
OUTAGE_BUDGET_SECONDS = 2.0


def final_state(http: httpx.Client, job_id: str, timeout: float, what: str) -> dict[str, Any]:
    """The job's state once it has ended, polled through the API."""

    def ended() -> dict[str, Any] | None:
        state = job_state(http, job_id)
        return state if state["status"] in ("succeeded", "failed") else None

    result: dict[str, Any] = wait_until(ended, timeout, what, interval=0.2)
    return result


def start_lines(worker: WorkerProcess, job_id: str) -> list[str]:
    return [m for m in worker.messages() if m.startswith(f"job {job_id} ") and "started" in m]


def started_by(worker: WorkerProcess, job_id: str) -> bool:
    return bool(start_lines(worker, job_id))


def succeeded_lines(worker: WorkerProcess, job_id: str) -> list[str]:
    return [m for m in worker.messages() if m == f"job {job_id} (build_report) succeeded"]


def job_state(http: httpx.Client, job_id: str) -> dict[str, Any]:
    response = http.get(f"/jobs/{job_id}")
    assert response.status_code == 200, response.text
    state: dict[str, Any] = response.json()
    return state


@pytest.fixture
def celery_api(private_redis: RedisServer, logs: LogCapture) -> Any:
    app = create_app(
        make_settings(jobs_backend="celery", redis_url=private_redis.url, job_time_limit_seconds=4)
    )
    logs.install()
    with (
        live_server(app) as url,
        httpx.Client(base_url=url, headers=AUTH_HEADERS, timeout=10) as http,
    ):
        yield http


def test_a_job_whose_worker_dies_is_finished_by_another_worker(
    private_redis: RedisServer, celery_api: httpx.Client, tmp_path: Path
) -> None:
    """SIGKILL the whole worker mid-job (a machine dying): the task was not acked, so
    Redis hands it to the other worker once the visibility timeout passes, and the
    job succeeds once, with one result."""
    with running_worker(private_redis.url, "first", tmp_path, FAST_REDELIVERY) as first:
        response = celery_api.post("/reports", json={"rows": 4, "simulate_seconds": 2.5})
        job_id = response.json()["id"]
        wait_until(lambda: started_by(first, job_id), 15, "the first worker to start the job")
        with running_worker(private_redis.url, "second", tmp_path, FAST_REDELIVERY) as second:
            assert job_state(celery_api, job_id)["status"] == "running"
            killed_at = time.monotonic()
            first.kill()
            final = final_state(celery_api, job_id, 60, "the second worker to finish the job")
            print(f"whole worker killed: job finished {time.monotonic() - killed_at:.1f}s later")
            assert final["status"] == "succeeded", final
            assert final["result"]["rows"] == 4
            assert started_by(second, job_id)
            assert succeeded_lines(first, job_id) == []
            assert len(succeeded_lines(second, job_id)) == 1


def test_a_job_whose_pool_process_is_killed_is_run_again_at_once(
    private_redis: RedisServer, celery_api: httpx.Client, tmp_path: Path
) -> None:
    """SIGKILL only the process running the task (what the OOM killer does): with
    `task_reject_on_worker_lost` the task goes straight back to the queue."""
    # The default time limits: a short hard limit can fire before the worker notices
    # its pool process is gone, and a time limit fails the job instead of re-running it.
    with running_worker(private_redis.url, "oom", tmp_path) as worker:
        job_id = celery_api.post("/reports", json={"rows": 4, "simulate_seconds": 2.0}).json()["id"]
        wait_until(lambda: started_by(worker, job_id), 15, "the worker to start the job")
        (pool_pid,) = worker.pool_pids()
        killed_at = time.monotonic()
        os.kill(pool_pid, signal.SIGKILL)
        final = final_state(celery_api, job_id, 30, "the job to be run again")
        print(f"pool process killed: job finished {time.monotonic() - killed_at:.1f}s later")
        assert final["status"] == "succeeded", final
        assert len(start_lines(worker, job_id)) == 2
        assert len(succeeded_lines(worker, job_id)) == 1


def assert_unavailable_fast(http: httpx.Client, outage: str) -> None:
    started = time.monotonic()
    response = http.post("/reports", json={"rows": 1})
    elapsed = time.monotonic() - started
    print(f"Redis {outage}: POST /reports answered {response.status_code} in {elapsed:.2f}s")
    assert response.status_code == 503, response.text
    assert response.json() == {"detail": "The job queue is unavailable; retry later."}
    assert elapsed < OUTAGE_BUDGET_SECONDS
    ready = http.get("/health/ready")
    assert ready.status_code == 503
    assert ready.json()["checks"]["redis"].startswith("unreachable")
    assert http.get("/health/live").status_code == 200


def test_redis_down_gives_a_fast_503_and_the_service_recovers_by_itself(
    private_redis: RedisServer, celery_api: httpx.Client, tmp_path: Path
) -> None:
    with running_worker(private_redis.url, "outage", tmp_path):
        assert celery_api.get("/health/ready").status_code == 200
        assert celery_api.post("/reports", json={"rows": 1}).status_code == 202

        private_redis.stop()  # refuses connections
        assert_unavailable_fast(celery_api, "refusing connections")
        private_redis.start()  # same port, empty
        private_redis.freeze()  # accepts connections, never answers
        assert_unavailable_fast(celery_api, "hung")

        private_redis.thaw()
        back_at = time.monotonic()
        wait_until(
            lambda: celery_api.post("/reports", json={"rows": 1}).status_code == 202,
            10,
            "POST /reports to work again",
        )
        wait_until(
            lambda: celery_api.get("/health/ready").status_code == 200,
            30,
            "the worker to reconnect",
            interval=0.5,
        )
        print(f"Redis back: ready again after {time.monotonic() - back_at:.1f}s")


def test_readiness_says_when_no_worker_answers(celery_api: httpx.Client) -> None:
    response = celery_api.get("/health/ready")
    assert response.status_code == 503
    assert response.json()["checks"] == {
        "startup": "ok",
        "redis": "ok",
        "worker": "no worker answered",
    }


def test_the_request_id_reaches_every_log_line_the_worker_writes_for_the_task(
    private_redis: RedisServer, celery_api: httpx.Client, tmp_path: Path
) -> None:
    with running_worker(private_redis.url, "trace", tmp_path) as worker:
        response = celery_api.post(
            "/reports", json={"rows": 2}, headers={"X-Request-ID": "trace-worker"}
        )
        job_id = response.json()["id"]
        wait_until(lambda: succeeded_lines(worker, job_id), 15, "the job to finish")
        task_lines = [
            r for r in worker.records() if job_id in r["message"] and "received" not in r["message"]
        ]
        assert {r["request_id"] for r in task_lines} == {"trace-worker"}, task_lines
        messages = [r["message"] for r in task_lines]
        assert f"job {job_id} (build_report) started, attempt 1" in messages
        trace_line = f"Task {celery_app.RUN_JOB_TASK}[{job_id}] succeeded"
        assert any(m.startswith(trace_line) for m in messages), messages
