"""Give every request an id: keep a valid incoming `X-Request-ID`, else make one."""

import os
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..context import request_id_var
from .asgi_headers import request_header

REQUEST_ID_HEADER = "X-Request-ID"
# What a well-behaved proxy or client sends: UUIDs, hex, ULIDs and the like. Anything
# else (CR/LF, spaces, very long values) could forge log lines or bloat them.
VALID_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")


def new_request_id() -> str:
    # 32 hex digits of the OS's randomness, as `uuid.uuid4().hex` has (less its 6 fixed
    # bits), without building a UUID object: a few microseconds less per request.
    return os.urandom(16).hex()


class RequestIdMiddleware:
    """Set the request id in the request's context (`request_id_var`) and response.

    HTTP and websocket scopes get an id; lifespan passes through untouched.
    """

    def __init__(self, app: ASGIApp, header_name: str = REQUEST_ID_HEADER) -> None:
        self.app = app
        self.header_key = header_name.lower().encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return

        incoming = request_header(scope, self.header_key)
        if incoming is not None and VALID_REQUEST_ID.match(incoming):
            request_id = incoming.decode("ascii")
        else:
            request_id = new_request_id()
        header = (self.header_key, request_id.encode("ascii"))

        async def send_with_request_id(message: Message) -> None:
            if message["type"] in ("http.response.start", "websocket.accept"):
                # Ours replaces any the app set: the header must match the log lines.
                headers = [(k, v) for k, v in message.get("headers", ()) if k != self.header_key]
                message["headers"] = [*headers, header]
            await send(message)

        token = request_id_var.set(request_id)
        await self.app(scope, receive, send_with_request_id)
        # Reset only on success: when the app raises, the server logs the error after
        # this returns, and that line should carry the id too. Each request runs in its
        # own task, so the value cannot leak into another request.
        request_id_var.reset(token)
