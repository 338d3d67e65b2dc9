"""The OpenAPI document describes every response the service gives: a client generated
from it knows each status, its body and its headers."""

from typing import Any

import pytest
from starlette.testclient import TestClient


@pytest.fixture
def document(client: TestClient) -> dict[str, Any]:
    spec: dict[str, Any] = client.get("/openapi.json").json()
    return spec


def declared(document: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    responses: dict[str, Any] = document["paths"][path][method]["responses"]
    return responses


JSON = {"content-type": "application/json"}
# (method, path as the document names it, what the test sends, status it provokes)
PROVOKED = [
    ("get", "/health/ready", {"url": "/health/ready"}, 200),
    ("get", "/jobs/{job_id}", {"url": "/jobs/never-issued"}, 404),
    ("post", "/reports", {"url": "/reports", "json": {"rows": 0}}, 422),
    ("post", "/reports", {"url": "/reports", "content": b"{bad", "headers": JSON}, 422),
    ("post", "/reports", {"url": "/reports", "content": b'{"rows": "\xff"}', "headers": JSON}, 400),
    ("post", "/notifications", {"url": "/notifications", "content": b"x" * 2_000_000}, 413),
    ("post", "/reports", {"url": "/reports", "json": {"rows": 1}}, 202),
]


@pytest.mark.parametrize(("method", "path", "request_args", "status"), PROVOKED)
def test_each_response_a_client_can_get_is_declared_with_its_body(
    client: TestClient,
    document: dict[str, Any],
    method: str,
    path: str,
    request_args: dict[str, Any],
    status: int,
) -> None:
    response = client.request(method.upper(), **request_args)
    assert response.status_code == status, response.text
    entry = declared(document, method, path)[str(status)]
    schema = entry["content"]["application/json"]["schema"]
    # The body has the fields its schema requires (a `$ref` to a component or inline).
    if "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    assert set(schema.get("required", [])) <= set(response.json()), (schema, response.json())


def test_the_job_endpoints_declare_their_headers(document: dict[str, Any]) -> None:
    accepted = declared(document, "post", "/reports")["202"]
    assert "Location" in accepted["headers"]
    for method, path in [("post", "/reports"), ("get", "/jobs/{job_id}")]:
        assert "Retry-After" in declared(document, method, path)["503"]["headers"]


def test_every_operation_declares_the_500_and_readiness_its_503(document: dict[str, Any]) -> None:
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert "500" in operation["responses"], (method, path)
    ready = declared(document, "get", "/health/ready")
    assert (
        ready["503"]["content"]["application/json"]["schema"]
        == ready["200"]["content"]["application/json"]["schema"]
    )
{%- if cookiecutter.use_bearer_auth %}


def test_every_protected_operation_declares_the_401(document: dict[str, Any]) -> None:
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if not path.startswith("/health"):
                assert "401" in operation["responses"], (method, path)
{%- endif %}
