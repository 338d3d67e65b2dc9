"""Traces leave the processes as a collector receives them: real servers{% if cookiecutter.job_backend != "inprocess" %} and a real worker{% endif %}
exporting OTLP/HTTP to a receiver of the tests' own on loopback (`otlp_receiver.py`).

The tracing layer is OpenTelemetry's pure-ASGI middleware, outermost. As a
`BaseHTTPMiddleware` its span would end when the response starts, not when the body
has been sent, and a request that raises would reach it only as an exception from
`call_next`, after Starlette's handler had answered the 500 outside the span. An
`HTTPException` raised in a middleware would be traced, and answered, as a 500.
"""

import io
import json
import logging
import os
import secrets
import string
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from opentelemetry import trace

from {{ cookiecutter.package_name }} import (
    settings as settings_module,
)
from {{ cookiecutter.package_name }}.logs import configure_logging
from {{ cookiecutter.package_name }}.observability import tracing
from tests import otlp_receiver as otlp
{%- if cookiecutter.job_backend != "inprocess" %}
from tests.celery_processes import RedisServer, running_worker
{%- endif %}
from tests.support import (
    AUTH_ENV,
    AUTH_HEADERS,
    {%- if cookiecutter.auth == "jwt" %}
    ISSUER,
    {%- endif %}
    PACKAGE,
    {%- if cookiecutter.job_backend != "inprocess" %}
    broker_env,
    {%- endif %}
    make_settings,
    uvicorn_process,
    wait_until,
    with_source_on_path,
)


def exporting_to(receiver: otlp.OtlpReceiver, service: str) -> dict[str, str]:
    """The standard variables that send a process's spans to `receiver`, fast."""
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_SERVICE_NAME": service,
        "OTEL_BSP_SCHEDULE_DELAY": "50",  # milliseconds between exports
    }


def status_code(span: otlp.ReceivedSpan) -> Any:
    # The attribute's name depends on OTEL_SEMCONV_STABILITY_OPT_IN.
    return span.attributes.get("http.response.status_code", span.attributes.get("http.status_code"))


def test_request_spans_are_named_by_route_and_continue_an_incoming_trace(tmp_path: Path) -> None:
    incoming_trace, incoming_span = secrets.token_hex(16), secrets.token_hex(8)
    unknown_job = secrets.token_hex(16)
    with (
        otlp.receiving_spans() as receiver,
        uvicorn_process(
            tmp_path, **exporting_to(receiver, "traced-api"), MAX_REQUEST_BODY_BYTES="1024"
        ) as server,
        httpx.Client(base_url=server.url, headers=AUTH_HEADERS) as http,
    ):
        traced = http.get(
            f"/jobs/{unknown_job}",
            headers={"traceparent": f"00-{incoming_trace}-{incoming_span}-01"},
        )
        assert traced.status_code == 404
        refused = http.post("/reports", content=b"[" * 2048, headers={"Content-Type": "text/plain"})
        assert refused.status_code == 413

        span = receiver.wait_for_span(
            lambda s: s.trace_id == incoming_trace and s.kind == otlp.SERVER,
            "the GET's server span",
        )
        assert span.parent_span_id == incoming_span
        assert span.service == "traced-api"
        assert span.name == "GET /jobs/{job_id}"  # the template: no id in a span name
        assert status_code(span) == 404
        # Refused by the edge layer before any route matched: traced all the same.
        too_large = receiver.wait_for_span(
            lambda s: s.kind == otlp.SERVER and status_code(s) == 413, "the 413's server span"
        )
        assert too_large.name == "POST"
        assert all(unknown_job not in s.name for s in receiver.spans())

        request_id = traced.headers["x-request-id"]
        lines = wait_until(
            lambda: [r for r in server.log_records() if r.get("request_id") == request_id],
            10,
            "the GET's access line",
        )
        assert {(r["trace_id"], r["span_id"]) for r in lines} == {(incoming_trace, span.span_id)}


def test_log_lines_inside_a_span_carry_its_ids_in_both_formats() -> None:
    tracing.setup_tracing(make_settings())  # once per process; no exporter here
    logger = logging.getLogger("tests.tracing")
    for log_format in ("text", "json"):
        stream = io.StringIO()
        configure_logging("INFO", log_format, stream=stream)
        logger.info("outside")
        with trace.get_tracer(__name__).start_as_current_span("work") as span:
            logger.info("inside")
        context = span.get_span_context()
        trace_id, span_id = f"{context.trace_id:032x}", f"{context.span_id:016x}"
        outside, inside = stream.getvalue().splitlines()
        if log_format == "json":
            assert (json.loads(inside)["trace_id"], json.loads(inside)["span_id"]) == (
                trace_id,
                span_id,
            )
            assert json.loads(outside)["trace_id"] == "-"
        else:
            assert f"trace_id={trace_id} span_id={span_id}" in inside
            assert "trace_id=- span_id=-" in outside
    configure_logging("INFO", "text")


def test_an_endpoint_that_is_not_an_http_url_stops_start_up_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")  # no scheme
    with pytest.raises(settings_module.SettingsError) as refused:
        settings_module.load_settings()
    message = str(refused.value)
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in message
    assert "http://" in message
    assert "\n" not in message


# Run in a fresh process (the tracer provider is set once per process): build the app
# from the environment, serve a few requests and flush, recording every connect() the
# process makes (Python's audit events: no mock in the way), then list the threads.
PROBE = string.Template("""
import json, sys, threading
connected = []
def record_connects(event, args):
    if event == "socket.connect" and isinstance(args[1], tuple):
        connected.append(args[1][1])
sys.addaudithook(record_connects)

from opentelemetry import trace
from starlette.testclient import TestClient
from $package.factory import create_app

with TestClient(create_app(), headers=$headers) as client:
    for _ in range(3):
        client.get("/health/live")
        client.get("/jobs/0123", headers={"traceparent": "00-$trace_id-$span_id-01"})
trace.get_tracer_provider().force_flush()
print(json.dumps({"threads": [t.name for t in threading.enumerate()], "ports": connected}))
""")


def probe(tmp_path: Path, **env: str) -> dict[str, Any]:
    settings = {
        "JOBS_BACKEND": "inprocess",
        **AUTH_ENV,
        **env,
    }
    environment = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    script = PROBE.substitute(
        package=PACKAGE,
        headers=repr(AUTH_HEADERS),
        trace_id=secrets.token_hex(16),
        span_id=secrets.token_hex(8),
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,  # away from any developer `.env`
        env={**with_source_on_path(environment), **settings},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    {%- if cookiecutter.auth == "jwt" %}
    # The JWT layer fetches the issuer's keys at start-up: not the exporter's doing.
    result["ports"] = [port for port in result["ports"] if port != ISSUER.port]
    {%- endif %}
    return result


def test_without_an_endpoint_no_exporter_thread_or_connection_exists(tmp_path: Path) -> None:
    with otlp.receiving_spans() as receiver:
        exporting = probe(tmp_path, **exporting_to(receiver, "probe"))
        # The probe sees what an exporter leaves: its thread, its connection, the spans.
        assert any(name.startswith("OtelBatch") for name in exporting["threads"])
        assert receiver.server_address[1] in exporting["ports"]
        assert any(s.service == "probe" for s in receiver.spans())

        silent = probe(tmp_path, OTEL_SERVICE_NAME="probe-silent")
    assert not any(name.startswith("Otel") for name in silent["threads"]), silent
    assert silent["ports"] == []
    assert not any(s.service == "probe-silent" for s in receiver.spans())
{%- if cookiecutter.job_backend != "inprocess" %}


def test_a_job_is_one_trace_from_the_request_through_the_worker(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    """A Redis of this test's own, so that no other worker can take the job."""
    with (
        otlp.receiving_spans() as receiver,
        running_worker(
            private_redis.url, "traced", tmp_path, exporting_to(receiver, "traced-worker")
        ) as worker,
        uvicorn_process(
            tmp_path,
            JOBS_BACKEND="celery",
            REDIS_URL=private_redis.url,
            **broker_env(private_redis.url),
            **exporting_to(receiver, "traced-api"),
        ) as server,
        httpx.Client(base_url=server.url, headers=AUTH_HEADERS) as http,
    ):
        submitted = http.post("/reports", json={"rows": 3, "simulate_seconds": 0})
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]

        task = receiver.wait_for_span(
            lambda s: s.service == "traced-worker" and s.kind == otlp.CONSUMER, "the task's span"
        )
        publish = receiver.wait_for_span(
            lambda s: s.span_id == task.parent_span_id, "the span the task's span names as parent"
        )
        request = receiver.wait_for_span(
            lambda s: s.span_id == publish.parent_span_id, "the publish span's parent"
        )
        assert (request.service, request.kind, request.name) == (
            "traced-api",
            otlp.SERVER,
            "POST /reports",
        )
        assert (publish.service, publish.kind) == ("traced-api", otlp.PRODUCER)
        assert publish.attributes["messaging.message.id"] == job_id
        assert task.trace_id == publish.trace_id == request.trace_id

        # The job's own lines in the worker, and the API's line for it, show the trace.
        def job_lines() -> list[dict[str, Any]]:
            return [r for r in worker.records() if r["message"].startswith(f"job {job_id} ")]

        wait_until(
            lambda: any("succeeded" in r["message"] for r in job_lines()), 20, "the job to end"
        )
        lines = job_lines()
        assert {(r["trace_id"], r["span_id"]) for r in lines} == {(task.trace_id, task.span_id)}
        queued_line = f"job {job_id} (build_report) queued"
        queued = [r for r in server.log_records() if r["message"] == queued_line]
        assert [r["trace_id"] for r in queued] == [request.trace_id]
{%- endif %}
