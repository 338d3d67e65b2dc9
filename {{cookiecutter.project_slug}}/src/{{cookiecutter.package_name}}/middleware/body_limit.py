"""The request body-size limit (`MAX_REQUEST_BODY_BYTES`), which the edge layer applies:
a declared `Content-Length` over it is refused before the app runs; a body without one
(a chunked upload) is counted as it streams in and refused at the byte that crosses it.

Both answer the same 413, sent here. Raising from `receive` would not do: FastAPI turns
any error while it reads the body into a 400. FastAPI's own `max_body_size` does the
same job in three wrappers per request (the app's, the router's and the route's:
measured at about 25 us on a GET with no body); here it is a header lookup the edge
layer makes anyway, and a counter only for a body without a declared length.
"""

import json

from starlette.types import Message, Receive, Send

from .asgi_headers import raw_headers

TOO_LARGE_BODY = json.dumps({"detail": "Content Too Large"}).encode()
TOO_LARGE_HEADERS = raw_headers(
    {"Content-Type": "application/json", "Content-Length": str(len(TOO_LARGE_BODY))}
)


def declared_too_large(content_length: bytes | None, max_body_bytes: int) -> bool:
    if content_length is None or not content_length.isdigit():
        return False
    return int(content_length) > max_body_bytes


async def send_too_large(send: Send) -> None:
    # New messages each time: the layers they pass through add headers to them.
    await send({"type": "http.response.start", "status": 413, "headers": list(TOO_LARGE_HEADERS)})
    await send({"type": "http.response.body", "body": TOO_LARGE_BODY})


class StreamedBodyLimit:
    """`receive` and `send` for an app whose request body has no declared length.

    `receive` counts the body; at the byte over the limit it sends the 413 (if the app
    has not begun its own response) and tells the app the client left. From then on
    `send` drops what the app sends: the client has its answer.
    """

    def __init__(self, receive: Receive, send: Send, max_body_bytes: int) -> None:
        self._receive = receive
        self._send = send
        self.max_body_bytes = max_body_bytes
        self.received = 0
        self.response_started = False
        self.refused = False

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.max_body_bytes:
                if not self.response_started:
                    await send_too_large(self._send)
                self.refused = True
                # What the app reads: the client is gone, as far as it is concerned.
                return {"type": "http.disconnect"}
        return message

    async def send(self, message: Message) -> None:
        if self.refused:
            return
        if message["type"] == "http.response.start":
            self.response_started = True
        await self._send(message)
