"""Hostile and broken request bodies get a 4xx with JSON, never a 500, through the
real server (uvicorn's HTTP parsing, FastAPI's JSON decoding, the error handlers).

FastAPI's default 422 handler repeats the client's input, and some input cannot be
encoded back: `NaN`, `Infinity` and `1e400` parse as floats JSON cannot carry, a lone
surrogate cannot be UTF-8. Those 422s became 500s with a traceback in the log.
"""

import json
from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import pytest

from {{ cookiecutter.package_name }}.factory import create_app
from tests.support import AUTH_HEADERS, LogCapture, live_server, make_settings

# Every endpoint that takes a body, with a body it accepts.
ENDPOINTS: dict[str, dict[str, Any]] = {
    "/notifications": {"email": "ada@example.com", "message": "Your report is ready."},
    "/reports": {"rows": 5, "simulate_seconds": 0.0},
}
# Raw JSON text for a field's value: each is wrong for every field of these bodies.
HOSTILE_VALUES = {
    "NaN": "NaN",
    "Infinity": "Infinity",
    "-Infinity": "-Infinity",
    "1e400": "1e400",
    "-1e400": "-1e400",
    "huge integer": "1" + "0" * 400,
    "integer past Python's digit limit": "1" + "0" * 5000,
    "lone high surrogate": '"\\ud800"',
    "lone low surrogate": '"abc\\udfff"',
    "NUL": '"\\u0000"',
    "escape code": '"\\u001b[31mred"',
    "true": "true",
    "null": "null",
    "array": "[1, 2]",
    "object": '{"$gt": ""}',
    "long text": json.dumps("x" * 100_000),
    "deep nesting": "[" * 5_000 + "]" * 5_000,
}
# Whole bodies, whatever the endpoint.
HOSTILE_BODIES: dict[str, bytes] = {
    "empty": b"",
    "truncated": b'{"rows": ',
    "not JSON": b"rows=5",
    "JSON null": b"null",
    "JSON array": b"[]",
    "JSON number": b"42",
    "NaN alone": b"NaN",
    "invalid UTF-8": b'{"email": "\xff\xfe", "message": "\xc3\x28"}',
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "deep objects": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    "NUL bytes": b"\x00" * 64,
}
CONTENT_TYPES = [
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/xml",
]


def corpus() -> Iterator[Any]:
    for path, good in ENDPOINTS.items():
        for field in good:
            # The other JSON type: `"5"` for a number, `5` for text (strict models).
            wrong_type = '"5"' if isinstance(good[field], int | float) else "5"
            for name, raw in [*HOSTILE_VALUES.items(), ("wrong type", wrong_type)]:
                fields = [
                    f"{json.dumps(key)}: {raw if key == field else json.dumps(value)}"
                    for key, value in good.items()
                ]
                body = ("{" + ", ".join(fields) + "}").encode()
                yield pytest.param(path, body, "application/json", id=f"{path} {field}={name}")
        for name, body in HOSTILE_BODIES.items():
            yield pytest.param(path, body, "application/json", id=f"{path} {name}")
        extra = json.dumps({**good, "unexpected": 1}).encode()
        yield pytest.param(path, extra, "application/json", id=f"{path} unknown field")
        for content_type in CONTENT_TYPES:
            yield pytest.param(
                path, json.dumps(good).encode(), content_type, id=f"{path} as {content_type}"
            )


@pytest.fixture(scope="module")
def server() -> Iterator[httpx.Client]:
    logs = LogCapture()
    app = create_app(make_settings())
    logs.install()
    with (
        live_server(app) as url,
        httpx.Client(base_url=url, headers=AUTH_HEADERS, timeout=10) as http,
    ):
        yield http


@pytest.mark.parametrize(("path", "body", "content_type"), list(corpus()))
def test_a_hostile_body_gets_a_4xx_with_json(
    server: httpx.Client, path: str, body: bytes, content_type: str
) -> None:
    response = server.post(path, content=body, headers={"content-type": content_type})
    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"] == "application/json"
    detail = response.json()["detail"]
    if response.status_code == 422:
        # The documented body: what is wrong and where, never the input itself.
        assert detail
        assert all(set(problem) == {"type", "loc", "msg"} for problem in detail), detail


@pytest.mark.parametrize("path", list(ENDPOINTS))
def test_the_good_bodies_of_the_corpus_are_accepted(server: httpx.Client, path: str) -> None:
    """The corpus varies bodies these endpoints accept: a 4xx means the variation."""
    assert server.post(path, json=ENDPOINTS[path]).status_code == 202


def test_a_422_names_the_problem_without_the_input(server: httpx.Client) -> None:
    secret = "sk_live_0123456789abcdef"
    response = server.post("/notifications", json={"email": secret, "message": "hi"})
    assert response.status_code == 422
    assert response.json() == {
        "detail": [
            {
                "type": "value_error",
                "loc": ["body", "email"],
                "msg": "Value error, not an e-mail address such as name@example.com",
            }
        ]
    }
    assert secret not in response.text


def test_a_body_that_is_not_utf8_is_a_400(server: httpx.Client) -> None:
    response = server.post(
        "/reports", content=b'{"rows": "\xff"}', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json() == {"detail": "There was an error parsing the body"}
