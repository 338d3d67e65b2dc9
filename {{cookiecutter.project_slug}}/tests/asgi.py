"""A raw ASGI harness: drive the app message by message, with control over timing
that `TestClient` hides (it waits for background tasks before it returns)."""

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.types import ASGIApp, Message

Events = list[tuple[float, str]]


@dataclass
class RawResponse:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    # (time, what) for each message the app sent, and for anything tests add.
    events: Events = field(default_factory=list)


async def call_app(
    app: ASGIApp,
    method: str = "GET",
    path: str = "/",
    *,
    headers: Sequence[tuple[str, str]] = (),
    body_chunks: Sequence[bytes] = (),
    disconnect_after: float | None = None,
    slow_send: float = 0.0,
    events: Events | None = None,
    http_version: str = "1.1",
) -> RawResponse:
    """Send one HTTP request through `app`.

    `body_chunks` arrive as separate `http.request` messages (a chunked upload);
    `disconnect_after` makes the client leave that many seconds after its body;
    `slow_send` makes every `send` of a body message take that long (a slow network).
    """
    response = RawResponse(events=events if events is not None else [])
    chunks = list(body_chunks) or [b""]
    inbox: list[Message] = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]
    body_sent = anyio.Event()
    client_left = anyio.Event()

    async def receive() -> Message:
        # Like a server: answer at once when the outcome is known (a handler's
        # `is_disconnected()` asks with an already-cancelled scope), else wait.
        if inbox:
            message = inbox.pop(0)
            if not inbox:
                body_sent.set()
            return message
        if not client_left.is_set():
            await client_left.wait()
        return {"type": "http.disconnect"}

    async def leave_later(delay: float) -> None:
        await body_sent.wait()
        await anyio.sleep(delay)
        response.events.append((time.monotonic(), "client.disconnect"))
        client_left.set()

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            response.status = message["status"]
            response.headers = {k.decode().lower(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            if slow_send:
                await anyio.sleep(slow_send)
            response.body += message.get("body", b"")
            if not message.get("more_body", False):
                response.events.append((time.monotonic(), "response.complete"))
                return
        response.events.append((time.monotonic(), message["type"]))

    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": http_version,
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": {},
    }
    async with anyio.create_task_group() as client:
        if disconnect_after is not None:
            client.start_soon(leave_later, disconnect_after)
        await app(scope, receive, send)
        client.cancel_scope.cancel()
    return response


async def run_lifespan(app: ASGIApp, body: Callable[[], Awaitable[None]]) -> list[str]:
    """Run `body` between lifespan start-up and shut-down; return the lifespan
    messages the app sent."""
    to_app_send, to_app_receive = anyio.create_memory_object_stream[Message](2)
    replies: list[str] = []
    started = anyio.Event()

    async def send(message: Message) -> None:
        replies.append(message["type"])
        started.set()

    async def serve() -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        await app(scope, to_app_receive.receive, send)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(serve)
        await to_app_send.send({"type": "lifespan.startup"})
        with anyio.fail_after(5):
            await started.wait()
        await body()
        await to_app_send.send({"type": "lifespan.shutdown"})
    return replies
