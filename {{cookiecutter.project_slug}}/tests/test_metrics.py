"""Prometheus metrics: they move as requests and jobs happen, parse as the text format,
stay bounded in their labels, and add up across processes.

The edge layer counts each request when its last body byte is sent, outside
Starlette's error handler. A `BaseHTTPMiddleware` doing it would sit inside that
handler and never see the 500 of an endpoint that raises (the exception passes through
it), would stop the clock when the response starts rather than when its body ends,
and would cost about 0.2 ms a request, ten times the counting itself. An
`HTTPException` raised in a middleware would be counted, and answered, as a 500.
"""

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
{%- if cookiecutter.job_backend != "inprocess" %}
from contextlib import AbstractContextManager
{%- endif %}
from pathlib import Path

import httpx2 as httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from starlette.testclient import TestClient

from {{ cookiecutter.package_name }}.factory import create_app
from {{ cookiecutter.package_name }}.observability import (
    metric_families,
)
from tests import support
{%- if cookiecutter.job_backend != "inprocess" %}
from tests.celery_processes import RedisServer, WorkerProcess, running_worker
{%- endif %}

Families = dict[str, list[Sample]]


def parse(text: str) -> Families:
    """Every sample by family name; the official parser fails on a malformed line."""
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def scrape(http: TestClient | httpx.Client) -> Families:
    response = http.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def value(families: Families, sample_name: str, **labels: str) -> float:
    """The one sample of that name with those labels (others may carry more), or 0."""
    family = sample_name.removesuffix("_total").removesuffix("_count").removesuffix("_bucket")
    matches = [
        s.value
        for s in families.get(family, [])
        if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(matches) <= 1, f"{sample_name} {labels}: {matches}"
    return matches[0] if matches else 0.0


def requests(families: Families, route: str, status: str, method: str = "GET") -> float:
    return value(families, "http_requests_total", method=method, route=route, status=status)


@pytest.fixture
def errors_client(probe_app: FastAPI) -> Iterator[TestClient]:
    headers = support.AUTH_HEADERS
    with TestClient(probe_app, headers=headers, raise_server_exceptions=False) as client:
        yield client


def test_a_404_and_a_500_are_counted_under_their_route_template(
    errors_client: TestClient,
) -> None:
    assert errors_client.get("/jobs/no-such-job").status_code == 404
    assert errors_client.get("/no/such/path").status_code == 404
    assert errors_client.get("/probe/boom").status_code == 500
    assert errors_client.get("/health/live").status_code == 200

    families = scrape(errors_client)
    assert requests(families, "/jobs/{job_id}", "404") == 1
    assert requests(families, "unmatched", "404") == 1
    assert requests(families, "/probe/boom", "500") == 1
    assert requests(families, "/health/live", "200") == 1
    duration = "http_request_duration_seconds_count"
    assert value(families, duration, method="GET", route="/probe/boom") == 1
    # The scrape itself is the one request in flight.
    assert value(families, "http_requests_in_flight") == 1


def test_a_body_refused_by_the_edge_layer_is_counted(client: TestClient) -> None:
    limit = support.make_settings().max_request_body_bytes
    response = client.post(
        "/reports", content=b"x" * (limit + 1), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert requests(scrape(client), "unmatched", "413", method="POST") == 1


def test_no_label_carries_a_job_id_or_a_raw_path(client: TestClient) -> None:
    ids = [uuid.uuid4().hex for _ in range(500)]
    for job_id in ids:
        assert client.get(f"/jobs/{job_id}").status_code == 404
        client.get(f"/{job_id}")  # an unknown path each time
    client.request("BREW", "/health/live")  # any token is a method

    text = client.get("/metrics").text
    families = parse(text)
    assert not any(job_id in text for job_id in ids)
    series = [s for s in families["http_requests"] if s.name == "http_requests_total"]
    assert requests(families, "/jobs/{job_id}", "404") == 500
    assert requests(families, "unmatched", "404") == 500
    assert {s.labels["method"] for s in series} <= {"GET", "other"}
    # 404 on the template, 404 unmatched, and BREW's 405: three series, not 1,001.
    assert len(series) == 3, series
{%- if cookiecutter.auth != "none" %}


def test_metrics_need_the_token_by_default(app: FastAPI) -> None:
    with TestClient(app) as anonymous:
        assert anonymous.get("/metrics").status_code == 401
        authorized = anonymous.get("/metrics", headers=support.AUTH_HEADERS)
    assert authorized.status_code == 200
    assert requests(parse(authorized.text), "unmatched", "401") == 1


def test_metrics_public_opens_metrics_only() -> None:
    app = create_app(support.make_settings(metrics_public=True))
    with TestClient(app) as anonymous:
        assert anonymous.get("/metrics").status_code == 200
        assert anonymous.get("/jobs/some-id").status_code == 401
{%- else %}


def test_metrics_are_public_like_every_route_without_an_auth_layer(client: TestClient) -> None:
    client.headers.clear()
    assert client.get("/metrics").status_code == 200
{%- endif %}


def follow(http: httpx.Client, job_id: str) -> str:
    def ended() -> str | None:
        status: str = http.get(f"/jobs/{job_id}").json()["status"]
        return status if status in ("succeeded", "failed") else None

    final: str = support.wait_until(ended, 30, f"job {job_id} to end", interval=0.1)
    return final


def submit(http: httpx.Client, seconds: float = 0) -> str:
    response = http.post("/reports", json={"rows": 3, "simulate_seconds": seconds})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def test_in_process_jobs_are_counted_and_queue_depth_rises_and_falls() -> None:
    # One job at a time: the first holds the only slot, the next two wait.
    app = create_app(support.make_settings(inprocess_job_concurrency=1))
    with (
        support.live_server(app) as url,
        httpx.Client(base_url=url, headers=support.AUTH_HEADERS, timeout=10) as http,
    ):
        first = submit(http, seconds=1.0)
        support.wait_until(
            lambda: http.get(f"/jobs/{first}").json()["status"] == "running", 10, "a running job"
        )
        queued = [submit(http), submit(http)]
        assert value(scrape(http), "jobs_waiting") == 2
        assert [follow(http, job_id) for job_id in (first, *queued)] == ["succeeded"] * 3
        families = scrape(http)
    assert value(families, "jobs_waiting") == 0
    assert value(families, "jobs_submitted_total", job="build_report") == 3
    assert value(families, "jobs_started_total", job="build_report") == 3
    assert value(families, "jobs_succeeded_total", job="build_report") == 3
    assert value(families, "jobs_failed_total", job="build_report") == 0
    count = "job_duration_seconds_count"
    assert value(families, count, job="build_report", outcome="succeeded") == 3


def test_several_server_workers_give_one_consistent_count(tmp_path: Path) -> None:
    """A real `uvicorn --workers 2`: whichever worker answers a scrape, it shows the
    requests both served."""
    options = [*support.BOUNDED_HTTP, "--workers", "2"]
    # The workers make their shared directory under the temp directory: this one.
    env = {"WEB_CONCURRENCY": "2", "TMPDIR": str(tmp_path)}
    with support.uvicorn_process(tmp_path, options, **env) as server:
        clients: list[httpx.Client] = []
        try:
            # A kept-alive connection stays with the worker that accepted it: open
            # connections until both workers have answered a request.
            def both_served() -> bool:
                http = httpx.Client(base_url=server.url, headers=support.AUTH_HEADERS)
                clients.append(http)
                assert http.get("/health/live").status_code == 200
                return len(counting_pids(tmp_path)) == 2

            support.wait_until(both_served, 30, "both workers to answer", interval=0)
            served = len(clients)
            # A request is counted just after its last byte is sent: the client can be
            # faster than that by a scrape.
            support.wait_until(
                lambda: requests(scrape(clients[0]), "/health/live", "200") == served,
                10,
                "the last request to be counted",
            )
            totals = {
                requests(scrape(http), "/health/live", "200") for http in clients for _ in range(2)
            }
        finally:
            for http in clients:
                http.close()
            # SIGTERM: the supervisor stops its workers (a SIGKILL would orphan them).
            server.process.terminate()
            server.process.wait(timeout=20)
    assert totals == {served}


def test_a_scrape_leaves_out_a_process_file_not_sized_yet(tmp_path: Path) -> None:
    """A process makes its file and only then sizes it: a scrape in between answered 500
    (`uvicorn --workers 2` in CI). It leaves that file out and sums the others."""
    count_three = (
        "from prometheus_client import Counter;"
        "Counter('jobs_submitted', 'Jobs.', ['job']).labels('build_report').inc(3)"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", count_three], env=env, check=True, timeout=60)
    (tmp_path / "counter_102.db").touch()  # opened by its process, not sized yet
    families = parse(metric_families.Exposition(CollectorRegistry(), tmp_path).render().decode())
    assert value(families, "jobs_submitted_total", job="build_report") == 3


def counting_pids(root: Path) -> set[str]:
    """The processes that have counted a request, from their multiprocess files."""
    return {path.stem.rpartition("_")[2] for path in root.glob("*-metrics-*/*/counter_*.db")}
{%- if cookiecutter.job_backend != "inprocess" %}


def worker_scrape(worker: WorkerProcess) -> Families:
    def answered() -> httpx.Response | None:
        try:
            return httpx.get(worker.metrics_url, timeout=5)
        except httpx.TransportError:
            return None  # not listening yet: it starts once the pool runs

    response: httpx.Response = support.wait_until(answered, 20, "the worker's metrics")
    assert response.status_code == 200
    return parse(response.text)


def celery_api(redis_url: str) -> AbstractContextManager[str]:
    return support.live_server(
        create_app(support.make_settings(jobs_backend="celery", redis_url=redis_url))
    )


def test_a_celery_job_is_counted_once_by_the_worker(celery_worker: WorkerProcess) -> None:
    before = worker_scrape(celery_worker)
    with (
        celery_api(celery_worker.redis_url) as url,
        httpx.Client(base_url=url, headers=support.AUTH_HEADERS, timeout=10) as http,
    ):
        assert follow(http, submit(http)) == "succeeded"
        api = scrape(http)
    after = worker_scrape(celery_worker)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    job = {"job": "build_report"}
    assert moved("jobs_started_total", **job) == 1
    assert moved("jobs_succeeded_total", **job) == 1
    assert moved("jobs_failed_total", **job) == 0
    assert moved("job_duration_seconds_count", outcome="succeeded", **job) == 1
    # The API counts what it sees, the submission, and no run: that is the worker's.
    assert value(api, "jobs_submitted_total", **job) == 1
    assert value(api, "jobs_started_total", **job) == 0
    assert value(api, "jobs_succeeded_total", **job) == 0


def test_queue_depth_rises_with_no_worker_and_falls_when_one_starts(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    with (
        celery_api(private_redis.url) as url,
        httpx.Client(base_url=url, headers=support.AUTH_HEADERS, timeout=10) as http,
    ):
        assert value(scrape(http), "jobs_waiting") == 0
        jobs = [submit(http, seconds=0.3) for _ in range(4)]
        assert value(scrape(http), "jobs_waiting") == 4

        # Two pool processes share the jobs; the worker's listener shows their sum.
        with running_worker(private_redis.url, "metrics-late", tmp_path, concurrency=2) as worker:
            assert [follow(http, job_id) for job_id in jobs] == ["succeeded"] * 4
            assert value(scrape(http), "jobs_waiting") == 0
            counted = worker_scrape(worker)
        assert value(counted, "jobs_succeeded_total", job="build_report") == 4

        private_redis.stop()
        {%- if cookiecutter.job_backend == "celery-rabbitmq" %}
        # Redis gone: the depth is RabbitMQ's, still known.
        assert value(scrape(http), "jobs_waiting") == 0
        {%- else %}
        # Redis gone: the scrape still answers, without a depth it cannot know.
        assert "jobs_waiting" not in scrape(http)
        {%- endif %}
{%- endif %}
