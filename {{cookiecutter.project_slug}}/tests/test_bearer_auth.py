"""The bearer-token middleware rejects early, with a 401 it sends itself.

An `HTTPException` raised in middleware would be a 500 instead of these 401s (the
middleware runs outside FastAPI's exception handlers; the last test shows it). A
`BaseHTTPMiddleware` sees HTTP requests only: a websocket would pass it unchecked
(`test_websockets_without_the_token_are_refused` would fail), and it runs the
endpoint in another task, at about 200 us a request.
"""

import pytest
from fastapi import FastAPI, HTTPException
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Receive, Scope, Send

from {{ cookiecutter.package_name }}.middleware import bearer_auth
from tests.probes import Recorder
from tests.support import API_TOKEN


@pytest.fixture
def anonymous(probe_app: FastAPI) -> TestClient:
    return TestClient(probe_app)


@pytest.mark.parametrize(
    ("authorization", "error"),
    [
        (None, None),
        ("Bearer wrong-token-0123456789", "invalid_token"),
        (f"Basic {API_TOKEN}", "invalid_token"),
        (f"Bearer {API_TOKEN}x", "invalid_token"),
    ],
    ids=["missing", "wrong", "other-scheme", "near-miss"],
)
def test_requests_without_the_token_get_401_and_never_reach_the_app(
    anonymous: TestClient, recorder: Recorder, authorization: str | None, error: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = anonymous.post("/probe/body", json={"a": 1}, headers=headers)
    assert response.status_code == 401
    assert response.json() == {"detail": "Missing or invalid bearer token"}
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="api"')
    assert (f'error="{error}"' in challenge) if error else ("error" not in challenge)
    assert "x-request-id" in response.headers  # outer layers still decorate the 401
    assert recorder.names() == []


def test_the_right_token_passes(anonymous: TestClient, recorder: Recorder) -> None:
    response = anonymous.post(
        "/probe/body", json={"a": 1}, headers={"Authorization": f"bearer {API_TOKEN}"}
    )
    assert response.status_code == 200
    assert recorder.names() == ["endpoint.ran"]


def test_health_checks_need_no_token(anonymous: TestClient) -> None:
    with anonymous:
        assert anonymous.get("/health/live").status_code == 200
        assert anonymous.get("/health/ready").status_code == 200


def test_websockets_without_the_token_are_refused(anonymous: TestClient) -> None:
    from starlette.websockets import WebSocketDisconnect

    with pytest.raises(WebSocketDisconnect) as refused, anonymous.websocket_connect("/probe/ws"):
        pass
    assert refused.value.code == 1008


class RaisingAuthMiddleware:
    """The tempting wrong way: raise HTTPException from middleware."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raise HTTPException(status_code=401, detail="nope")
        await self.app(scope, receive, send)


def test_raising_httpexception_in_middleware_is_a_500_which_is_why_we_send_a_401() -> None:
    """Middleware runs outside FastAPI's exception handlers: a raised HTTPException
    is an unhandled error there. BearerAuthMiddleware sends its response instead."""
    wrong = FastAPI()
    wrong.add_middleware(RaisingAuthMiddleware)
    with TestClient(wrong, raise_server_exceptions=False) as client:
        assert client.get("/").status_code == 500

    right = FastAPI()
    right.add_middleware(bearer_auth.BearerAuthMiddleware, token=API_TOKEN)
    with TestClient(right) as client:
        assert client.get("/").status_code == 401
