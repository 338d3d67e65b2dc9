"""Logging, configured once for the whole process: the service, uvicorn and libraries.

Every line carries the id of the request it belongs to (or `-` outside a request),
read from the request-id context variable by a filter on the one handler.
"""

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from .context import request_id_var

TEXT_FORMAT = "%(asctime)s %(levelname)-8s [%(request_id)s] %(name)s: %(message)s"

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class RequestIdFilter(logging.Filter):
    """Stamps each record with the current request id."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line, with the fields passed through `extra=` at the top level."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(
            (key, value) for key, value in vars(record).items() if key not in _RECORD_ATTRIBUTES
        )
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class ServiceLogHandler(logging.StreamHandler[TextIO]):
    """The handler `configure_logging` installs; its type lets a second call replace it."""


def configure_logging(level: str, log_format: str, stream: TextIO | None = None) -> None:
    handler = ServiceLogHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )

    root = logging.getLogger()
    # Replace only our own handler: other handlers (pytest's, a debugger's) stay.
    for old in [h for h in root.handlers if isinstance(h, ServiceLogHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)

    # uvicorn configures its loggers before it imports the app; send them through our
    # handler so its lines have the same format and the request id too.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        server_logger = logging.getLogger(name)
        server_logger.handlers.clear()
        server_logger.propagate = True
    # The access-log middleware writes one line per request with its duration; the
    # server's own access line would repeat it. Set this logger to INFO to have both.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
