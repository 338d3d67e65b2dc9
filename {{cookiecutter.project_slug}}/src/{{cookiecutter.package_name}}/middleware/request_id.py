"""Give every request an id: keep a valid incoming `X-Request-ID`, else make one."""

import re
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..context import request_id_var

REQUEST_ID_HEADER = "X-Request-ID"
# What a well-behaved proxy or client sends: UUIDs, hex, ULIDs and the like. Anything
# else (CR/LF, spaces, very long values) could forge log lines or bloat them.
VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def new_request_id() -> str:
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """Set the request id in the request's context (`request_id_var`) and response.

    HTTP and websocket scopes get an id; lifespan passes through untouched.
    """

    def __init__(self, app: ASGIApp, header_name: str = REQUEST_ID_HEADER) -> None:
        self.app = app
        self.header_name = header_name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return

        incoming = Headers(scope=scope).get(self.header_name)
        request_id = incoming if incoming and VALID_REQUEST_ID.match(incoming) else new_request_id()

        async def send_with_request_id(message: Message) -> None:
            if message["type"] in ("http.response.start", "websocket.accept"):
                headers = MutableHeaders(scope=message)
                headers[self.header_name] = request_id
            await send(message)

        token = request_id_var.set(request_id)
        await self.app(scope, receive, send_with_request_id)
        # Reset only on success: when the app raises, the server logs the error after
        # this returns, and that line should carry the id too. Each request runs in its
        # own task, so the value cannot leak into another request.
        request_id_var.reset(token)
