"""The OpenAPI document describes every response the service gives: a client generated
from it knows each status, its body and its headers."""

from typing import Any

import openapi_spec_validator
import pytest
from starlette.testclient import TestClient

from {{ cookiecutter.package_name }}.factory import create_app
from tests.support import AUTH_HEADERS, make_settings

DOCS_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")


@pytest.fixture
def document(client: TestClient) -> dict[str, Any]:
    spec: dict[str, Any] = client.get("/openapi.json").json()
    return spec


def test_the_document_validates_as_openapi_3_1(document: dict[str, Any]) -> None:
    """What client generators and API gateways that import it check first."""
    assert document["openapi"].startswith("3.1."), document["openapi"]
    openapi_spec_validator.validate(document, cls=openapi_spec_validator.OpenAPIV31SpecValidator)


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
    ("delete", "/jobs/{job_id}", {"url": "/jobs/never-issued"}, 404),
    ("post", "/jobs/{job_id}/retry", {"url": "/jobs/never-issued/retry"}, 404),
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


def test_the_409_of_cancel_and_retry_is_declared_with_its_body(
    client: TestClient, document: dict[str, Any]
) -> None:
    # TestClient runs the in-process job before it returns: it has succeeded.
    job_id = client.post("/reports", json={"rows": 1}).json()["id"]
    for method, path in [("delete", "/jobs/{job_id}"), ("post", "/jobs/{job_id}/retry")]:
        response = client.request(method.upper(), path.format(job_id=job_id))
        assert response.status_code == 409, response.text
        schema = declared(document, method, path)["409"]["content"]["application/json"]["schema"]
        component = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        assert set(component["required"]) == set(response.json()) == {"detail", "job"}
        assert response.json()["job"]["status"] == "succeeded"


def test_the_job_endpoints_declare_their_headers(document: dict[str, Any]) -> None:
    for method, path in [("post", "/reports"), ("post", "/jobs/{job_id}/retry")]:
        assert "Location" in declared(document, method, path)["202"]["headers"]
    for method, path in [
        ("post", "/reports"),
        ("get", "/jobs/{job_id}"),
        ("delete", "/jobs/{job_id}"),
        ("post", "/jobs/{job_id}/retry"),
    ]:
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
{%- if cookiecutter.auth != "none" %}


def test_every_protected_operation_declares_the_bearer_scheme_and_its_errors(
    document: dict[str, Any],
) -> None:
    """What gives /docs its Authorize button, and a generated client its 401{% if cookiecutter.auth == "jwt" %}/403{% endif %}."""
    scheme = document["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if path.startswith("/health"):
                assert "security" not in operation, (method, path)
                continue
            assert "401" in operation["responses"], (method, path)
            {%- if cookiecutter.auth == "jwt" %}
            assert "403" in operation["responses"], (method, path)
            {%- endif %}
            assert [set(requirement) for requirement in operation["security"]] == [
                {"bearerAuth"}
            ], (method, path)
{%- if cookiecutter.auth == "jwt" %}
    assert document["paths"]["/reports"]["post"]["security"] == [{"bearerAuth": ["reports:write"]}]
{%- endif %}


def test_the_docs_are_served_without_a_token() -> None:
    with TestClient(create_app(make_settings())) as anonymous:
        for path in DOCS_PATHS:
            assert anonymous.get(path).status_code == 200, path
        assert anonymous.post("/reports", json={"rows": 1}).status_code == 401
{%- endif %}


def test_docs_disabled_serves_none_of_the_docs_paths() -> None:
    """Not even to a caller with credentials: the pages and the document are gone."""
    app = create_app(make_settings(docs_enabled=False))
    with TestClient(app, headers=AUTH_HEADERS) as client:
        for path in DOCS_PATHS:
            assert client.get(path).status_code == 404, path
        assert client.get("/health/live").status_code == 200
