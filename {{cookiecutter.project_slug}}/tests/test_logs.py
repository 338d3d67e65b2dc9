"""The formatters write what the standard library's own formatting would, only cheaper:
each second's date and time is formatted once, not once a line."""

import json
import logging
import sys
from datetime import UTC, datetime

import pytest

from {{ cookiecutter.package_name }}.logs import (
    TEXT_FORMAT,
    JsonFormatter,
    TextFormatter,
    utc_timestamp,
)

# Whole seconds, milliseconds that a float cannot hold exactly, and the microsecond
# roundings at a millisecond's and at a second's edge.
TIMESTAMPS = [
    0.0,
    1_795_370_655.0,
    1_795_370_655.622,
    1_795_370_655.0004995,
    1_795_370_655.0005,
    1_795_370_655.9995,
    1_795_370_655.9999994,
    1_795_370_655.9999996,
]


def record_at(created: float, **attributes: object) -> logging.LogRecord:
    record = logging.makeLogRecord(
        {"name": "svc.access", "msg": "GET %s %d", "args": ("/health/live", 200), **attributes}
    )
    record.levelno, record.levelname = logging.INFO, "INFO"
    record.created = created
    record.msecs = int((created - int(created)) * 1000) + 0.0  # as LogRecord does
    record.request_id = "trace-logs"
    return record


@pytest.mark.parametrize("created", TIMESTAMPS)
def test_json_time_is_datetimes_iso_format(created: float) -> None:
    expected = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
    assert utc_timestamp(created) == expected
    assert json.loads(JsonFormatter().format(record_at(created)))["time"] == expected


@pytest.mark.parametrize("created", TIMESTAMPS)
def test_text_lines_are_the_standard_formatters(created: float) -> None:
    record = record_at(created)
    assert TextFormatter().format(record) == logging.Formatter(TEXT_FORMAT).format(record)


def test_json_has_extra_fields_at_the_top_level_and_any_value_as_text() -> None:
    class Opaque:
        def __str__(self) -> str:
            return "opaque"

    line = JsonFormatter().format(record_at(1.5, http={"status": 200}, thing=Opaque()))
    assert json.loads(line) == {
        "time": "1970-01-01T00:00:01.500+00:00",
        "level": "INFO",
        "logger": "svc.access",
        "message": "GET /health/live 200",
        "request_id": "trace-logs",
        "http": {"status": 200},
        "thing": "opaque",
    }


def test_exceptions_are_formatted_as_before() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = record_at(1.5, exc_info=sys.exc_info())
    assert "RuntimeError: boom" in json.loads(JsonFormatter().format(record))["exception"]
    assert TextFormatter().format(record) == logging.Formatter(TEXT_FORMAT).format(record)
