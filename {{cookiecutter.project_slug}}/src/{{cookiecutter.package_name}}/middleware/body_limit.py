"""413 for a request whose declared `Content-Length` is over the limit, before the app
runs or a byte of the body is read.

Bodies without a `Content-Length` (chunked uploads) are counted as they stream in by
FastAPI's own `max_body_size`, which the app factory sets to the same limit: that
limit needs the app to read the body, and answers a declared oversize in plain text.
"""

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from .asgi_headers import request_header


class ContentLengthLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = request_header(scope, b"content-length") or b""
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            response = JSONResponse({"detail": "Content Too Large"}, status_code=413)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
