"""The formatters write what the standard library's own formatting would, only cheaper
(each second's date and time is formatted once, not once a line), and safer: no client
input can forge a line or send escape codes to a terminal."""

import io
import json
import logging
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx2 as httpx
import pytest

from {{ cookiecutter.package_name }}.factory import create_app
from {{ cookiecutter.package_name }}.logs import (
    TEXT_FORMAT,
    JsonFormatter,
    TextFormatter,
    configure_logging,
    escape_control_characters,
    utc_timestamp,
)
from tests.support import (
    AUTH_HEADERS,
    BOUNDED_HTTP,
    SOURCE_ROOT,
    live_server,
    make_settings,
    uvicorn_process,
    wait_until,
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
    {%- if cookiecutter.use_opentelemetry %}
    record.trace_id = record.span_id = "-"  # outside a span, as the handler stamps it
    {%- endif %}
    return record


@pytest.mark.parametrize("created", TIMESTAMPS)
def test_json_time_is_the_records_second_and_millisecond_as_the_text_line_has_them(
    created: float,
) -> None:
    """ISO 8601 in UTC, to the millisecond logging gives the record, the one the text
    format shows: a line reads the same time in either format."""
    record = record_at(created)
    moment = datetime.fromtimestamp(int(created), UTC).replace(microsecond=int(record.msecs) * 1000)
    expected = moment.isoformat(timespec="milliseconds")
    assert utc_timestamp(record.created, record.msecs) == expected
    assert json.loads(JsonFormatter().format(record))["time"] == expected
    text_time = TextFormatter().format(record).split(" ")[1]  # `HH:MM:SS,mmm`, local time
    assert text_time.endswith(f",{int(record.msecs):03d}")


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
        {%- if cookiecutter.use_opentelemetry %}
        "trace_id": "-",
        "span_id": "-",
        {%- endif %}
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


FORGED_PATH = "/x%0aFORGED-LINE%0d%1b[31m"


def serve_one_request_and_read_the_log(log_format: str) -> str:
    """A real server with the service's own handler writing `log_format` to a buffer,
    and one request whose path holds a line break, a carriage return and an escape."""
    stream = io.StringIO()
    app = create_app(make_settings(log_format=log_format, log_level="INFO"))
    configure_logging("INFO", log_format, stream=stream)
    with live_server(app) as url, httpx.Client(base_url=url, headers=AUTH_HEADERS) as http:
        http.get(FORGED_PATH, headers={"X-Request-ID": "forged-path"})
    return stream.getvalue()


def test_a_path_cannot_forge_a_text_log_line_or_reach_the_terminal() -> None:
    """Before: the `%0a` wrote a second line that began `FORGED-LINE`, and the escape
    code reached the terminal raw."""
    text = serve_one_request_and_read_the_log("text")
    lines = text.splitlines()
    assert not any(line.startswith("FORGED") for line in lines), text
    assert "\x1b" not in text
    assert "\r" not in text
    (access,) = [line for line in lines if "[forged-path]" in line and " 404 " in line]
    assert "/x\\nFORGED-LINE\\r\\x1b[31m 404" in access


def test_json_lines_carry_the_path_as_it_came_one_object_a_line() -> None:
    text = serve_one_request_and_read_the_log("json")
    records = [json.loads(line) for line in text.splitlines()]  # every line is one object
    (access,) = [r for r in records if r.get("http", {}).get("status") == 404]
    assert access["http"]["path"] == "/x\nFORGED-LINE\r\x1b[31m"
    assert "\x1b" not in text
    assert not any("color_message" in r for r in records)


@pytest.mark.parametrize(
    "value",
    ["caf\u00e9", "C1 \x9b31m control", "line\u2028separator", "lone \ud800", 2**70, "\x1b[2J"],
)
def test_a_json_line_is_all_ascii_whatever_its_fields_hold(value: object) -> None:
    """Controls (C0 and C1), line separators and any other non-ASCII text are written as
    escapes, so no field can act on a terminal or split a line for a log shipper."""
    line = JsonFormatter().format(record_at(1.5, field=value))
    assert line.isascii()
    assert "\n" not in line
    assert json.loads(line)["field"] == value


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("plain text, unchanged", "plain text, unchanged"),
        ("a\nb\r\tc", "a\\nb\\r\\tc"),
        ("\x00\x1b\x7f\x85\x9f", "\\x00\\x1b\\x7f\\x85\\x9f"),
        ("line\u2028separator\u2029", "line\\u2028separator\\u2029"),
        ("lone \ud800 surrogate", "lone \\ud800 surrogate"),
        ("accents é and 漢字 stay", "accents é and 漢字 stay"),
    ],
)
def test_control_characters_are_escaped(text: str, escaped: str) -> None:
    assert escape_control_characters(text) == escaped


def test_a_text_traceback_keeps_its_lines_and_escapes_the_rest() -> None:
    try:
        raise RuntimeError("bad\x1b[2J input")
    except RuntimeError:
        record = record_at(1.5, exc_info=sys.exc_info())
    line = TextFormatter().format(record)
    assert "Traceback (most recent call last):\n" in line
    assert "RuntimeError: bad\\x1b[2J input" in line


def test_every_line_of_a_multi_process_server_is_json_with_the_log_config(
    tmp_path: Path,
) -> None:
    """With `--workers`, uvicorn's supervisor process never imports the app: without
    `log-config.json` its own lines ("Uvicorn running on ...", "Started parent
    process") stayed plain text, with colour codes, among the JSON ones."""
    log_config = SOURCE_ROOT.parent / "log-config.json"
    options = [*BOUNDED_HTTP, "--workers", "2", "--log-config", str(log_config)]
    with uvicorn_process(tmp_path, options) as server:
        wait_until(
            lambda: server.messages().count("Application startup complete.") == 2,
            30,
            "both server workers to start",
        )
        server.process.send_signal(signal.SIGTERM)  # the supervisor stops its workers
        server.process.wait(timeout=30)
    text = server.log_path.read_text()
    assert "\x1b" not in text
    records = [json.loads(line) for line in text.splitlines()]  # every line is one object
    messages = [record["message"] for record in records]
    assert any(m.startswith("Started parent process") for m in messages), messages
    assert any(m.startswith("Uvicorn running on") for m in messages), messages
