{% if cookiecutter.job_backend != "inprocess" -%}
"""Admission of job submissions, on every backend, against a real server (and, for
Celery, a real Redis and a real worker): `Idempotency-Key` makes a submission safe to
send again, and `MAX_QUEUED_JOBS` refuses work the service cannot take (429)."""
{%- else -%}
"""Admission of job submissions, against a real server: `Idempotency-Key` makes a
submission safe to send again, and `MAX_QUEUED_JOBS` refuses work the service cannot
take (429)."""
{%- endif %}

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
{%- if cookiecutter.job_backend != "inprocess" %}
from contextlib import ExitStack
{%- endif %}
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
{%- if cookiecutter.job_backend != "inprocess" %}
import redis
{%- endif %}

from {{ cookiecutter.package_name }}.factory import create_app
from {{ cookiecutter.package_name }}.jobs.inprocess import (
    InMemoryJobStore,
)
from {{ cookiecutter.package_name }}.jobs.queue import (
    idempotency_claim,
)
{%- if cookiecutter.job_backend != "inprocess" %}
{%- if cookiecutter.job_backend == "celery-rabbitmq" %}
from tests import rabbitmq
{%- endif %}
from tests.celery_processes import RedisServer, running_worker
{%- endif %}
from tests.support import AUTH_HEADERS, LogCapture, live_server, make_settings, wait_until

JOB_BACKENDS = ["inprocess"{% if cookiecutter.job_backend != "inprocess" %}, "celery"{% endif %}]
MAX_QUEUED = 5
CONCURRENT = 20
REPORT = {"rows": 3, "simulate_seconds": 0}


@dataclass
class AdmissionApi:
    """A served API with `MAX_QUEUED_JOBS=5` whose jobs wait until `let_jobs_run()`:
    {%- if cookiecutter.job_backend != "inprocess" %}
    on Celery no worker runs yet; in-process, the only job slot is held by a job that
    lasts 2 s and ends by itself."""
    {%- else %}
    the only job slot is held by a job that lasts 2 s and ends by itself."""
    {%- endif %}

    http: httpx.Client
    backend: str
    waiting: Callable[[], int]  # jobs queued, not started, as the backend counts them
    jobs_made: Callable[[], int]  # jobs the backend holds, whatever their state
    let_jobs_run: Callable[[], None]

    def post(self, body: dict[str, Any] = REPORT, key: str | None = None) -> httpx.Response:
        headers = {"Idempotency-Key": key} if key is not None else {}
        return self.http.post("/reports", json=body, headers=headers)

    def status(self, job_id: str) -> str:
        response = self.http.get(f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        status: str = response.json()["status"]
        return status


@pytest.fixture(params=JOB_BACKENDS)
def admission_api(
    request: pytest.FixtureRequest, logs: LogCapture, tmp_path: Path
) -> Iterator[AdmissionApi]:
    # In-process, one slot: the job the fixture starts holds it.
    settings: dict[str, Any] = {"max_queued_jobs": MAX_QUEUED, "inprocess_job_concurrency": 1}
    {%- if cookiecutter.job_backend != "inprocess" %}
    if request.param == "celery":
        # A Redis of this test's own: it counts every message and key in it.
        server: RedisServer = request.getfixturevalue("private_redis")
        settings.update(jobs_backend="celery", redis_url=server.url)
    {%- endif %}
    app = create_app(make_settings(**settings))
    logs.install()
    with (
        {%- if cookiecutter.job_backend != "inprocess" %}
        ExitStack() as stack,
        {%- endif %}
        live_server(app) as url,
        httpx.Client(base_url=url, headers=AUTH_HEADERS, timeout=10) as http,
    ):
        {%- if cookiecutter.job_backend != "inprocess" %}
        if request.param == "celery":
            client = stack.enter_context(redis.Redis.from_url(server.url))

            def start_worker() -> None:
                stack.enter_context(running_worker(server.url, "admission", tmp_path))

            def jobs_in_redis() -> int:
                return len(client.keys("celery-task-meta-*"))
            {%- if cookiecutter.job_backend == "celery-rabbitmq" %}

            broker = rabbitmq.broker_for(server.url)
            yield AdmissionApi(
                http, "celery", lambda: rabbitmq.queued_count(broker), jobs_in_redis, start_worker
            )
            {%- else %}

            yield AdmissionApi(
                http, "celery", lambda: int(client.llen("celery")), jobs_in_redis, start_worker
            )
            {%- endif %}
            return
        {%- endif %}
        store: InMemoryJobStore = app.state.job_backend.store
        # 20 rows: it reports progress every 0.1 s, so a cancel ends it at once.
        blocker = http.post("/reports", json={"rows": 20, "simulate_seconds": 2}).json()["id"]
        wait_until(lambda: http.get(f"/jobs/{blocker}").json()["status"] == "running", 10, "")
        yield AdmissionApi(
            http, "inprocess", store.queued_count, lambda: len(store) - 1, lambda: None
        )
        # Not waited for at shutdown (2 s a test otherwise); a test may have ended it.
        http.delete(f"/jobs/{blocker}")


def test_concurrent_identical_submissions_with_one_key_make_one_job(
    admission_api: AdmissionApi,
) -> None:
    """20 clients send the same keyed request at the same instant (a client retrying
    through a flaky proxy): one job is made; every answer names it, the first 202 and
    the rest 200, with the same Location."""
    start = threading.Barrier(CONCURRENT)

    def send(_: int) -> httpx.Response:
        start.wait()
        return admission_api.post(key="order-7-report")

    with ThreadPoolExecutor(CONCURRENT) as pool:
        responses = list(pool.map(send, range(CONCURRENT)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * (CONCURRENT - 1) + [202], [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
    assert len({r.headers["location"] for r in responses}) == 1
    replays = [r for r in responses if r.status_code == 200]
    assert {r.headers["idempotent-replayed"] for r in replays} == {"true"}
    assert admission_api.jobs_made() == 1
    assert admission_api.waiting() == 1
    # Sent again later, once the job has run: still that job, as it is now.
    admission_api.let_jobs_run()
    job_id = responses[0].json()["id"]
    wait_until(lambda: admission_api.status(job_id) == "succeeded", 30, "the job to run")
    again = admission_api.post(key="order-7-report")
    assert again.status_code == 200
    assert again.json() == {"id": job_id, "status": "succeeded"}
    assert admission_api.jobs_made() == 1


def test_a_key_sent_again_with_another_body_is_a_422_naming_it(
    admission_api: AdmissionApi,
) -> None:
    first = admission_api.post({"rows": 3}, key="k-1")
    assert first.status_code == 202
    other = admission_api.post({"rows": 4}, key="k-1")
    assert other.status_code == 422
    (problem,) = other.json()["detail"]
    assert problem["loc"] == ["header", "Idempotency-Key"]
    assert problem["type"] == "idempotency_key_reused"
    assert "'k-1'" in problem["msg"]
    assert admission_api.jobs_made() == 1
    # The same request spelt differently (defaults written out, keys reordered) is
    # the same request.
    same = admission_api.post({"simulate_seconds": 0.0, "rows": 3}, key="k-1")
    assert (same.status_code, same.json()["id"]) == (200, first.json()["id"])


def test_without_a_key_every_submission_is_a_new_job(admission_api: AdmissionApi) -> None:
    ids = {admission_api.post().json()["id"] for _ in range(3)}
    assert len(ids) == 3
    assert admission_api.jobs_made() == 3


@pytest.mark.parametrize("key", ["", "x" * 129, "has space", "tab\there", "caf\u00e9"], ids=repr)
def test_a_malformed_key_is_a_422_naming_the_header(admission_api: AdmissionApi, key: str) -> None:
    # As bytes: a client may send any, and the server reads them as Latin-1.
    headers = {b"Idempotency-Key": key.encode("utf-8")}
    response = admission_api.http.post("/reports", json=REPORT, headers=headers)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    assert admission_api.jobs_made() == 0


def test_keys_are_scoped_to_whoever_submits() -> None:
    """Two clients that pick the same key get a job each, and never each other's."""
    alice = idempotency_claim("retry-1", "alice", "build_report", REPORT)
    bob = idempotency_claim("retry-1", "bob", "build_report", REPORT)
    assert alice.key != bob.key
    assert alice.request_hash == bob.request_hash
    assert len(alice.key) == 64  # hashed: the stored key holds no client input


def test_a_full_queue_refuses_with_429_until_a_worker_drains_it(
    admission_api: AdmissionApi,
) -> None:
    """With no job able to start and MAX_QUEUED_JOBS=5, the sixth submission is 429
    with Retry-After and a reason, and nothing is queued; a key already used still
    answers its job (a client's retry is not refused); once jobs run again,
    submissions are accepted again."""
    accepted = [admission_api.post(key="first").json()["id"]]
    accepted += [admission_api.post().json()["id"] for _ in range(MAX_QUEUED - 1)]
    assert admission_api.waiting() == MAX_QUEUED
    refused = admission_api.post()
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["retry-after"]) > 0
    assert "MAX_QUEUED_JOBS" in refused.json()["detail"]
    assert admission_api.post(key="new-key").status_code == 429
    assert admission_api.waiting() == MAX_QUEUED
    assert admission_api.jobs_made() == MAX_QUEUED
    replay = admission_api.post(key="first")
    assert (replay.status_code, replay.json()["id"]) == (200, accepted[0])

    admission_api.let_jobs_run()
    wait_until(lambda: admission_api.waiting() < MAX_QUEUED, 30, "a job to start")
    later = admission_api.post(key="new-key")
    assert later.status_code == 202, later.text
    for job_id in [*accepted, later.json()["id"]]:
        wait_until(lambda j=job_id: admission_api.status(j) == "succeeded", 30, f"job {job_id}")


def test_a_retry_refused_by_a_full_queue_can_be_sent_again(admission_api: AdmissionApi) -> None:
    """A retry is a submission: a full queue refuses it with 429, and the old job is not
    marked retried by a job that was never queued, so the retry can be sent again."""
    cancelled = admission_api.post().json()["id"]
    assert admission_api.http.delete(f"/jobs/{cancelled}").status_code == 202
    for _ in range(MAX_QUEUED + 1):
        if admission_api.post().status_code == 429:
            break
    refused = admission_api.http.post(f"/jobs/{cancelled}/retry")
    assert refused.status_code == 429, refused.text
    assert admission_api.http.get(f"/jobs/{cancelled}").json()["retried_as"] is None

    admission_api.let_jobs_run()
    wait_until(lambda: admission_api.waiting() < MAX_QUEUED, 30, "a job to start")
    retried = admission_api.http.post(f"/jobs/{cancelled}/retry")
    assert retried.status_code == 202, retried.text
    new_id = retried.json()["id"]
    assert admission_api.http.get(f"/jobs/{cancelled}").json()["retried_as"] == new_id
    wait_until(lambda: admission_api.status(new_id) == "succeeded", 30, "the retry to run")
{%- if cookiecutter.job_backend != "inprocess" %}


def test_submissions_go_on_after_redis_forgets_its_scripts(
    private_redis: RedisServer, logs: LogCapture
) -> None:
    """Admission runs as a script Redis keeps by its hash; a Redis restarted (or its
    scripts flushed) no longer knows it: the batch is sent again with the script
    loaded, and each job is queued once."""
    app = create_app(make_settings(jobs_backend="celery", redis_url=private_redis.url))
    logs.install()
    with (
        redis.Redis.from_url(private_redis.url) as client,
        live_server(app) as url,
        httpx.Client(base_url=url, headers=AUTH_HEADERS, timeout=10) as http,
    ):
        assert http.post("/reports", json=REPORT).status_code == 202
        client.script_flush()
        responses = [http.post("/reports", json=REPORT, headers={"Idempotency-Key": "f"})]
        responses.append(http.post("/reports", json=REPORT, headers={"Idempotency-Key": "f"}))
        assert [r.status_code for r in responses] == [202, 200]
        {%- if cookiecutter.job_backend == "celery-rabbitmq" %}
        assert rabbitmq.queued_count(rabbitmq.broker_for(private_redis.url)) == 2
        {%- else %}
        assert client.llen("celery") == 2
        {%- endif %}
        ttl = client.ttl(next(iter(client.scan_iter("idempotency-key-*"))))
        assert 0 < ttl <= make_settings().job_retention_seconds
{%- endif %}
