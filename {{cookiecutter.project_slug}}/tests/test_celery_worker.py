"""Durability of the Celery path, with real worker processes and a real Redis that the
tests kill, stop and freeze. Each test prints how long recovery took."""

{% if cookiecutter.job_backend == "celery" -%}
import json
{% endif -%}
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
{%- if cookiecutter.job_backend == "celery" %}
import redis
{%- endif %}

from {{ cookiecutter.package_name }}.factory import create_app
from {{ cookiecutter.package_name }}.jobs import celery_app
{%- if cookiecutter.auth == "token" %}
from {{ cookiecutter.package_name }}.middleware import bearer_auth
{%- endif %}
{%- set test_modules = [] %}
{%- if cookiecutter.job_backend == "celery-rabbitmq" %}{% set _ = test_modules.append("rabbitmq") %}{% endif %}
{%- if cookiecutter.auth == "token" %}{% set _ = test_modules.append("support") %}{% endif %}
{%- if test_modules %}
from tests import {{ test_modules | join(", ") }}
{%- endif %}
from tests.celery_processes import RedisServer, WorkerProcess, redis_server, running_worker
from tests.support import AUTH_HEADERS, LogCapture, live_server, make_settings, wait_until

# Short limits so a dead worker's task is redelivered within seconds: the visibility
# timeout is 1.5 times the hard limit, and the sweep for abandoned tasks runs every
# second at this size.
FAST_REDELIVERY = {"JOB_TIME_LIMIT_SECONDS": "4"}
{%- if cookiecutter.job_backend == "celery-rabbitmq" %}
REDIS_VISIBILITY_SECONDS = 6  # what Redis as the broker would wait with that limit
{%- endif %}
OUTAGE_BUDGET_SECONDS = 2.0
{%- if cookiecutter.auth == "jwt" %}
# Who AUTH_HEADERS' token names: the `sub` of tests/support.py's issuer's token.
SUBJECT = "user-42"
{%- elif cookiecutter.auth == "token" %}
# Who AUTH_HEADERS' token names: its fingerprint, never the token.
SUBJECT = bearer_auth.fingerprint(support.API_TOKEN)
{%- endif %}


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


@contextmanager
def serving_api(redis: RedisServer, logs: LogCapture, **settings: Any) -> Iterator[httpx.Client]:
    """The API on the Celery backend, served by a real uvicorn, and a client for it."""
    app = create_app(make_settings(jobs_backend="celery", redis_url=redis.url, **settings))
    logs.install()
    with (
        live_server(app) as url,
        httpx.Client(base_url=url, headers=AUTH_HEADERS, timeout=10) as http,
    ):
        yield http


@pytest.fixture
def celery_api(private_redis: RedisServer, logs: LogCapture) -> Iterator[httpx.Client]:
    with serving_api(private_redis, logs, job_time_limit_seconds=4) as http:
        yield http


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis with an append-only file, restarted on the same data like a real one."""
    with redis_server(tmp_path / "redis", persistent=True) as server:
        yield server


def test_a_job_whose_worker_dies_is_finished_by_another_worker(
    private_redis: RedisServer, celery_api: httpx.Client, tmp_path: Path
) -> None:
    """SIGKILL the whole worker mid-job (a machine dying): the task was not acked, so
    {%- if cookiecutter.job_backend == "celery-rabbitmq" %}
    RabbitMQ hands it to the other worker as soon as the dead worker's connection
    closes (no visibility timeout to wait out), and the job succeeds once, with one
    {%- else %}
    Redis hands it to the other worker once the visibility timeout passes, and the
    job succeeds once, with one
    {%- endif %}
    result. Both workers are up before the job is submitted (a worker starting on a
    busy machine can take longer than the job)."""
    url = private_redis.url
    with (
        running_worker(url, "first", tmp_path, FAST_REDELIVERY) as first,
        running_worker(url, "second", tmp_path, FAST_REDELIVERY) as second,
    ):
        response = celery_api.post("/reports", json={"rows": 4, "simulate_seconds": 2.5})
        job_id = response.json()["id"]
        wait_until(
            lambda: started_by(first, job_id) or started_by(second, job_id),
            15,
            "a worker to start the job",
        )
        victim, survivor = (first, second) if started_by(first, job_id) else (second, first)
        assert job_state(celery_api, job_id)["status"] == "running"
        killed_at = time.monotonic()
        victim.kill()
        {%- if cookiecutter.job_backend == "celery-rabbitmq" %}
        wait_until(lambda: started_by(survivor, job_id), 60, "the other worker to start it")
        restarted_after = time.monotonic() - killed_at
        {%- endif %}
        final = final_state(celery_api, job_id, 60, "the other worker to finish the job")
        print(f"whole worker killed: job finished {time.monotonic() - killed_at:.1f}s later")
        {%- if cookiecutter.job_backend == "celery-rabbitmq" %}
        print(f"whole worker killed: the other worker started it {restarted_after:.1f}s later")
        # With Redis it would wait 1.5 x JOB_TIME_LIMIT_SECONDS (6 s here) to come back.
        assert restarted_after < REDIS_VISIBILITY_SECONDS, restarted_after
        {%- endif %}
        assert final["status"] == "succeeded", final
        assert final["result"]["rows"] == 4
        assert started_by(survivor, job_id)
        assert succeeded_lines(victim, job_id) == []
        assert len(succeeded_lines(survivor, job_id)) == 1


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


def test_jobs_submitted_together_are_each_queued_once_and_each_run(
    private_redis: RedisServer, celery_api: httpx.Client, tmp_path: Path
) -> None:
    """Submissions that arrive together share one pipeline to Redis (see
    `QueuePublisher`): every 202 leaves exactly one message and a queued state, and
    every job runs."""
    with ThreadPoolExecutor(16) as pool:
        responses = list(
            pool.map(lambda _: celery_api.post("/reports", json={"rows": 2}), range(48))
        )
    assert [r.status_code for r in responses] == [202] * 48
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 48
    {%- if cookiecutter.job_backend == "celery-rabbitmq" %}
    queued = rabbitmq.queued_task_ids(rabbitmq.broker_for(private_redis.url))
    {%- else %}
    client = redis.Redis.from_url(private_redis.url)
    queued = [json.loads(m)["headers"]["id"] for m in client.lrange("celery", 0, -1)]
    client.close()
    {%- endif %}
    assert sorted(queued) == sorted(ids)
    assert {job_state(celery_api, i)["status"] for i in ids} == {"queued"}
    with running_worker(private_redis.url, "batch", tmp_path):
        finals = [final_state(celery_api, i, 60, f"job {i} to end") for i in ids]
    assert {f["status"] for f in finals} == {"succeeded"}


def assert_unavailable_fast(http: httpx.Client, outage: str, down: str = "redis") -> None:
    """A submission gets its 503 within the budget while `down` (a readiness check's
    name) is out, readiness names it, and liveness stays 200."""
    started = time.monotonic()
    response = http.post("/reports", json={"rows": 1})
    elapsed = time.monotonic() - started
    print(f"{down} {outage}: POST /reports answered {response.status_code} in {elapsed:.2f}s")
    assert response.status_code == 503, response.text
    assert response.json() == {"detail": "The job queue is unavailable; retry later."}
    assert elapsed < OUTAGE_BUDGET_SECONDS
    ready = http.get("/health/ready")
    assert ready.status_code == 503
    checks = ready.json()["checks"]
    assert checks[down].startswith("unreachable"), checks
    {%- if cookiecutter.job_backend == "celery-rabbitmq" %}
    if down == "broker":
        assert checks["redis"] == "ok", checks  # each dependency on its own line
    {%- endif %}
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
{%- if cookiecutter.job_backend == "celery-rabbitmq" %}


def test_rabbitmq_down_gives_a_fast_503_and_the_service_recovers_by_itself(
    private_redis: RedisServer, logs: LogCapture, tmp_path: Path
) -> None:
    """RabbitMQ behind a relay the test cuts: refusing connections, then hung. Each
    submission gets its 503 within the budget and readiness names the broker; once it
    is back, the API and the worker carry on by themselves, and the job accepted before
    the outage runs."""
    proxy = rabbitmq.TcpProxy(rabbitmq.broker_for(private_redis.url))
    proxy.start()
    try:
        with (
            running_worker(private_redis.url, "broker-outage", tmp_path, {"BROKER_URL": proxy.url}),
            serving_api(private_redis, logs, broker_url=proxy.url) as http,
        ):
            assert http.get("/health/ready").status_code == 200
            before = http.post("/reports", json={"rows": 1, "simulate_seconds": 0.5})
            assert before.status_code == 202, before.text

            proxy.stop()  # refuses connections, and the open ones are reset
            assert_unavailable_fast(http, "refusing connections", down="broker")
            proxy.start()
            proxy.freeze()  # accepts connections, never answers
            assert_unavailable_fast(http, "hung", down="broker")

            proxy.thaw()
            back_at = time.monotonic()
            wait_until(
                lambda: http.post("/reports", json={"rows": 1}).status_code == 202,
                10,
                "POST /reports to work again",
                interval=0.2,
            )
            print(f"RabbitMQ back: first 202 after {time.monotonic() - back_at:.2f}s")
            final = final_state(http, before.json()["id"], 60, "the job from before the outage")
            assert final["status"] == "succeeded", final
            wait_until(
                lambda: http.get("/health/ready").status_code == 200,
                30,
                "readiness to recover",
                interval=0.5,
            )
    finally:
        proxy.stop()
{%- endif %}


def test_readiness_says_when_no_worker_answers(celery_api: httpx.Client) -> None:
    response = celery_api.get("/health/ready")
    assert response.status_code == 503
    assert response.json()["checks"] == {
        "startup": "ok",
        {%- if cookiecutter.job_backend == "celery-rabbitmq" %}
        "broker": "ok",
        {%- endif %}
        "redis": "ok",
        "worker": "no worker answered",
    }


def test_the_request_id{% if cookiecutter.auth != "none" %}_and_subject_reach{% else %}_reaches{% endif %}_every_log_line_the_worker_writes_for_the_task(
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
        {%- if cookiecutter.auth != "none" %}
        assert {r.get("subject") for r in task_lines} == {SUBJECT}, task_lines
        {%- endif %}
        messages = [r["message"] for r in task_lines]
        assert f"job {job_id} (build_report) started, attempt 1" in messages
        trace_line = f"Task {celery_app.RUN_JOB_TASK}[{job_id}] succeeded"
        assert any(m.startswith(trace_line) for m in messages), messages


# A hard limit well above an outage, so that waiting out Redis never hits it.
OUTAGE_WORKER_ENV = {"JOB_TIME_LIMIT_SECONDS": "30"}


def answers_while_frozen(http: httpx.Client, path: str, method: str = "GET") -> float:
    started = time.monotonic()
    response = http.request(method, path, json={"rows": 1} if method == "POST" else None)
    elapsed = time.monotonic() - started
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/json"
    return elapsed


@pytest.mark.parametrize("outage", ["stopped 3s, restarted on its data", "frozen 10s"])
def test_no_running_job_fails_when_redis_goes_away_mid_job(
    outage: str, persistent_redis: RedisServer, logs: LogCapture, tmp_path: Path
) -> None:
    """Four jobs running on two workers and four waiting when Redis goes away: every
    one of them succeeds once Redis is back. Their progress updates fail meanwhile and
    are skipped; a job that ends during the outage stores its result when Redis
    returns (before, the failed progress write was retried, the retry could not be
    published, and Celery failed the job for good)."""
    url = persistent_redis.url
    with (
        serving_api(persistent_redis, logs) as api,
        running_worker(url, "left", tmp_path, OUTAGE_WORKER_ENV, concurrency=2) as left,
        running_worker(url, "right", tmp_path, OUTAGE_WORKER_ENV, concurrency=2) as right,
    ):
        workers = (left, right)
        report = {"rows": 40, "simulate_seconds": 4}
        ids = [api.post("/reports", json=report).json()["id"] for _ in range(8)]

        def running() -> list[str]:
            return [i for i in ids if any(started_by(w, i) for w in workers)]

        wait_until(lambda: len(running()) >= 4, 30, "four jobs to be running")
        was_running = running()
        if outage.startswith("stopped"):
            persistent_redis.stop()
            time.sleep(3)
            persistent_redis.start()
        else:
            persistent_redis.freeze()
            time.sleep(10)
            persistent_redis.thaw()
        back_at = time.monotonic()
        # A thawed Redis first works through what piled up (four workers' retries): on a
        # busy machine the API's first reads can still pass its deadline and get a 503.
        # It must recover by itself, within a bound, before the jobs are followed.
        wait_until(
            lambda: api.get(f"/jobs/{ids[0]}").status_code == 200, 30, "the API to read jobs"
        )
        finals = {i: final_state(api, i, 120, f"job {i} to end") for i in ids}
        print(
            f"Redis {outage}: {len(was_running)} jobs were running; all 8 ended "
            f"{time.monotonic() - back_at:.1f}s after Redis was back"
        )
        failed = {i: s for i, s in finals.items() if s["status"] != "succeeded"}
        assert failed == {}, failed
        assert all(s["result"]["rows"] == 40 for s in finals.values())
        for job_id in was_running:
            assert sum(len(succeeded_lines(w, job_id)) for w in workers) >= 1


def test_every_request_gives_up_at_one_deadline_while_redis_is_frozen(
    celery_api: httpx.Client, private_redis: RedisServer
) -> None:
    """A request makes several Redis calls, each with its own 1 s timeout: a frozen
    Redis used to cost `POST /reports` up to 3 s. Now all of a request's Redis work
    shares one deadline (JOB_BACKEND_DEADLINE_SECONDS, 1.5 s by default), then 503,
    even with requests queueing for the client threads."""
    job_id = celery_api.post("/reports", json={"rows": 1}).json()["id"]
    private_redis.freeze()
    try:
        requests = [("POST", "/reports"), ("GET", f"/jobs/{job_id}"), ("GET", "/health/ready")]
        with ThreadPoolExecutor(12) as pool:
            timings = list(
                pool.map(
                    lambda request: answers_while_frozen(celery_api, request[1], request[0]),
                    requests * 4,
                )
            )
    finally:
        private_redis.thaw()
    print(f"Redis frozen: 12 requests answered in {min(timings):.2f}-{max(timings):.2f}s")
    assert max(timings) < OUTAGE_BUDGET_SECONDS


def test_readiness_answers_as_soon_as_one_worker_does(
    celery_api: httpx.Client, private_redis: RedisServer, tmp_path: Path
) -> None:
    """The worker ping returns at the first reply: it no longer waits out its whole
    timeout (1 s) on every probe of a healthy service."""
    with running_worker(private_redis.url, "prompt", tmp_path):
        celery_api.get("/health/ready")  # connections warm
        started = time.monotonic()
        response = celery_api.get("/health/ready")
        elapsed = time.monotonic() - started
    print(f"readiness with a worker up: {elapsed * 1000:.0f} ms")
    assert response.status_code == 200, response.text
    assert elapsed < celery_app.REDIS_TIMEOUT_SECONDS


def test_readiness_and_start_up_warn_when_redis_keeps_nothing(
    private_redis: RedisServer, persistent_redis: RedisServer, logs: LogCapture, tmp_path: Path
) -> None:
    """Without persistence, a Redis restart forgets every queued job: their ids answer
    404 and they never run. The service cannot prevent it, so it says so."""
    warning = "Redis has no persistence"
    with serving_api(private_redis, logs) as volatile:
        assert any(m.startswith(warning) for m in logs.messages())
        with running_worker(private_redis.url, "volatile", tmp_path):
            body = volatile.get("/health/ready").json()
        assert body["status"] == "ready"
        assert any(w.startswith(warning) for w in body["warnings"])
    logs.clear()
    with (
        serving_api(persistent_redis, logs) as durable,
        running_worker(persistent_redis.url, "durable", tmp_path),
    ):
        body = durable.get("/health/ready").json()
        assert body["status"] == "ready"
        assert body["warnings"] == []
        assert not any(m.startswith(warning) for m in logs.messages())


def test_a_failed_job_tells_clients_what_failed_without_internal_addresses(
    celery_api: httpx.Client, private_redis: RedisServer
) -> None:
    """A job that failed on a lost connection stores the error with Redis's host and
    port in it; clients read the kind of error, and the worker's log keeps the text."""
    import redis

    job_id = celery_api.post("/reports", json={"rows": 1}).json()["id"]  # no worker: queued
    settings = make_settings(jobs_backend="celery", redis_url=private_redis.url)
    app = celery_app.create_celery_app(settings)
    internal = redis.ConnectionError("Error 111 connecting to 10.0.3.7:6379. Connection refused.")
    app.backend.mark_as_failure(job_id, internal)
    state = job_state(celery_api, job_id)
    assert state["status"] == "failed"
    assert state["error"] == "ConnectionError: a service the job needs could not be reached"
    assert "10.0.3.7" not in celery_api.get(f"/jobs/{job_id}").text


def test_a_late_progress_update_never_replaces_a_finished_job(
    celery_api: httpx.Client, private_redis: RedisServer
) -> None:
    """A worker that froze mid-job (a hung host) resumes after another worker re-ran the
    job to its end: its next progress update must leave the finished state as it is (the
    template's scale-out test caught it turning a succeeded job back into running)."""
    settings = make_settings(jobs_backend="celery", redis_url=private_redis.url)
    store = celery_app.create_celery_app(settings, worker=True).backend
    assert isinstance(store, celery_app.PollingRedisBackend)
    running, finished, failed = (
        celery_api.post("/reports", json={"rows": 1}).json()["id"]  # no worker: queued
        for _ in range(3)
    )
    store.mark_as_done(finished, {"rows": 1})
    store.mark_as_failure(failed, ValueError("bad rows"))
    for job_id in (running, finished, failed):
        celery_app.write_state(store, job_id, celery_app.PROGRESS, 40, expires=60)

    assert job_state(celery_api, running)["status"] == "running"
    assert job_state(celery_api, running)["progress"] == 40
    done = job_state(celery_api, finished)
    assert (done["status"], done["progress"], done["result"]) == ("succeeded", 100, {"rows": 1})
    assert job_state(celery_api, failed)["status"] == "failed"
