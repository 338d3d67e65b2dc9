"""Cancel and retry (`DELETE /jobs/{id}`, `POST /jobs/{id}/retry`): the same tests on
every backend, against a real server
{%- if cookiecutter.job_backend != "inprocess" %} and, for Celery, a real worker on a real Redis;
then what only Celery does: terminating a job that ignores its cancel, and never running a
cancelled job again, after a worker restart or a worker's crash
{%- endif %}."""

{% if cookiecutter.job_backend != "inprocess" -%}
import os
{% endif -%}
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
{%- if cookiecutter.job_backend != "inprocess" %}
from contextlib import contextmanager
{%- endif %}
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from {{ cookiecutter.package_name }}.factory import create_app
from tests import cancellable_jobs, probes  # cancellable_jobs registers the tests' jobs
{%- if cookiecutter.job_backend != "inprocess" %}
from tests.celery_processes import RedisServer, WorkerProcess, running_worker
{%- endif %}
from tests.support import (
    AUTH_HEADERS,
{%- if cookiecutter.job_backend != "inprocess" %}
    SOURCE_ROOT,
{%- endif %}
    LogCapture,
    live_server,
    make_settings,
    wait_until,
)

JOB_BACKENDS = ["inprocess"{% if cookiecutter.job_backend != "inprocess" %}, "celery"{% endif %}]
FINAL = {"succeeded", "failed", "cancelled"}
# Four rows of synthetic amounts (see jobs/reports.py).
FOUR_ROW_TOTAL = 17514
{%- if cookiecutter.job_backend != "inprocess" %}
# A worker that imports `tests.cancellable_jobs`: the project root beside the source.
TEST_JOBS = cancellable_jobs.__name__
WITH_TEST_JOBS = {"PYTHONPATH": os.pathsep.join([str(SOURCE_ROOT), str(SOURCE_ROOT.parent)])}
{%- endif %}


@dataclass
class ControlApi:
    http: httpx.Client
    backend: str
    # The log lines written where the jobs run: this process, or the worker.
    job_log: Callable[[], list[dict[str, Any]]]

    def submit(self, name: str, **params: Any) -> str:
        response = self.http.post(f"/test/jobs/{name}", json=params)
        assert response.status_code == 202, response.text
        job_id: str = response.json()["id"]
        return job_id

    def report(self, rows: int = 4) -> str:
        response = self.http.post("/reports", json={"rows": rows})
        assert response.status_code == 202, response.text
        job_id: str = response.json()["id"]
        return job_id

    def state(self, job_id: str) -> dict[str, Any]:
        response = self.http.get(f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        state: dict[str, Any] = response.json()
        return state

    def wait_for(self, job_id: str, statuses: set[str], timeout: float = 30) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            state = self.state(job_id)
            return state if state["status"] in statuses else None

        found: dict[str, Any] = wait_until(reached, timeout, f"job {job_id} in {statuses}")
        return found

    def messages(self, job_id: str) -> list[str]:
        return [r["message"] for r in self.job_log() if f"job {job_id} " in r["message"]]

    def started(self, job_id: str) -> bool:
        return any(" started" in m and "before it started" not in m for m in self.messages(job_id))
{%- if cookiecutter.job_backend != "inprocess" %}


@pytest.fixture(scope="module")
def control_worker(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """One worker process, one job at a time (so a second job waits, queued), that
    knows the tests' jobs."""
    workdir = tmp_path_factory.mktemp("control-worker")
    with running_worker(redis_url, "control", workdir, WITH_TEST_JOBS, include=TEST_JOBS) as worker:
        yield worker
{%- endif %}


@pytest.fixture(params=JOB_BACKENDS)
def control_api(request: pytest.FixtureRequest, logs: LogCapture) -> Iterator[ControlApi]:
    # One job at a time on either backend: a second one waits, queued.
    overrides: dict[str, Any] = {"jobs_backend": request.param, "inprocess_job_concurrency": 1}
    job_log = logs.records
    {%- if cookiecutter.job_backend != "inprocess" %}
    if request.param == "celery":
        worker = request.getfixturevalue("control_worker")
        overrides["redis_url"] = worker.redis_url
        job_log = worker.records
    {%- endif %}
    app = create_app(make_settings(**overrides))
    logs.install()
    app.include_router(probes.job_router())
    with (
        live_server(app) as url,
        httpx.Client(base_url=url, headers=AUTH_HEADERS, timeout=10) as http,
    ):
        yield ControlApi(http, request.param, job_log)


def test_a_queued_job_cancelled_never_starts(control_api: ControlApi, tmp_path: Path) -> None:
    blocker = control_api.submit("tidy", seconds=30, marker=str(tmp_path / "blocker"))
    control_api.wait_for(blocker, {"running"})
    waiting = control_api.report()
    assert control_api.state(waiting)["status"] == "queued"

    response = control_api.http.delete(f"/jobs/{waiting}")
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "cancelled"
    assert response.json()["id"] == waiting

    # Free the slot: the cancelled job's turn comes, and it is skipped.
    assert control_api.http.delete(f"/jobs/{blocker}").status_code == 202
    control_api.wait_for(blocker, {"cancelled"})
    wait_until(
        lambda: any("cancelled before it started" in m for m in control_api.messages(waiting)),
        30,
        "the cancelled job's turn",
    )
    final = control_api.state(waiting)
    assert final["status"] == "cancelled"
    assert final["result"] is None
    assert not control_api.started(waiting), control_api.messages(waiting)


def test_a_running_job_stops_at_its_next_progress_report_after_cleaning_up(
    control_api: ControlApi, tmp_path: Path
) -> None:
    marker = tmp_path / "cleaned"
    job_id = control_api.submit("tidy", seconds=30, marker=str(marker))
    control_api.wait_for(job_id, {"running"})

    asked_at = time.monotonic()
    response = control_api.http.delete(f"/jobs/{job_id}")
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "running"  # asked to stop; not stopped yet

    final = control_api.wait_for(job_id, {"succeeded", "failed", "cancelled"}, timeout=10)
    took = time.monotonic() - asked_at
    print(f"{control_api.backend}: a running job stopped {took:.2f}s after its cancel")
    assert final["status"] == "cancelled", final
    assert final["result"] is None
    assert final["error"] is None
    assert final["progress"] < 100
    assert marker.read_text() == "cleaned up"  # its own clean-up ran
    # It reports each tick (0.1 s): stopped within a few, nowhere near its 30 s.
    assert took < 50 * cancellable_jobs.TICK_SECONDS
    wait_until(
        lambda: any("cancelled" in m for m in control_api.messages(job_id)),
        5,
        "the job's cancelled line",
    )


def test_cancelling_a_finished_job_is_a_409_with_its_state(control_api: ControlApi) -> None:
    job_id = control_api.report()
    done = control_api.wait_for(job_id, FINAL)
    assert done["status"] == "succeeded"

    response = control_api.http.delete(f"/jobs/{job_id}")
    assert response.status_code == 409
    body = response.json()
    assert body["job"] == done
    assert "succeeded" in body["detail"]
    assert control_api.state(job_id) == done  # unchanged


def test_cancelling_a_job_twice_is_a_409_the_second_time(
    control_api: ControlApi, tmp_path: Path
) -> None:
    """A cancelled job has ended: the second cancel finds nothing to stop."""
    job_id = control_api.submit("tidy", seconds=30, marker=str(tmp_path / "blocker"))
    control_api.wait_for(job_id, {"running"})
    waiting = control_api.report()
    assert control_api.http.delete(f"/jobs/{waiting}").status_code == 202
    second = control_api.http.delete(f"/jobs/{waiting}")
    assert second.status_code == 409
    assert second.json()["job"]["status"] == "cancelled"
    assert control_api.http.delete(f"/jobs/{job_id}").status_code == 202
    assert control_api.wait_for(job_id, FINAL)["status"] == "cancelled"


@pytest.mark.parametrize("job_id", ["0123456789abcdef0123456789abcdef", "not-a-job"])
def test_cancelling_or_retrying_an_unknown_id_is_a_404(
    control_api: ControlApi, job_id: str
) -> None:
    for response in (
        control_api.http.delete(f"/jobs/{job_id}"),
        control_api.http.post(f"/jobs/{job_id}/retry"),
    ):
        assert response.status_code == 404
        assert response.json() == {"detail": "No job with this id"}


def test_retrying_a_failed_job_makes_a_new_job_that_the_old_one_names(
    control_api: ControlApi,
) -> None:
    failed_id = control_api.submit("build_report", rows=0)  # refused by the job itself
    failed = control_api.wait_for(failed_id, FINAL)
    assert failed["status"] == "failed"

    response = control_api.http.post(
        f"/jobs/{failed_id}/retry", headers={"X-Request-ID": "trace-retry"}
    )
    assert response.status_code == 202, response.text
    new_id = response.json()["id"]
    assert new_id != failed_id
    assert response.json() == {"id": new_id, "status": "queued"}
    assert response.headers["location"] == f"/jobs/{new_id}"
    assert control_api.state(failed_id) == {**failed, "retried_as": new_id}

    # The same params: it fails the same way, under the retrying request's id.
    again = control_api.wait_for(new_id, FINAL)
    assert again["status"] == "failed"
    assert again["error"] == failed["error"]
    assert again["retried_as"] is None
    records = [r for r in control_api.job_log() if f"job {new_id} " in r["message"]]
    assert records
    assert {r.get("request_id") for r in records} == {"trace-retry"}

    # Retried once: a second retry of the old job is refused, naming the first.
    second = control_api.http.post(f"/jobs/{failed_id}/retry")
    assert second.status_code == 409
    assert new_id in second.json()["detail"]


def test_retrying_a_cancelled_job_runs_it_with_the_same_parameters(
    control_api: ControlApi, tmp_path: Path
) -> None:
    blocker = control_api.submit("tidy", seconds=30, marker=str(tmp_path / "blocker"))
    control_api.wait_for(blocker, {"running"})
    cancelled = control_api.report(rows=4)
    assert control_api.http.delete(f"/jobs/{cancelled}").status_code == 202
    assert control_api.http.delete(f"/jobs/{blocker}").status_code == 202

    response = control_api.http.post(f"/jobs/{cancelled}/retry")
    assert response.status_code == 202, response.text
    final = control_api.wait_for(response.json()["id"], FINAL)
    assert final["status"] == "succeeded"
    assert final["result"]["rows"] == 4
    assert final["result"]["total_cents"] == FOUR_ROW_TOTAL


def test_retrying_a_succeeded_or_running_job_is_a_409(
    control_api: ControlApi, tmp_path: Path
) -> None:
    done = control_api.report()
    assert control_api.wait_for(done, FINAL)["status"] == "succeeded"
    response = control_api.http.post(f"/jobs/{done}/retry")
    assert response.status_code == 409
    assert response.json()["job"]["status"] == "succeeded"
    assert control_api.state(done)["retried_as"] is None

    running = control_api.submit("tidy", seconds=30, marker=str(tmp_path / "m"))
    control_api.wait_for(running, {"running"})
    refused = control_api.http.post(f"/jobs/{running}/retry")
    assert refused.status_code == 409
    assert refused.json()["job"]["status"] == "running"
    assert control_api.http.delete(f"/jobs/{running}").status_code == 202
    control_api.wait_for(running, FINAL)


def test_ten_retries_at_once_make_one_new_job(control_api: ControlApi) -> None:
    failed_id = control_api.submit("build_report", rows=0)
    assert control_api.wait_for(failed_id, FINAL)["status"] == "failed"
    with ThreadPoolExecutor(10) as pool:
        responses = list(
            pool.map(lambda _: control_api.http.post(f"/jobs/{failed_id}/retry"), range(10))
        )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [202] + [409] * 9, [r.text for r in responses]
    (accepted,) = [r for r in responses if r.status_code == 202]
    assert control_api.state(failed_id)["retried_as"] == accepted.json()["id"]
    control_api.wait_for(accepted.json()["id"], FINAL)
{%- if cookiecutter.job_backend != "inprocess" %}


@contextmanager
def celery_api(redis_url: str, logs: LogCapture, **settings: Any) -> Iterator[httpx.Client]:
    """The API on the Celery backend, served by a real uvicorn, and a client for it."""
    app = create_app(make_settings(jobs_backend="celery", redis_url=redis_url, **settings))
    logs.install()
    app.include_router(probes.job_router())
    with (
        live_server(app) as url,
        httpx.Client(base_url=url, headers=AUTH_HEADERS, timeout=10) as http,
    ):
        yield http


def worker_api(http: httpx.Client, *workers: WorkerProcess) -> ControlApi:
    return ControlApi(http, "celery", lambda: [r for w in workers for r in w.records()])


def test_a_celery_job_that_ignores_its_cancel_is_terminated_after_the_grace_period(
    private_redis: RedisServer, logs: LogCapture, tmp_path: Path
) -> None:
    """A job that never reports progress never sees its cancel: after
    JOB_CANCEL_GRACE_SECONDS its pool process is killed, the job ends `cancelled`
    saying so, and the worker goes on with the next job in a new pool process."""
    url = private_redis.url
    with (
        running_worker(url, "stubborn", tmp_path, WITH_TEST_JOBS, include=TEST_JOBS) as worker,
        celery_api(url, logs, job_cancel_grace_seconds=1) as http,
    ):
        api = worker_api(http, worker)
        job_id = api.submit("stubborn", seconds=30)
        api.wait_for(job_id, {"running"})
        pool_before = worker.pool_pids()
        asked_at = time.monotonic()
        assert http.delete(f"/jobs/{job_id}").json()["status"] == "running"
        final = api.wait_for(job_id, FINAL, timeout=15)
        took = time.monotonic() - asked_at
        print(f"a job ignoring its cancel (grace 1 s) ended {took:.2f}s after it")
        assert final["status"] == "cancelled", final
        assert "JOB_CANCEL_GRACE_SECONDS" in final["error"]
        assert 1 <= took < 10  # the grace period, then the kill; the job had 30 s to go
        assert any("terminating it" in m for m in logs.messages())

        # The pool process was replaced, and the worker runs the next job.
        next_job = api.report()
        assert api.wait_for(next_job, FINAL)["status"] == "succeeded"
        assert worker.pool_pids() != pool_before
        assert not any("succeeded" in m for m in api.messages(job_id))

        # What it ran survived the kill (the worker's main process stored REVOKED
        # with the task's arguments): it can be retried, and cancelled again.
        retried = http.post(f"/jobs/{job_id}/retry")
        assert retried.status_code == 202, retried.text
        again = retried.json()["id"]
        assert http.delete(f"/jobs/{again}").status_code == 202
        assert api.wait_for(again, FINAL, timeout=15)["status"] == "cancelled"


def test_a_cancelled_job_is_not_run_again_after_its_worker_is_killed(
    private_redis: RedisServer, logs: LogCapture, tmp_path: Path
) -> None:
    """SIGKILL the worker running a cancelled job before the job saw its cancel: Redis
    redelivers the unacknowledged task to the other worker after the visibility
    timeout, whose revoke list (in memory) never heard of it; the flag in the result
    store stops it before it starts."""
    url = private_redis.url
    # The visibility timeout is 1.5 times the limit, and the sweep runs each second.
    fast = {"JOB_TIME_LIMIT_SECONDS": "4", **WITH_TEST_JOBS}
    with (
        running_worker(url, "first", tmp_path, fast, include=TEST_JOBS) as first,
        running_worker(url, "second", tmp_path, fast, include=TEST_JOBS) as second,
        celery_api(url, logs, job_time_limit_seconds=4, job_cancel_grace_seconds=60) as http,
    ):
        both = worker_api(http, first, second)
        job_id = both.submit("stubborn", seconds=2.5)  # within the soft limit, 3 s
        both.wait_for(job_id, {"running"})
        victim, survivor = (
            (first, second) if worker_api(http, first).started(job_id) else (second, first)
        )
        assert http.delete(f"/jobs/{job_id}").status_code == 202
        killed_at = time.monotonic()
        victim.kill()
        again = worker_api(http, survivor)
        wait_until(
            lambda: any("cancelled before it started" in m for m in again.messages(job_id)),
            60,
            "the other worker to get the task again",
        )
        print(f"cancelled job redelivered and skipped {time.monotonic() - killed_at:.1f}s later")
        assert not again.started(job_id), again.messages(job_id)
        assert both.state(job_id)["status"] == "cancelled"


def test_a_cancel_outlives_the_workers_a_job_queued_while_none_ran_never_starts(
    private_redis: RedisServer, logs: LogCapture, tmp_path: Path
) -> None:
    """Celery's revoke list lives in the workers' memory; the cancel flag lives in
    Redis. Cancelled with no worker running, the job is skipped by the worker that
    starts afterwards."""
    with celery_api(private_redis.url, logs) as http:
        api = ControlApi(http, "celery", list)
        job_id = api.report()
        assert http.delete(f"/jobs/{job_id}").json()["status"] == "cancelled"
        with running_worker(private_redis.url, "late", tmp_path) as worker:
            api.job_log = worker.records
            wait_until(
                lambda: any("cancelled before it started" in m for m in api.messages(job_id)),
                30,
                "the worker to take the job",
            )
            assert not api.started(job_id)
        assert api.state(job_id)["status"] == "cancelled"


def test_a_cancelled_job_is_not_retried_by_celery_after_a_transient_error(
    control_worker: WorkerProcess, logs: LogCapture, tmp_path: Path
) -> None:
    """A job that turns its cancel into a transient error (what `autoretry_for`
    retries) still ends cancelled, after one attempt."""
    with celery_api(control_worker.redis_url, logs) as http:
        api = worker_api(http, control_worker)
        job_id = api.submit("flaky_when_cancelled", seconds=30)
        api.wait_for(job_id, {"running"})
        assert http.delete(f"/jobs/{job_id}").status_code == 202
        assert api.wait_for(job_id, FINAL, timeout=10)["status"] == "cancelled"
        # Ended on its first attempt, by the cancel: no retry was scheduled (Celery
        # logs "Task ...[id] retry: Retry in 1s" when one is).
        wait_until(
            lambda: any("cancelled after a transient error" in m for m in api.messages(job_id)),
            5,
            "the job's cancelled line",
        )
        about_it = [r["message"] for r in control_worker.records() if job_id in r["message"]]
        assert not any("retry" in m.lower() for m in about_it), about_it
        starts = [m for m in api.messages(job_id) if "started, attempt" in m]
        assert starts == [f"job {job_id} (flaky_when_cancelled) started, attempt 1"]
{%- endif %}
