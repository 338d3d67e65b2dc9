"""One log line per request, written when its last body byte is sent, and the
`Server-Timing` header.

The clock stops at the final `http.response.body`, not when the app returns: the app
returns only after its background tasks, which the client never waits for.
"""

import logging
import time
from typing import Any

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# `<package>.access`: one name to filter or silence access lines by.
logger = logging.getLogger(__name__.partition(".")[0] + ".access")

# Where an endpoint leaves fields for the access line; see `add_access_log_fields`.
ACCESS_LOG_FIELDS_KEY = "access_log_fields"


def add_access_log_fields(connection: HTTPConnection, **fields: Any) -> None:
    """Attach fields to this request's access log line (e.g. the id of a job it queued).

    They travel up through `scope["state"]`, the one object the endpoint and every
    middleware share, so no context variable has to cross the task boundary.
    """
    state = connection.scope.setdefault("state", {})
    state.setdefault(ACCESS_LOG_FIELDS_KEY, {}).update(fields)


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = time.perf_counter()
        status_code = 0
        logged = False

        def log_request(outcome: str = "") -> None:
            nonlocal logged
            logged = True
            if not logger.isEnabledFor(logging.INFO):
                return
            duration_ms = (time.perf_counter() - started) * 1000
            fields: dict[str, Any] = scope.get("state", {}).get(ACCESS_LOG_FIELDS_KEY, {})
            extra_text = "".join(f" {key}={value}" for key, value in fields.items())
            # What `logger.info` does, less its walk up the stack for the caller's file
            # and line (several microseconds a line): this line always comes from here.
            record = logger.makeRecord(
                logger.name,
                logging.INFO,
                __file__,
                0,
                "%s %s %s %.1fms%s%s",
                (scope["method"], scope["path"], status_code, duration_ms, extra_text, outcome),
                None,
                func="log_request",
                extra={
                    "http": {
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status_code,
                        "duration_ms": round(duration_ms, 3),
                        **fields,
                    }
                },
            )
            logger.handle(record)

        async def send_timed(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
                app_ms = (time.perf_counter() - started) * 1000
                timing = (b"server-timing", b"app;dur=%.1f" % app_ms)
                message["headers"] = [*message.get("headers", ()), timing]  # see asgi_headers
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                log_request()

        try:
            await self.app(scope, receive, send_timed)
        finally:
            if not logged:  # the app raised, or the client left mid-response
                log_request(" (response incomplete)")
