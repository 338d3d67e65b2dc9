"""What the pure-ASGI stack guarantees. Each test names what a `BaseHTTPMiddleware`
(`@app.middleware("http")`) or a naive middleware would break."""

import json
import logging
import re
import time
from typing import Any

import httpx2 as httpx
import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from {{ cookiecutter.package_name }}.factory import create_app
from tests.asgi import call_app, run_lifespan
from tests.probes import Recorder
from tests.support import AUTH_HEADERS, LogCapture, live_server, make_settings

pytestmark = pytest.mark.anyio
AUTH = tuple(AUTH_HEADERS.items())


def access_records(logs: LogCapture) -> list[dict[str, Any]]:
    return [r for r in logs.records() if r["logger"].endswith(".access")]


# Background tasks ----------------------------------------------------------------------


async def test_background_task_runs_after_the_last_body_byte(
    probe_app: FastAPI, recorder: Recorder
) -> None:
    """The task starts only once the client has the whole response, even on a slow
    link. A middleware that collects the body and sends it after the app returns (as
    naive "modify the response" middleware does) would run the task first."""
    response = await call_app(probe_app, "GET", "/probe/async", headers=AUTH, slow_send=0.2)
    assert response.status == 200
    events = sorted(response.events + recorder.events)
    names = [name for _, name in events]
    assert names.index("response.complete") < names.index("task.async")
    assert names.index("response.complete") < names.index("task.sync")


async def test_background_task_survives_the_client_leaving(
    probe_app: FastAPI, recorder: Recorder
) -> None:
    """The client hangs up right after its request; the task still runs to its end.
    A middleware that cancels the app when `receive` reports `http.disconnect` (as
    BaseHTTPMiddleware once did) would kill it."""
    recorder.values["task_seconds"] = 0.3
    await call_app(probe_app, "POST", "/probe/slow-task", headers=AUTH, disconnect_after=0.0)
    assert "task.ran" in recorder.names()


def test_background_task_does_not_delay_the_next_request_on_the_connection(
    probe_app: FastAPI, recorder: Recorder
) -> None:
    """On one keep-alive connection, the next request is answered while the previous
    request's task still runs: the server frees the connection at the last body byte.
    A middleware that holds the response until the app (and its tasks) return would
    make the second request wait for the task."""
    with (
        live_server(probe_app) as url,
        httpx.Client(
            base_url=url, headers=AUTH_HEADERS, limits=httpx.Limits(max_connections=1)
        ) as http,
    ):
        assert http.post("/probe/blocking-task").status_code == 200
        second = http.get("/health/live", timeout=5)
        assert second.status_code == 200
        assert "task.finished" not in recorder.names()  # still blocked when answered
        recorder.release.set()
        deadline = time.monotonic() + 5
        while "task.finished" not in recorder.names() and time.monotonic() < deadline:
            time.sleep(0.01)
    assert recorder.names()[-1] == "task.finished"


def test_duration_stops_at_the_last_body_byte(
    probe_client: TestClient, recorder: Recorder, logs: LogCapture
) -> None:
    """The access log times what the client waited for, not the background task after
    it. A clock stopped after `await app(...)` would include the task's second."""
    recorder.values["task_seconds"] = 1.0
    started = time.monotonic()
    probe_client.post("/probe/slow-task")
    assert time.monotonic() - started >= 1.0  # TestClient waits for the task
    (line,) = [r for r in access_records(logs) if r["http"]["path"] == "/probe/slow-task"]
    assert line["http"]["duration_ms"] < 500


# Request id ------------------------------------------------------------------------------


def test_a_new_request_id_is_made_and_returned(client: TestClient) -> None:
    response = client.get("/health/live")
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])
    assert response.headers["x-request-id"] != client.get("/health/live").headers["x-request-id"]


def test_a_valid_incoming_request_id_is_kept(client: TestClient) -> None:
    response = client.get("/health/live", headers={"X-Request-ID": "edge-42.a:b"})
    assert response.headers["x-request-id"] == "edge-42.a:b"


@pytest.mark.parametrize(
    "malformed",
    ["abc\r\nX-Forged: 1", "has space", "x" * 129, "", "caf\u00e9"],
    ids=["crlf", "space", "too-long", "empty", "non-ascii"],
)
async def test_a_malformed_request_id_is_replaced(probe_app: FastAPI, malformed: str) -> None:
    response = await call_app(
        probe_app, "GET", "/probe/async", headers=(*AUTH, ("X-Request-ID", malformed))
    )
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])
    assert json.loads(response.body) == {"request_id": response.headers["x-request-id"]}


def test_request_id_reaches_endpoints_and_their_background_tasks(
    probe_client: TestClient, recorder: Recorder
) -> None:
    """Async and sync endpoints, async and sync tasks (the sync one in the threadpool)
    all see the id. Behind a BaseHTTPMiddleware, a value set in the endpoint would not
    reach the middleware after `call_next`; here the one context flows through."""
    sent = {"X-Request-ID": "trace-async"}
    assert probe_client.get("/probe/async", headers=sent).json() == {"request_id": "trace-async"}
    assert recorder.values["async_task_id"] == "trace-async"
    assert recorder.values["sync_task_id"] == "trace-async"
    assert recorder.values["sync_task_thread"] != "MainThread"
    sync = probe_client.get("/probe/sync", headers={"X-Request-ID": "trace-sync"})
    assert sync.json() == {"request_id": "trace-sync"}


def test_every_log_line_of_a_request_carries_its_id(client: TestClient, logs: LogCapture) -> None:
    logs.clear()
    response = client.post(
        "/notifications",
        json={"email": "ada@example.com", "message": "hello"},
        headers={"X-Request-ID": "trace-notify"},
    )
    assert response.status_code == 202
    # Every line the service wrote; the test client's own `httpx2` lines are not its.
    records = [r for r in logs.records() if not r["logger"].startswith("httpx")]
    assert {r["logger"].rsplit(".", 1)[-1] for r in records} >= {"access", "notify"}
    assert [r for r in records if r["request_id"] != "trace-notify"] == []


def test_the_servers_own_access_log_carries_the_id(app: FastAPI, logs: LogCapture) -> None:
    """uvicorn logs its access line from inside the request's task, so the filter sees
    the id there too (its logger is quiet by default; the middleware's line replaces it)."""
    server_access = logging.getLogger("uvicorn.access")
    server_access.setLevel(logging.INFO)
    try:
        with live_server(app) as url:
            httpx.get(f"{url}/health/live", headers={"X-Request-ID": "trace-server"})
    finally:
        server_access.setLevel(logging.WARNING)
    server_lines = [r for r in logs.records() if r["logger"] == "uvicorn.access"]
    assert server_lines
    assert {r["request_id"] for r in server_lines} == {"trace-server"}


def test_websockets_get_the_request_id(probe_client: TestClient) -> None:
    with probe_client.websocket_connect(
        "/probe/ws", headers={**AUTH_HEADERS, "X-Request-ID": "trace-ws"}
    ) as websocket:
        assert websocket.receive_text() == "trace-ws"


# Data flowing back up, disconnects, errors, lifespan ----------------------------------------


def test_endpoint_data_reaches_the_access_log_through_scope_state(
    probe_client: TestClient, logs: LogCapture
) -> None:
    """The endpoint writes to `scope["state"]`, which every layer shares. A
    BaseHTTPMiddleware's `call_next` sees the endpoint's context variables only as they
    were before the call, so this is the channel that works."""
    probe_client.get("/probe/state")
    (line,) = [r for r in access_records(logs) if r["http"]["path"] == "/probe/state"]
    assert line["http"]["probe"] == "from-the-endpoint"
    assert "probe=from-the-endpoint" in line["message"]


async def test_the_handler_sees_the_client_leave(probe_app: FastAPI, recorder: Recorder) -> None:
    """`request.is_disconnected()` turns true once the client leaves. Behind a
    BaseHTTPMiddleware it never does, and the handler would work for nobody."""
    await call_app(probe_app, "GET", "/probe/until-disconnect", headers=AUTH, disconnect_after=0.2)
    assert "endpoint.saw-disconnect" in recorder.names()


def test_an_unhandled_error_is_a_json_500_with_the_request_id(probe_app: FastAPI) -> None:
    """Starlette's error handler sits outside any `add_middleware` layer, so its 500
    would carry none of their headers. Our stack wraps the error handler too."""
    with TestClient(probe_app, headers=AUTH_HEADERS, raise_server_exceptions=False) as client:
        response = client.get("/probe/boom", headers={"X-Request-ID": "trace-boom"})
    assert response.status_code == 500
    assert response.json() == {"detail": "Internal Server Error", "request_id": "trace-boom"}
    assert response.headers["x-request-id"] == "trace-boom"
    assert "server-timing" in response.headers
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_lifespan_runs_through_the_whole_stack(app: FastAPI) -> None:
    """Every layer passes the lifespan scope on. One that drops it, or fails on it,
    makes uvicorn log a line and start without the lifespan: the service would never
    report ready."""

    async def while_running() -> None:
        assert app.state.started is True
        response = await call_app(app, "GET", "/health/ready", headers=AUTH)
        assert response.status == 200, response.body

    replies = await run_lifespan(app, while_running)
    assert replies == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert app.state.started is False


def test_every_response_has_timing_and_security_headers(probe_client: TestClient) -> None:
    for response in (probe_client.get("/health/live"), probe_client.get("/nowhere")):
        assert re.fullmatch(r"app;dur=\d+\.\d", response.headers["server-timing"])
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["content-security-policy"].startswith("default-src 'none'")
    assert "content-security-policy" not in probe_client.get("/docs").headers


# Body size limit ---------------------------------------------------------------------------


@pytest.fixture
def small_limit_app(logs: LogCapture, recorder: Recorder) -> FastAPI:
    from tests.probes import probe_router

    application = create_app(make_settings(max_request_body_bytes=100))
    logs.install()
    application.include_router(probe_router(recorder))
    return application


def test_413_by_content_length_before_the_endpoint_runs(
    small_limit_app: FastAPI, recorder: Recorder
) -> None:
    with TestClient(small_limit_app, headers=AUTH_HEADERS) as client:
        response = client.post("/probe/body", json={"padding": "x" * 200})
        assert client.post("/probe/body", json={"small": 1}).status_code == 200
    assert response.status_code == 413
    assert response.json() == {"detail": "Content Too Large"}
    assert "x-request-id" in response.headers
    assert recorder.names() == ["endpoint.ran"]  # only the small request got through


@pytest.mark.parametrize(
    ("http_version", "framing"),
    [("1.1", [("transfer-encoding", "chunked")]), ("2", [])],
    ids=["http1-chunked", "http2-no-length"],
)
async def test_413_for_a_streamed_body_before_the_endpoint_runs(
    small_limit_app: FastAPI,
    recorder: Recorder,
    http_version: str,
    framing: list[tuple[str, str]],
) -> None:
    """No Content-Length: the limit is counted while the body streams in, whether
    HTTP/1.1 chunks it or HTTP/2 sends it without declaring a length."""
    chunks = [b'{"padding": "', b"x" * 60, b"x" * 60, b'"}']
    response = await call_app(
        small_limit_app,
        "POST",
        "/probe/body",
        headers=(*AUTH, ("content-type", "application/json"), *framing),
        body_chunks=chunks,
        http_version=http_version,
    )
    assert response.status == 413
    assert json.loads(response.body) == {"detail": "Content Too Large"}
    assert "x-request-id" in response.headers
    assert recorder.names() == []


async def test_a_streamed_body_within_the_limit_reaches_the_endpoint(
    small_limit_app: FastAPI, recorder: Recorder
) -> None:
    response = await call_app(
        small_limit_app,
        "POST",
        "/probe/body",
        headers=(*AUTH, ("content-type", "application/json"), ("transfer-encoding", "chunked")),
        body_chunks=[b'{"small":', b" 1}"],
    )
    assert response.status == 200
    assert recorder.names() == ["endpoint.ran"]
