"""`GET /jobs/{id}/events` (Server-Sent Events), on every backend, through the whole
middleware stack (edge, metrics, CORS and rate limits switched on{% if cookiecutter.use_opentelemetry %}, tracing{% endif %}) and a real
uvicorn: `TestClient` would not show what a real server and socket do when a client
leaves.

What they check is what a `BaseHTTPMiddleware` gets wrong when it does a layer's work:
its code after `call_next` runs when the response *starts* (measured with Starlette
1.10: 7 ms into a 1.5 s stream), so an access line or a timing written there misses
the stream; and a layer that buffered the body, or did not pass the client's leaving
on, would hold events back or keep following a job no one reads. (Run behind a
`BaseHTTPMiddleware` that only passes the stream through, these tests pass: Starlette
1.10 streams through it and forwards the disconnect. The rule against it in the stack
stands on the access line, context variables and its 0.2 ms a request.)
"""

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
{%- if cookiecutter.job_backend != "inprocess" %}
import redis
{%- endif %}
from fastapi import FastAPI

from {{ cookiecutter.package_name }}.api import events
from {{ cookiecutter.package_name }}.factory import create_app
{%- if cookiecutter.job_backend != "inprocess" %}
from tests.celery_processes import redis_server, running_worker
{%- endif %}
from tests.support import AUTH_HEADERS, LogCapture, live_server, make_settings, wait_until

JOB_BACKENDS = ["inprocess"{% if cookiecutter.job_backend != "inprocess" %}, "celery"{% endif %}]
ORDER = ["queued", "running", "succeeded"]


class Stream:
    """What a client read from one event stream, with when (monotonic) it read it."""

    def __init__(self, response: httpx.Response) -> None:
        self.status = response.status_code
        self.headers = dict(response.headers)
        # One iterator for the stream's life: reading resumes where it stopped.
        self.lines = response.iter_lines()
        self.states: list[dict[str, Any]] = []
        self.state_times: list[float] = []
        self.comments: list[str] = []
        self.ended_at = 0.0

    def read(self, stop_after: int | None = None) -> None:
        """Parse the SSE lines as they arrive (one `data:` line per event here), to the
        end of the stream or until `stop_after` states were read in all."""
        for line in self.lines:
            if line.startswith("data:"):
                self.states.append(json.loads(line.removeprefix("data:").strip()))
                self.state_times.append(time.monotonic())
                if stop_after is not None and len(self.states) >= stop_after:
                    return
            elif line.startswith(":"):
                self.comments.append(line)
        self.ended_at = time.monotonic()


@dataclass
class EventsApi:
    app: FastAPI
    http: httpx.Client
    backend: str
    {%- if cookiecutter.job_backend != "inprocess" %}
    redis_url: str | None
    {%- endif %}

    def submit(self, seconds: float, rows: int = 4) -> str:
        response = self.http.post("/reports", json={"rows": rows, "simulate_seconds": seconds})
        assert response.status_code == 202, response.text
        job_id: str = response.json()["id"]
        return job_id

    def followers(self, job_id: str) -> int:
        """How many followers of the job the server holds: the in-process store's
        waiters{% if cookiecutter.job_backend != "inprocess" %}, or Redis's own count of subscribers to the job's channel{% endif %}."""
        {%- if cookiecutter.job_backend != "inprocess" %}
        if self.redis_url is not None:
            client = redis.Redis.from_url(self.redis_url)
            try:
                ((_, subscribers),) = client.pubsub_numsub(f"celery-task-meta-{job_id}")
            finally:
                client.close()
            return int(subscribers)
        {%- endif %}
        count: int = self.app.state.job_backend.store.watcher_count()
        return count

    def access_lines(self, logs: LogCapture, path: str) -> list[dict[str, Any]]:
        return [
            r
            for r in logs.records()
            if r["logger"].endswith(".access") and r["http"]["path"] == path
        ]


@pytest.fixture(params=JOB_BACKENDS)
def events_api(request: pytest.FixtureRequest, logs: LogCapture) -> Iterator[EventsApi]:
    overrides: dict[str, Any] = {
        "jobs_backend": request.param,
        # Every optional layer on, so the streams go through all of them.
        "rate_limit": "1000/minute",
        "cors_allow_origins": ["https://app.example"],
    }
    {%- if cookiecutter.job_backend != "inprocess" %}
    redis_url = None
    if request.param == "celery":
        worker = request.getfixturevalue("celery_worker")
        overrides["redis_url"] = redis_url = worker.redis_url
    {%- endif %}
    app = create_app(make_settings(**overrides))
    logs.install()
    with (
        live_server(app) as url,
        httpx.Client(base_url=url, headers=AUTH_HEADERS, timeout=30) as http,
    ):
        yield EventsApi(app, http, request.param{% if cookiecutter.job_backend != "inprocess" %}, redis_url{% endif %})


def test_the_events_arrive_in_order_and_end_with_the_final_state(events_api: EventsApi) -> None:
    job_id = events_api.submit(seconds=1.5)
    with events_api.http.stream("GET", f"/jobs/{job_id}/events") as response:
        stream = Stream(response)
        stream.read()

    assert stream.status == 200
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert stream.headers["x-request-id"]  # the edge layer's headers, as on any response
    statuses = [s["status"] for s in stream.states]
    assert statuses == sorted(statuses, key=ORDER.index), statuses
    assert statuses[-1] == "succeeded"
    assert any(s["status"] == "running" and 0 < s["progress"] < 100 for s in stream.states)
    progress = [s["progress"] for s in stream.states]
    assert progress == sorted(progress)
    # One event per change: no state is sent twice in a row.
    assert all(a != b for a, b in zip(stream.states, stream.states[1:], strict=False))
    # The last event is what GET /jobs/{id} says, and the stream ended after it.
    assert stream.states[-1] == events_api.http.get(f"/jobs/{job_id}").json()
    assert stream.ended_at > 0
    assert events_api.followers(job_id) == 0


def test_the_first_event_arrives_while_the_job_still_runs(events_api: EventsApi) -> None:
    """No layer buffers the stream: the first event is read while the job has most of
    its 3 s to go, and the next ones as they happen."""
    job_id = events_api.submit(seconds=3)
    opened = time.monotonic()
    with events_api.http.stream("GET", f"/jobs/{job_id}/events") as response:
        stream = Stream(response)
        stream.read(stop_after=1)
        first_after = stream.state_times[0] - opened
        job_then = events_api.http.get(f"/jobs/{job_id}").json()
        stream.read()

    assert first_after < 1.0, first_after
    assert stream.states[0]["status"] in ("queued", "running")
    assert job_then["status"] in ("queued", "running")
    assert stream.states[-1]["status"] == "succeeded"
    # Events kept coming while it ran, each as it happened, not in one burst at the end.
    running = [t for s, t in zip(stream.states, stream.state_times, strict=True) if s["progress"]]
    assert running[-1] - running[0] > 1.0, running


def test_the_access_line_is_written_when_the_stream_ends_with_its_duration(
    events_api: EventsApi, logs: LogCapture
) -> None:
    """The access line comes when the last byte is sent, timed to it (an access line
    written after a BaseHTTPMiddleware's `call_next` comes at the first byte)."""
    job_id = events_api.submit(seconds=1.5)
    path = f"/jobs/{job_id}/events"
    opened = time.monotonic()
    with events_api.http.stream("GET", path) as response:
        stream = Stream(response)
        stream.read(stop_after=1)
        assert events_api.access_lines(logs, path) == []  # not while it streams
        stream.read()
    streamed_ms = (stream.ended_at - opened) * 1000

    (line,) = wait_until(lambda: events_api.access_lines(logs, path), 2, "the access line")
    assert line["http"]["status"] == 200
    assert line["http"]["job_id"] == job_id
    assert "incomplete" not in line["message"]
    assert streamed_ms * 0.5 < line["http"]["duration_ms"] <= streamed_ms + 50, (
        line["http"]["duration_ms"],
        streamed_ms,
    )
    assert line["http"]["duration_ms"] > 1000  # the job's 1.5 s, not the first byte


def test_a_client_that_leaves_stops_the_following_within_a_second(
    events_api: EventsApi, logs: LogCapture
) -> None:
    """When the client disconnects, the server stops following the job at once, and
    the access line says the response was cut short (a layer that did not pass the
    disconnect on would follow the job to its end)."""
    job_id = events_api.submit(seconds=4)
    path = f"/jobs/{job_id}/events"
    with events_api.http.stream("GET", path) as response:
        stream = Stream(response)
        stream.read(stop_after=1)
        assert events_api.followers(job_id) == 1
        left = time.monotonic()
    # Leaving the block closed the connection mid-stream.
    wait_until(lambda: events_api.followers(job_id) == 0, 1.0, "the server to stop following")
    stopped_after = time.monotonic() - left
    print(f"stopped following {stopped_after * 1000:.0f} ms after the client left")

    (line,) = wait_until(lambda: events_api.access_lines(logs, path), 1, "the access line")
    assert "incomplete" in line["message"]
    assert events_api.http.get(f"/jobs/{job_id}").json()["status"] != "succeeded"


def test_clients_of_one_job_share_one_subscription(events_api: EventsApi) -> None:
    """Three clients of one job: each gets every change
    {%- if cookiecutter.job_backend != "inprocess" %}, and the server follows the
    job once (one Redis subscription per process; in-process, one waiter per client)
    {%- else %} (one waiter per client in the store)
    {%- endif %}."""
    job_id = events_api.submit(seconds=1.5)
    path = f"/jobs/{job_id}/events"
    with (
        events_api.http.stream("GET", path) as first,
        events_api.http.stream("GET", path) as second,
        events_api.http.stream("GET", path) as third,
    ):
        streams = [Stream(r) for r in (first, second, third)]
        for stream in streams:
            stream.read(stop_after=1)
        {%- if cookiecutter.job_backend != "inprocess" %}
        expected = 1 if events_api.backend == "celery" else 3
        {%- else %}
        expected = 3
        {%- endif %}
        assert events_api.followers(job_id) == expected
        for stream in streams:
            stream.read()
    for stream in streams:
        assert stream.states[-1]["status"] == "succeeded"
        assert stream.states[-1]["result"] is not None


def test_a_quiet_stream_gets_heartbeat_comments(
    events_api: EventsApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "HEARTBEAT_SECONDS", 0.3)
    job_id = events_api.submit(seconds=1.5, rows=1)  # one row: no progress until the end
    with events_api.http.stream("GET", f"/jobs/{job_id}/events") as response:
        stream = Stream(response)
        stream.read()
    assert len(stream.comments) >= 2, stream.comments
    assert stream.states[-1]["status"] == "succeeded"


@pytest.mark.parametrize("job_id", ["0123456789abcdef0123456789abcdef", "not-a-job"])
def test_an_id_never_issued_is_a_404(events_api: EventsApi, job_id: str) -> None:
    response = events_api.http.get(f"/jobs/{job_id}/events")
    assert response.status_code == 404
    assert response.json() == {"detail": "No job with this id"}
    assert events_api.followers(job_id) == 0


def test_a_finished_job_streams_its_final_state_and_ends(events_api: EventsApi) -> None:
    job_id = events_api.submit(seconds=0)

    def ended() -> dict[str, Any] | None:
        state: dict[str, Any] = events_api.http.get(f"/jobs/{job_id}").json()
        return state if state["status"] == "succeeded" else None

    final = wait_until(ended, 20, "the job to end")
    with events_api.http.stream("GET", f"/jobs/{job_id}/events") as response:
        stream = Stream(response)
        stream.read()
    assert stream.states == [final]


@pytest.mark.parametrize("backend", JOB_BACKENDS)
def test_a_cancel_before_the_job_starts_ends_its_stream(backend: str, tmp_path: Path) -> None:
    """Nothing has to take the job first: the stream of a queued job ends `cancelled` as
    soon as it is cancelled (in-process: its only slot is busy{% if cookiecutter.job_backend != "inprocess" %}; Celery: no worker runs{% endif %})."""
    with ExitStack() as stack:
        overrides: dict[str, Any] = {"jobs_backend": backend, "inprocess_job_concurrency": 1}
        {%- if cookiecutter.job_backend != "inprocess" %}
        if backend == "celery":
            overrides["redis_url"] = stack.enter_context(redis_server(tmp_path)).url
        {%- endif %}
        url = stack.enter_context(live_server(create_app(make_settings(**overrides))))
        # A read gives up after 5 s (heartbeats come every 15 s): a stream that misses the
        # cancel fails the test instead of waiting for the job forever.
        timeout = httpx.Timeout(30, read=5)
        http = stack.enter_context(
            httpx.Client(base_url=url, headers=AUTH_HEADERS, timeout=timeout)
        )
        busy = http.post("/reports", json={"rows": 4, "simulate_seconds": 3}).json()["id"]
        job_id = http.post("/reports", json={"rows": 4}).json()["id"]
        with http.stream("GET", f"/jobs/{job_id}/events") as response:
            stream = Stream(response)
            stream.read(stop_after=1)
            assert http.delete(f"/jobs/{job_id}").status_code == 202
            stream.read()
        http.delete(f"/jobs/{busy}")  # ends at its next progress report
    assert [s["status"] for s in stream.states] == ["queued", "cancelled"]
    assert stream.ended_at > 0
{%- if cookiecutter.job_backend != "inprocess" %}


def test_a_stream_outlives_a_redis_restart(tmp_path: Path, logs: LogCapture) -> None:
    """Redis restarted (on its data) mid-stream: while it is down a new stream is a 503
    at once; the open one waits, connects again when Redis is back, reads the state again
    (pub/sub kept nothing meanwhile) and ends with the final state."""
    (tmp_path / "worker").mkdir()
    with (
        redis_server(tmp_path / "redis", persistent=True) as server,
        running_worker(server.url, "events-restart", tmp_path / "worker"),
    ):
        app = create_app(make_settings(jobs_backend="celery", redis_url=server.url))
        logs.install()
        with (
            live_server(app) as url,
            httpx.Client(base_url=url, headers=AUTH_HEADERS, timeout=30) as http,
        ):
            response = http.post("/reports", json={"rows": 4, "simulate_seconds": 6})
            job_id = response.json()["id"]
            with http.stream("GET", f"/jobs/{job_id}/events") as events_response:
                stream = Stream(events_response)
                wait_until(
                    lambda: http.get(f"/jobs/{job_id}").json()["progress"] > 0, 10, "progress"
                )
                server.stop()
                asked = time.monotonic()
                refused = http.get(f"/jobs/{job_id}/events")
                refused_after = time.monotonic() - asked
                server.start()
                stream.read()
    print(f"a new stream with Redis down: {refused.status_code} in {refused_after:.2f}s")
    assert refused.status_code == 503
    assert refused.json()["detail"]
    assert refused_after < 2.5
    assert stream.states[-1]["status"] == "succeeded"
    assert stream.states[-1]["result"] is not None
    assert any("pub/sub back" in m for m in logs.messages())
{%- endif %}
