"""Error reports, received by a Sentry stand-in of the test's own on loopback: what is
reported (a 500, a failed job), with which request id, what is not (4xx, a 503, a job
refusing its params), and that no credential leaves the process."""

import gzip
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import sentry_sdk
from fastapi import APIRouter, FastAPI, HTTPException
from starlette.testclient import TestClient

from {{ cookiecutter.package_name }}.factory import create_app
from tests import failing_jobs, probes{% if cookiecutter.job_backend == "celery-rabbitmq" %}, rabbitmq{% endif %}
{%- if cookiecutter.job_backend != "inprocess" %}
from tests.celery_processes import RedisServer, running_worker
{%- endif %}
from tests.probes import Recorder, probe_router
from tests.support import (
    AUTH_ENV,
    AUTH_HEADERS,
    PACKAGE,
    {%- if cookiecutter.job_backend != "inprocess" %}
    SOURCE_ROOT,
    {%- endif %}
    {%- if cookiecutter.job_backend != "inprocess" %}
    free_port,
    {%- endif %}
    make_settings,
    wait_until,
    with_source_on_path,
)

{% if cookiecutter.auth != "none" -%}
# The credential every request of these tests carries: the service's own {% if cookiecutter.auth == "jwt" %}JWT{% else %}token{% endif %}.
CREDENTIALS = AUTH_HEADERS
{%- else -%}
# A credential every request of these tests carries, which this service ignores.
CREDENTIALS = {**AUTH_HEADERS, "Authorization": "Basic YS1jbGllbnQ6MDEyMzQ1Njc4OQ=="}
{%- endif %}
COOKIE_VALUE = "session-cookie-value-0123456789"
SECRETS = [
    *(value.split()[-1] for value in CREDENTIALS.values()),
    COOKIE_VALUE,
]


class EnvelopeSink:
    """Takes Sentry envelopes at `POST /api/<project id>/envelope/`, as Sentry does,
    and keeps each request body as it arrived (after gzip, if any)."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                encoding = self.headers.get("Content-Encoding")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                else:
                    assert encoding is None, f"cannot read a {encoding} body"
                if self.path.startswith("/api/1/envelope/"):
                    sink.bodies.append(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def dsn(self) -> str:
        return f"http://publickey@127.0.0.1:{self.server.server_address[1]}/1"

    def events(self) -> list[dict[str, Any]]:
        """The error events of every envelope so far (not client reports and the like)."""
        return [
            payload
            for body in list(self.bodies)
            for item_type, payload in envelope_items(body)
            if item_type == "event"
        ]

    def tagged(self, request_id: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e.get("tags", {}).get("request_id") == request_id]


def envelope_items(body: bytes) -> Iterator[tuple[str, dict[str, Any]]]:
    """(type, payload) of each item: the envelope is a header line, then for each item
    a header line and a payload of `length` bytes, or up to the next newline."""
    _, _, rest = body.partition(b"\n")
    while rest.strip():
        header_line, _, rest = rest.partition(b"\n")
        header = json.loads(header_line)
        if "length" in header:
            payload, rest = rest[: header["length"]], rest[header["length"] + 1 :]
        else:
            payload, _, rest = rest.partition(b"\n")
        yield header["type"], json.loads(payload) if payload.startswith(b"{") else {}


@pytest.fixture
def sink() -> Iterator[EnvelopeSink]:
    receiver = EnvelopeSink()
    receiver.thread.start()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


def assert_no_secret_in(sink: EnvelopeSink) -> None:
    for body in sink.bodies:
        for secret in SECRETS:
            assert secret.encode() not in body, f"{secret!r} was reported"


EXPLODE = f"/test/jobs/{failing_jobs.explode.__name__}"


def job_router() -> APIRouter:
    """The tests' job route (probes.py), and a route that fails as one whose own
    dependency is down."""
    router = probes.job_router()

    @router.get("/test/unavailable")
    async def unavailable() -> None:
        # What a route may raise while a dependency of its own is down.
        raise HTTPException(503, "a dependency is down")

    return router


def reporting_app(sink: EnvelopeSink, **settings: Any) -> FastAPI:
    app = create_app(make_settings(sentry_dsn=sink.dsn, **settings))
    app.include_router(probe_router(Recorder()))
    app.include_router(job_router())
    return app


@pytest.fixture
def reporting(sink: EnvelopeSink) -> Iterator[None]:
    """sentry_sdk's client is process-wide: closed after the test, so that no other
    test reports to a sink that is gone."""
    yield
    sentry_sdk.get_client().close(timeout=2)
    sentry_sdk.get_global_scope().set_client(None)


def client_for(app: FastAPI) -> TestClient:
    return TestClient(
        app,
        headers={**CREDENTIALS, "Cookie": f"session={COOKIE_VALUE}"},
        raise_server_exceptions=False,
    )


def finished(http: TestClient, job_id: str) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        state: dict[str, Any] = http.get(f"/jobs/{job_id}").json()
        return state if state["status"] in ("succeeded", "failed") else None

    state: dict[str, Any] = wait_until(ended, 20, f"job {job_id} to end")
    return state


@pytest.mark.usefixtures("reporting")
def test_a_500_is_reported_with_its_request_id_and_no_credential(sink: EnvelopeSink) -> None:
    with client_for(reporting_app(sink)) as http:
        response = http.get("/probe/boom", params={"page": "2"})
    assert response.status_code == 500
    sentry_sdk.flush(timeout=5)
    [event] = sink.events()
    assert event["tags"]["request_id"] == response.headers["X-Request-ID"]
    [exception] = event["exception"]["values"]
    assert (exception["type"], exception["value"]) == ("RuntimeError", "probe failure")
    assert event["request"]["method"] == "GET"
    assert event["request"]["url"].endswith("/probe/boom")
    assert event["request"]["headers"]["authorization"] == "[Filtered]"
    assert_no_secret_in(sink)
{%- if cookiecutter.use_opentelemetry %}


@pytest.mark.usefixtures("reporting")
def test_a_500_is_reported_with_the_trace_id_of_its_request(sink: EnvelopeSink) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    traceparent = f"00-{trace_id}-00f067aa0ba902b7-01"
    with client_for(reporting_app(sink)) as http:
        assert http.get("/probe/boom", headers={"traceparent": traceparent}).status_code == 500
    sentry_sdk.flush(timeout=5)
    [event] = sink.events()
    assert event["tags"]["trace_id"] == trace_id
{%- endif %}


@pytest.mark.usefixtures("reporting")
def test_expected_errors_are_not_reported(sink: EnvelopeSink) -> None:
    """A 404, a 422 and a job that refuses its params are the client's mistakes, a 503 an
    outage; the one 500 at the end shows the reports were flowing all along."""
    with client_for(reporting_app(sink)) as http:
        assert http.get("/no-such-page").status_code == 404
        assert http.post("/reports", json={"rows": "many"}).status_code == 422
        assert http.get("/test/unavailable").status_code == 503
        {%- if cookiecutter.auth != "none" %}
        assert http.get("/jobs/x", headers={"Authorization": "Bearer wrong"}).status_code == 401
        {%- endif %}
        refused = http.post("/test/jobs/build_report", json={"rows": 0}).json()["id"]
        assert finished(http, refused)["error"].startswith("JobInputError:")
        assert http.get("/probe/boom").status_code == 500
    sentry_sdk.flush(timeout=5)
    assert [e["exception"]["values"][-1]["value"] for e in sink.events()] == ["probe failure"]


@pytest.mark.usefixtures("reporting")
def test_a_failed_in_process_job_is_reported_with_its_request_id(sink: EnvelopeSink) -> None:
    with client_for(reporting_app(sink)) as http:
        response = http.post(EXPLODE, json={}, headers={"X-Request-ID": "job-1"})
        assert finished(http, response.json()["id"])["status"] == "failed"
    sentry_sdk.flush(timeout=5)
    [event] = sink.tagged("job-1")
    assert event["exception"]["values"][-1]["value"] == "the job broke"
    assert_no_secret_in(sink)
{%- if cookiecutter.job_backend != "inprocess" %}


@pytest.mark.usefixtures("reporting")
def test_the_503_of_a_redis_that_is_down_is_not_reported(sink: EnvelopeSink) -> None:
    app = reporting_app(sink, jobs_backend="celery", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    with client_for(app) as http:
        assert http.post("/reports", json={"rows": 1}).status_code == 503
        assert http.get("/probe/boom").status_code == 500
    sentry_sdk.flush(timeout=5)
    assert [e["exception"]["values"][-1]["value"] for e in sink.events()] == ["probe failure"]


def test_a_job_that_fails_in_a_prefork_worker_is_reported_with_its_request_id(
    sink: EnvelopeSink, private_redis: RedisServer, tmp_path: Path
) -> None:
    """The worker reports from its pool process (sentry_sdk set up at import, before
    the fork). Not reported: a job refusing its params, a retry that succeeds, and the
    worker's trouble reaching {% if cookiecutter.job_backend == "celery-rabbitmq" %}RabbitMQ{% else %}Redis{% endif %} while it is down."""
    app = create_app(make_settings(jobs_backend="celery", redis_url=private_redis.url))
    app.include_router(job_router())
    {%- if cookiecutter.job_backend == "celery-rabbitmq" %}
    # The worker's broker behind a relay the test cuts.
    broker = rabbitmq.TcpProxy(rabbitmq.broker_for(private_redis.url))
    broker.start()
    {%- endif %}
    env = {
        "SENTRY_DSN": sink.dsn,
        # `tests.failing_jobs`, from the project root, beside the service's source.
        "PYTHONPATH": os.pathsep.join([str(SOURCE_ROOT), str(SOURCE_ROOT.parent)]),
        {%- if cookiecutter.job_backend == "celery-rabbitmq" %}
        "BROKER_URL": broker.url,
        {%- endif %}
    }
    with (
        running_worker(
            private_redis.url, "reporting", tmp_path, env, include=failing_jobs.__name__
        ) as worker,
        client_for(app) as http,
    ):

        def submit(name: str, request_id: str, **params: Any) -> str:
            response = http.post(
                f"/test/jobs/{name}", json=params, headers={"X-Request-ID": request_id}
            )
            job_id: str = response.json()["id"]
            return job_id

        refused = submit("build_report", "job-refused", rows=0)
        retried = submit(
            failing_jobs.fails_once.__name__, "job-retried", marker=str(tmp_path / "m")
        )
        broken = submit(failing_jobs.explode.__name__, "job-broken")
        assert finished(http, refused)["status"] == finished(http, broken)["status"] == "failed"
        assert finished(http, retried)["status"] == "succeeded"
        wait_until(lambda: sink.tagged("job-broken"), 15, "the worker's report")
        {%- if cookiecutter.job_backend == "celery-rabbitmq" %}
        # The outage after the worker's acks: an ack the cut breaks is an error of its
        # own (the job will run again), not the reconnect noise this test is about.
        wait_until(lambda: rabbitmq.unacknowledged(broker.broker_url) == 0, 30, "the worker's acks")
        broker.stop()
        {%- else %}
        private_redis.stop()
        {%- endif %}
        wait_until(
            lambda: any("Cannot connect" in m for m in worker.messages()), 15, "a failed reconnect"
        )
        {%- if cookiecutter.job_backend == "celery-rabbitmq" %}
        broker.start()
        # A job run after the outage: the worker takes none before its consumer has
        # started all its steps again (native delayed delivery among them), so the
        # stop below does not cut that start short.
        after = submit("build_report", "job-after", rows=1)
        assert finished(http, after)["status"] == "succeeded"
        {%- else %}
        private_redis.start()
        {%- endif %}
        worker.stop()  # its processes flush what they still hold
    {%- if cookiecutter.job_backend == "celery-rabbitmq" %}
    broker.stop()
    {%- endif %}
    assert len(sink.events()) == 1
    [event] = sink.tagged("job-broken")
    types = [exception["type"] for exception in event["exception"]["values"]]
    assert types == ["RuntimeError", "JobFailedError"]  # the cause, then what Celery saw
    assert event["exception"]["values"][0]["value"] == "the job broke"
    assert sink.tagged("job-refused") == sink.tagged("job-retried") == []
    assert_no_secret_in(sink)
{%- endif %}


def test_without_a_dsn_sentry_sdk_is_not_even_imported(tmp_path: Path) -> None:
    modules = [f"{PACKAGE}.main"{% if cookiecutter.job_backend != "inprocess" %}, f"{PACKAGE}.worker"{% endif %}]
    code = f"import sys, {', '.join(modules)}; print('sentry_sdk' in sys.modules)"
    environment = {
        **with_source_on_path(os.environ),
        "JOBS_BACKEND": "inprocess",
        **AUTH_ENV,
    }
    environment.pop("SENTRY_DSN", None)
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=environment,
        cwd=tmp_path,  # no developer `.env`
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == "False", done.stderr
