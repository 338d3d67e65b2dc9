"""The layers read and write raw ASGI header pairs (see `middleware/asgi_headers.py`).
These pin down what `starlette.datastructures.MutableHeaders` did for them, on a bare
ASGI app that sends exactly the headers a test gives it."""

import re
from collections.abc import Callable, Iterable

import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from {{ cookiecutter.package_name }}.middleware import edge

pytestmark = pytest.mark.anyio
RawPairs = list[tuple[bytes, bytes]]
ADDED_BY_THE_STACK = {
    b"x-request-id",
    b"server-timing",
    b"x-content-type-options",
    b"x-frame-options",
    b"referrer-policy",
    b"cross-origin-opener-policy",
    b"cross-origin-resource-policy",
    b"content-security-policy",
}


def app_sending(headers: Callable[[], Iterable[tuple[bytes, bytes]]]) -> ASGIApp:
    """An app that answers 200 with the headers `headers()` returns, as they are."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": headers()})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def stack(app: ASGIApp) -> ASGIApp:
    """The layer that adds response headers."""
    return edge.EdgeMiddleware(app, max_body_bytes=1024)


async def response_headers(
    app: ASGIApp, path: str = "/", scheme: str = "http", request: RawPairs | None = None
) -> RawPairs:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "scheme": scheme,
        "headers": request or [],
        "state": {},
    }
    await app(scope, receive, send)
    assert sent[0]["type"] == "http.response.start"
    return list(sent[0]["headers"])


def names(headers: RawPairs) -> list[bytes]:
    return [name for name, _ in headers]


async def test_an_endpoints_own_security_header_wins() -> None:
    own = [(b"x-frame-options", b"SAMEORIGIN"), (b"content-security-policy", b"default-src 'self'")]
    headers = await response_headers(stack(app_sending(lambda: own)))
    assert headers[:2] == own  # kept, first, not duplicated
    assert sorted(names(headers)) == sorted(ADDED_BY_THE_STACK)
    assert (b"x-content-type-options", b"nosniff") in headers


@pytest.mark.parametrize(
    ("path", "scheme", "csp", "hsts"),
    [
        ("/health/live", "http", True, False),
        ("/health/live", "https", True, True),
        ("/docs", "https", False, True),
        ("/redoc", "http", False, False),
        ("/docs/oauth2-redirect", "http", False, False),
    ],
)
async def test_csp_is_relaxed_for_the_docs_and_hsts_sent_only_over_https(
    path: str, scheme: str, csp: bool, hsts: bool
) -> None:
    app = stack(app_sending(list))
    sent = names(await response_headers(app, path=path, scheme=scheme))
    assert (b"content-security-policy" in sent) is csp
    assert (b"strict-transport-security" in sent) is hsts
    assert len(sent) == len(set(sent))


@pytest.mark.parametrize(
    "make_headers",
    [tuple, lambda: iter([(b"content-type", b"text/plain")])],
    ids=["tuple", "iterator"],
)
async def test_headers_sent_as_any_iterable_get_every_header_added(
    make_headers: Callable[[], Iterable[tuple[bytes, bytes]]],
) -> None:
    """ASGI lets an app send any iterable of pairs; the layer reads it only once."""
    sent = names(await response_headers(stack(app_sending(make_headers))))
    assert set(sent) - {b"content-type"} == ADDED_BY_THE_STACK
    assert len(sent) == len(set(sent))


async def test_a_header_list_the_app_reuses_is_left_as_it_was() -> None:
    """A module-level `Response` sends the same list every time: a layer that appended
    to it in place would add its headers again on every request."""
    shared = [(b"content-type", b"text/plain")]
    app = stack(app_sending(lambda: shared))
    for _ in range(2):
        sent = names(await response_headers(app))
        assert sorted(sent) == sorted({b"content-type"} | ADDED_BY_THE_STACK)
    assert shared == [(b"content-type", b"text/plain")]


@pytest.mark.parametrize(
    "incoming", [None, b"edge-42.a:b", b"bad id"], ids=["no-header", "valid", "malformed"]
)
async def test_the_request_id_replaces_one_the_app_set(incoming: bytes | None) -> None:
    """The header must name the id on the request's log lines, whatever the app sent."""
    app = stack(app_sending(lambda: [(b"x-request-id", b"from-the-app")]))
    request = [(b"x-request-id", incoming)] if incoming is not None else []
    headers = await response_headers(app, request=request)
    (request_id,) = [value for name, value in headers if name == b"x-request-id"]
    if incoming == b"edge-42.a:b":
        assert request_id == incoming
    else:
        assert re.fullmatch(rb"[0-9a-f]{32}", request_id)


async def test_server_timing_is_added_once_in_tenths_of_a_millisecond() -> None:
    headers = await response_headers(stack(app_sending(list)))
    (timing,) = [value for name, value in headers if name == b"server-timing"]
    assert re.fullmatch(rb"app;dur=\d+\.\d", timing)
