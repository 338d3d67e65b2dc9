"""Logging, configured once for the whole process: the service, uvicorn and libraries.

Every line carries the id of the request it belongs to (or `-` outside a request),
read from the request-id context variable by the one handler{% if cookiecutter.use_opentelemetry %};
and, inside a span, its `trace_id` and `span_id` (else `-`), so a line leads to its trace{% endif %}.

Lines hold what clients send (paths, headers, job fields). In text format, control
characters in them are escaped, so `/x%0aFORGED-LINE` cannot write a second line and
escape codes cannot reach a terminal; JSON format is safe by construction.
"""

import functools
import json
import logging
import re
import sys
import time
from typing import Any, TextIO

import orjson
{%- if cookiecutter.use_opentelemetry %}
from opentelemetry.trace import get_current_span
{%- endif %}
from pydantic import ValidationError

from .context import request_id_var, subject_var
from .settings import LoggingSettings

{% if cookiecutter.use_opentelemetry -%}
TEXT_FORMAT = (
    "%(asctime)s %(levelname)-8s [%(request_id)s] "
    "[trace_id=%(trace_id)s span_id=%(span_id)s] %(name)s: %(message)s"
)
{%- else -%}
TEXT_FORMAT = "%(asctime)s %(levelname)-8s [%(request_id)s] %(name)s: %(message)s"
{%- endif %}

# Attributes every LogRecord has, and uvicorn's `color_message` (its message with
# terminal colour codes: noise in a JSON line); anything else came from `extra=`.
_NOT_EXTRA = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}
# The standard library's encoder costs about 30,000 instructions for an access line
# (measured with callgrind), its C part included: a sixth of a bare FastAPI request.
# orjson does the same in under 5,000. A line is kept only if it is all ASCII, as the
# standard encoder's always is: orjson writes other characters as they are, and among
# them are C1 controls and line separators, which a terminal or a log shipper could act
# on. The rest (non-ASCII text, and what orjson refuses: a lone surrogate, an integer
# over 64 bits, nesting past 254 levels) goes to the standard encoder, which escapes all.
_STANDARD_ENCODER = json.JSONEncoder(default=str)
_ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS


def encode_json(entry: dict[str, Any]) -> str:
    try:
        line = orjson.dumps(entry, default=str, option=_ORJSON_OPTIONS).decode()
    except orjson.JSONEncodeError:
        return _STANDARD_ENCODER.encode(entry)
    return line if line.isascii() else _STANDARD_ENCODER.encode(entry)


# C0 and C1 control characters and DEL, Unicode's line and paragraph separators, and
# lone surrogates (which JSON can carry but a UTF-8 stream cannot).
_UNSAFE_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_character(match: re.Match[str]) -> str:
    character = match.group()
    code = ord(character)
    return _NAMED_ESCAPES.get(character) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def escape_control_characters(text: str) -> str:
    """`text` with every control character written as an escape (`\\n`, `\\x1b`)."""
    # The common case, and fast: str.isprintable() is one scan in C, five times
    # quicker than the pattern's search (measured on an access line).
    if text.isprintable():
        return text
    return _UNSAFE_CHARACTERS.sub(_escape_character, text)


# Formatting the date and time is most of what a timestamp costs, and a busy service
# writes many lines within one second: format each second once (the last two kept, for
# threads that log across a second's boundary).
@functools.lru_cache(maxsize=2)
def _utc_second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


@functools.lru_cache(maxsize=2)
def _local_second(second: int) -> str:
    return time.strftime(logging.Formatter.default_time_format, time.localtime(second))


def utc_timestamp(created: float, msecs: float) -> str:
    """A record's time as `2026-01-31T12:00:00.042+00:00`: its second and millisecond
    as logging has them (`record.created`, `record.msecs`), which the text format
    shows too, so a line reads the same time in either format. The date and time of day
    are formatted once a second: `datetime.isoformat` costs several times as much."""
    return f"{_utc_second(int(created))}.{int(msecs):03d}+00:00"


class TextFormatter(logging.Formatter):
    """`logging.Formatter(TEXT_FORMAT)`, the same text (`2026-01-31 12:00:00,042 INFO ...`),
    with the date and time of day formatted once a second, and control characters
    escaped: one record is one line, plus the lines of its traceback, if any."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802
        return escape_control_characters(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:  # noqa: N802
        # A traceback keeps its own line breaks; anything else is escaped.
        return "\n".join(
            escape_control_characters(line) for line in super().formatException(ei).split("\n")
        )

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        if datefmt:
            return super().formatTime(record, datefmt)
        return f"{_local_second(int(record.created))},{int(record.msecs):03d}"


class JsonFormatter(logging.Formatter):
    """One JSON object a line, with the fields passed through `extra=` at the top level."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": utc_timestamp(record.created, record.msecs),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = record.__dict__
        for key in fields.keys() - _NOT_EXTRA:  # a set difference in C: usually 1 or 2 keys
            entry[key] = fields[key]
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return encode_json(entry)


class ServiceLogHandler(logging.StreamHandler[TextIO]):
    """The handler `configure_logging` installs; its type lets a second call replace it."""

    def emit(self, record: logging.LogRecord) -> None:
        # The request id, stamped here rather than by a `logging.Filter` (whose
        # machinery costs about as much as the stamp again, on every line).
        if "request_id" not in record.__dict__:
            record.request_id = request_id_var.get() or "-"
        # Who asked (issue 11): a field of JSON lines, only when there is someone.
        if (subject := subject_var.get()) is not None and "subject" not in record.__dict__:
            record.subject = subject
        {%- if cookiecutter.use_opentelemetry %}
        if "trace_id" not in record.__dict__:
            # The ids as trace backends show them: 32 and 16 hex digits.
            span_context = get_current_span().get_span_context()
            if span_context.is_valid:
                record.trace_id = format(span_context.trace_id, "032x")
                record.span_id = format(span_context.span_id, "016x")
            else:
                record.trace_id = record.span_id = "-"
        {%- endif %}
        # `StreamHandler.emit`, less a second lock round and attribute checks for the
        # flush: `handle` holds the lock already. One write and one flush a line, so
        # lines of several processes on one stream never interleave.
        try:
            self.stream.write(self.format(record) + "\n")
            self.stream.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


def service_handler(
    log_format: str | None = None, stream: TextIO | None = None
) -> ServiceLogHandler:
    """The one handler, with `log_format`'s formatter. Without a
    format, the LOG_FORMAT setting's: this is how `log-config.json` hands uvicorn's
    supervisor process (`--workers`, `--reload`) the same lines as the app's."""
    if log_format is None:
        try:
            log_format = LoggingSettings().log_format
        except ValidationError:  # the server process reports the bad setting itself
            log_format = "text"
    handler = ServiceLogHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    return handler


def configure_logging(level: str, log_format: str, stream: TextIO | None = None) -> None:
    handler = service_handler(log_format, stream)

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
