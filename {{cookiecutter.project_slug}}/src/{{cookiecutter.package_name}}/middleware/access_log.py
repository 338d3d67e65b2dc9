"""One log line per request, written by the edge layer when the last body byte is sent.

The clock stops at the final `http.response.body`, not when the app returns: the app
returns only after its background tasks, which the client never waits for.
"""

import logging
from typing import Any

from starlette.requests import HTTPConnection
from starlette.types import Scope

from ..context import subject_var

# `<package>.access`: one name to filter or silence access lines by.
logger = logging.getLogger(__name__.partition(".")[0] + ".access")

# Where an endpoint leaves fields for the access line; see `add_access_log_fields`.
ACCESS_LOG_FIELDS_KEY = "access_log_fields"
INCOMPLETE = " (response incomplete)"


def add_access_log_fields(connection: HTTPConnection, **fields: Any) -> None:
    """Attach fields to this request's access log line (e.g. the id of a job it queued).

    They travel up through `scope["state"]`, the one object the endpoint and every
    middleware share, so no context variable has to cross the task boundary.
    """
    state = connection.scope.setdefault("state", {})
    state.setdefault(ACCESS_LOG_FIELDS_KEY, {}).update(fields)


def write_access_line(scope: Scope, status: int, duration_ms: float, outcome: str = "") -> None:
    """`GET /path 200 1.2ms client=203.0.113.7 key=value...`, with the same as `http`
    fields for JSON lines.

    Call it when `logger.isEnabledFor(logging.INFO)`: the caller asks, once, so that a
    service logging at WARNING pays nothing more for the line.
    """
    method, path = scope["method"], scope["path"]
    # The client's address; behind a proxy FORWARDED_ALLOW_IPS trusts, the one it reports.
    client = scope.get("client")
    address = client[0] if client else "-"
    http = {
        "method": method,
        "path": path,
        "status": status,
        "duration_ms": round(duration_ms, 3),
        "client": address,
    }
    extra_text = ""
    if fields := scope.get("state", {}).get(ACCESS_LOG_FIELDS_KEY):
        http.update(fields)
        extra_text = "".join(f" {key}={value}" for key, value in fields.items())
    # The caller, for text lines too (JSON lines get the `subject` field in logs.py).
    if (subject := subject_var.get()) is not None:
        extra_text += f" subject={subject}"
    # The message is made here, once, by an f-string (cheaper than `%` formatting).
    message = f"{method} {path} {status} {duration_ms:.1f}ms client={address}{extra_text}{outcome}"
    # What `logger.info` does, less its walk up the stack for the caller's file and
    # line (several microseconds a line): this line always comes from here.
    record = logger.makeRecord(
        logger.name,
        logging.INFO,
        __file__,
        0,
        message,
        (),
        None,
        "write_access_line",
        {"http": http},
    )
    logger.handle(record)
