"""What every request needs at the edge of the service, in one pure-ASGI layer, in order:

1. its id (`request_id.py`): in `request_id_var` for every log line, and in the response;
2. the body-size limit (`body_limit.py`): a declared oversize body is refused before the
   app runs, a body without a declared length is counted as it streams in;
3. the response headers: `X-Request-ID`, `Server-Timing` and the security headers
   (`security_headers.py`);
4. the access log line (`access_log.py`), when the last body byte is sent;
5. the HTTP metrics (`metrics.py`), when the last body byte is sent too.

Why one layer for all: as four layers, each a coroutine frame per request and a call
per message, each scanning the request headers and rebuilding the response's on its
own, the first four added about 67,000 instructions to a request; this one adds about
31,000, 9% of a bare FastAPI request (counted by callgrind, which a busy machine
cannot sway: bench/instructions.py). The metrics add 18,000 more here, 29,500 as a
layer of their own (middleware/metrics.py).
Each concern keeps its module; this class runs them, with one look at the request
headers and one at the response's.

It wraps the whole FastAPI app, Starlette's error handler included, so the 500 that
handler sends, the 413 of the body limit and the 401 of an auth layer inside it all
carry the id and the headers, are counted, and are logged with the status the client
really got.
"""

import time
from collections.abc import Collection, Iterable
from logging import INFO
from typing import TYPE_CHECKING

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..context import request_id_var
from .access_log import INCOMPLETE, write_access_line
from .access_log import logger as access_logger
from .body_limit import StreamedBodyLimit, declared_too_large, send_too_large
from .metrics import route_of
from .request_id import REQUEST_ID_KEY, request_id_for
from .security_headers import DOCS_PATHS, SecurityHeaders

if TYPE_CHECKING:  # imported for real by the metrics setup, which must come first
    from ..observability.metric_families import HttpMetrics

CONTENT_LENGTH = b"content-length"
TRANSFER_ENCODING = b"transfer-encoding"
SERVER_TIMING = b"server-timing"
HTTP_1 = ("1.1", "1.0")
RawPair = tuple[bytes, bytes]


class EdgeMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        relaxed_csp_paths: Collection[str] = DOCS_PATHS,
        metrics: "HttpMetrics | None" = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self.security_headers = SecurityHeaders(relaxed_csp_paths)
        # An app's response rarely sets any of these; when it does, see `merged_headers`.
        self.added_names = frozenset({REQUEST_ID_KEY, SERVER_TIMING, *self.security_headers.names})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await self.websocket(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return

        started = time.perf_counter()
        # One dict of the request headers (built in C) answers every lookup below.
        request_headers = dict(scope["headers"])
        request_id = request_id_for(request_headers.get(REQUEST_ID_KEY))
        id_header = (REQUEST_ID_KEY, request_id.encode("ascii"))
        status = 0
        finished = False  # the last body byte is sent, the access line written, counted
        metrics = self.metrics

        async def send_from_edge(message: Message) -> None:
            nonlocal status, finished
            if message["type"] == "http.response.start":
                status = message["status"]
                timing = (SERVER_TIMING, b"app;dur=%.1f" % ((time.perf_counter() - started) * 1000))
                # Always a new list: the app may send any iterable, or one list it
                # reuses for every response, which must not grow with each.
                headers = list(message.get("headers", ()))
                if self.added_names.isdisjoint(dict(headers)):
                    headers += self.security_headers.for_scope(scope)
                    headers.append(id_header)
                    headers.append(timing)
                else:
                    headers = merged_headers(
                        headers, self.security_headers.for_scope(scope), id_header, timing
                    )
                message["headers"] = headers
                await send(message)
                return
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                finished = True
                elapsed = time.perf_counter() - started
                if access_logger.isEnabledFor(INFO):
                    write_access_line(scope, status, elapsed * 1000)
                if metrics is not None:
                    metrics.observe(scope["method"], route_of(scope), status, elapsed)

        content_length = request_headers.get(CONTENT_LENGTH)
        streamed: StreamedBodyLimit | None = None
        token = request_id_var.set(request_id)
        if metrics is not None:
            metrics.active += 1
            if metrics.shared_in_flight is not None:  # several server workers
                metrics.shared_in_flight.inc()
        try:
            if content_length is None and (
                TRANSFER_ENCODING in request_headers or scope.get("http_version") not in HTTP_1
            ):
                # A body with no declared length (HTTP/1 sends one only chunked, RFC
                # 9112 6.3; HTTP/2 may send one either way) is counted as it comes.
                streamed = StreamedBodyLimit(receive, send_from_edge, self.max_body_bytes)
                await self.app(scope, streamed.receive, streamed.send)
            elif declared_too_large(content_length, self.max_body_bytes):
                await send_too_large(send_from_edge)  # and the app never runs
            else:
                # A declared length is enforced by the server: it reads no more.
                await self.app(scope, receive, send_from_edge)
        except ClientDisconnect:
            if streamed is None or not streamed.refused:  # not the body cut off here
                raise
        finally:
            if metrics is not None:
                metrics.active -= 1
                if metrics.shared_in_flight is not None:
                    metrics.shared_in_flight.dec()
            # The app raised, or the client left mid-response.
            if not finished:
                elapsed = time.perf_counter() - started
                if access_logger.isEnabledFor(INFO):
                    write_access_line(scope, status, elapsed * 1000, INCOMPLETE)
                if metrics is not None and status:  # a response began: count what it was
                    metrics.observe(scope["method"], route_of(scope), status, elapsed)
        # Reset only on success: when the app raises, the server logs the error after
        # this returns, and that line should carry the id too. Each request runs in its
        # own task, so the value cannot leak into another request.
        request_id_var.reset(token)

    async def websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A websocket gets an id too, in its context and its `websocket.accept`."""
        request_id = request_id_for(dict(scope["headers"]).get(REQUEST_ID_KEY))
        id_header = (REQUEST_ID_KEY, request_id.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "websocket.accept":
                headers = [pair for pair in message.get("headers", ()) if pair[0] != REQUEST_ID_KEY]
                message["headers"] = [*headers, id_header]
            await send(message)

        token = request_id_var.set(request_id)
        await self.app(scope, receive, send_with_id)
        request_id_var.reset(token)


def merged_headers(
    sent: Iterable[RawPair], security: Iterable[RawPair], request_id: RawPair, timing: RawPair
) -> list[RawPair]:
    """The app's headers, less any `X-Request-ID` of its own (the header must match the
    log lines), plus each security header it did not set, the id and the timing."""
    headers = [pair for pair in sent if pair[0] != REQUEST_ID_KEY]
    present = {name for name, _ in headers}
    headers += [pair for pair in security if pair[0] not in present]
    headers.append(request_id)
    headers.append(timing)
    return headers
