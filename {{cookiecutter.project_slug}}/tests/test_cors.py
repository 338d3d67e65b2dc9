"""CORS (CORS_ALLOW_ORIGINS): preflights answered before auth, errors a browser can read.

Starlette's `CORSMiddleware` is pure ASGI and sits outside every other layer. Inside
the auth layer, a preflight (a browser never sends a token with one) would get 401
and the browser would never send the real request; inside the edge layer, its 413
and Starlette's 500 would lack `Access-Control-Allow-Origin`, and the page would see
a bare network error. An auth check that raised `HTTPException` in a middleware would
answer the preflight 500, not 401; a `BaseHTTPMiddleware` CORS layer would cost about
0.2 ms a request, Starlette's pure one a few microseconds.
"""

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from {{ cookiecutter.package_name }}.factory import create_app
from tests import support
from tests.probes import Recorder, probe_router
from tests.support import AUTH_HEADERS, make_settings

ORIGIN = "https://app.example.com"
OTHER_ORIGIN = "https://evil.example.net"
PREFLIGHT = {
    "Origin": ORIGIN,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
}


@pytest.fixture
def browser() -> Iterator[TestClient]:
    """A client for a CORS-enabled app that sends no token unless told to."""
    app = create_app(make_settings(cors_allow_origins=ORIGIN, max_request_body_bytes=1024))
    app.include_router(probe_router(Recorder()))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def test_a_preflight_is_answered_without_a_token(browser: TestClient) -> None:
    response = browser.options("/reports", headers=PREFLIGHT)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in response.headers["access-control-allow-methods"]
    allowed = response.headers["access-control-allow-headers"].lower()
    assert {"authorization", "content-type", "idempotency-key"} <= set(allowed.split(", "))
    assert "access-control-allow-credentials" not in response.headers  # off by default


def test_an_origin_not_listed_gets_no_cors_headers(browser: TestClient) -> None:
    preflight = browser.options("/reports", headers={**PREFLIGHT, "Origin": OTHER_ORIGIN})
    assert preflight.status_code == 400
    assert "access-control-allow-origin" not in preflight.headers
    response = browser.get("/health/live", headers={"Origin": OTHER_ORIGIN})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


def test_a_script_may_read_the_request_id_and_timing(browser: TestClient) -> None:
    response = browser.get("/health/live", headers={"Origin": ORIGIN})
    assert response.headers["access-control-allow-origin"] == ORIGIN
    exposed = response.headers["access-control-expose-headers"].lower().split(", ")
    for name in ("x-request-id", "server-timing", "location", "retry-after", "ratelimit-reset"):
        assert name in exposed


def test_the_edge_layers_413_carries_cors_headers(browser: TestClient) -> None:
    response = browser.post(
        "/reports", content=b"x" * 2048, headers={"Origin": ORIGIN, **AUTH_HEADERS}
    )
    assert response.status_code == 413
    assert response.headers["access-control-allow-origin"] == ORIGIN


def test_a_500_carries_cors_headers(browser: TestClient) -> None:
    response = browser.get("/probe/boom", headers={"Origin": ORIGIN, **AUTH_HEADERS})
    assert response.status_code == 500
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert response.headers["x-request-id"]


{% if cookiecutter.auth != "none" -%}
def test_a_401_carries_cors_headers(browser: TestClient) -> None:
    """The browser can read why it was refused."""
    response = browser.get("/jobs/some-job", headers={"Origin": ORIGIN})
    assert response.status_code == 401
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "www-authenticate" in response.headers


{% endif -%}
def test_without_origins_there_are_no_cors_headers(client: TestClient) -> None:
    response = client.get("/health/live", headers={"Origin": ORIGIN})
    assert response.status_code == 200
    assert not [name for name in response.headers if name.startswith("access-control-")]
    preflight = client.options("/reports", headers=PREFLIGHT)
    assert not [name for name in preflight.headers if name.startswith("access-control-")]


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"CORS_ALLOW_ORIGINS": "*", "CORS_ALLOW_CREDENTIALS": "true"}, "CORS_ALLOW_CREDENTIALS"),
        ({"CORS_ALLOW_ORIGINS": "https://app.example.com/"}, "CORS_ALLOW_ORIGINS"),
        ({"CORS_ALLOW_ORIGINS": ORIGIN, "CORS_ALLOW_METHODS": "GET,FETCH"}, "CORS_ALLOW_METHODS"),
    ],
)
def test_a_bad_cors_setting_stops_the_server_with_one_line(
    env: dict[str, str], named: str, tmp_path: Path
) -> None:
    port = str(support.free_port())
    command = [sys.executable, "-m", "uvicorn", f"{support.PACKAGE}.main:app", "--port", port]
    done = subprocess.run(
        command,
        env={**support.with_source_on_path(os.environ), **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = (done.stdout + done.stderr).splitlines()
    assert done.returncode != 0
    assert len(lines) == 1, lines
    assert named in lines[0]
    assert "Traceback" not in lines[0]
