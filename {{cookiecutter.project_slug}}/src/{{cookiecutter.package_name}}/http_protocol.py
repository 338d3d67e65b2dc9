"""uvicorn's httptools protocol with a bound on each request's head: its size and its
number of header fields. The Dockerfile and `make dev` serve with it:

    uvicorn <package>.main:app --http <package>.http_protocol:BoundedHttpToolsProtocol

Why: httptools sets no limit. Without this, a 64 MB header got a 200, and ten
connections, each holding an unfinished 32 MB header, took the server from 51 MB to
436 MB of RSS before any middleware could see a request.

Why our own class (measured by the template's `bench/run.py`, part `limits`): uvicorn
has no header option for httptools, and `--http h11 --h11-max-incomplete-event-size`
bounds the size but not the number of fields, answers 400 instead of 431, and parses
in Python: a request to the generated app took 1.56 to 1.79 times the CPU (+93 to
+148 us), where this subclass took 1.00 to 1.05 times (+1 to +10 us, the more header
fields the more). Under ten unfinished 32 MB headers the server stayed at 53 MB of RSS
with either bound, and grew to 478 MB without. A reverse proxy that bounds headers
(nginx's `large_client_header_buffers`) is as good, where there is one.

What it does: it counts the bytes a request's head has taken so far, whether or not
the parser has finished a field, and the fields it has parsed. Past either limit it
answers 431 (Request Header Fields Too Large) with a JSON body and closes the
connection, so one connection holds at most the limit plus one read (256 KiB).
"""

import json
import logging
from functools import cache
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from .settings import Settings

logger = logging.getLogger(__name__)


@cache
def header_limits() -> tuple[int, int]:
    """(MAX_REQUEST_HEADER_BYTES, MAX_REQUEST_HEADERS), read once per process."""
    settings = Settings()
    return settings.max_request_header_bytes, settings.max_request_headers


class RequestHeadRefusedError(Exception):
    """Raised from a parser callback to stop httptools in the middle of a read."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_head_bytes, self.max_headers = header_limits()
        # Bytes read since the current request's head began; None while a body is read.
        self.head_bytes_read: int | None = 0
        self.header_fields = 0
        self.head_size = 0  # of the request's header fields parsed so far
        self.refusal: str | None = None

    def data_received(self, data: bytes) -> None:
        if self.refusal is not None:
            return
        if self.head_bytes_read is not None:
            self.head_bytes_read += len(data)
        super().data_received(data)
        # The parser keeps an unfinished field to itself: count what it has swallowed.
        if (
            self.refusal is None
            and self.head_bytes_read is not None
            and self.head_bytes_read > self.max_head_bytes
        ):
            self.refuse(f"request head over {self.max_head_bytes} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.header_fields = 0
        self.head_size = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_fields += 1
        self.head_size += len(name) + len(value) + 4  # ": " and CRLF
        if self.header_fields > self.max_headers:
            self.refuse(f"more than {self.max_headers} header fields")
            raise RequestHeadRefusedError(self.refusal)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        # A head that arrived whole in one read is measured here, exactly.
        if self.head_size + len(self.url) > self.max_head_bytes:
            self.refuse(f"request head over {self.max_head_bytes} bytes")
            raise RequestHeadRefusedError(self.refusal)
        self.head_bytes_read = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.head_bytes_read = 0  # a kept-alive connection's next request starts here

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers 400 to any error raised while parsing, ours included.
        if self.refusal is None:
            super().send_400_response(msg)

    def refuse(self, reason: str) -> None:
        """Answer 431 and close; nothing of this request reaches the app."""
        if self.refusal is not None:
            return
        self.refusal = reason
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "unknown client"
        logger.warning("431 to %s: %s", client, reason)
        body = json.dumps({"detail": f"Request header fields too large: {reason}"}).encode()
        head = [STATUS_LINE[431]]
        for name, value in self.server_state.default_headers:  # server, date
            head.append(name + b": " + value + b"\r\n")
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self.transport.close()
