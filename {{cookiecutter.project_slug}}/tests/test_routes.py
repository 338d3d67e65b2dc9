"""The service's routes sit on the app itself (`api.add_routes`), not in included
routers, and lose nothing on the way: the OpenAPI document is the one `include_router`
gives, dependency overrides reach them, and FastAPI's route options are all copied."""

import inspect
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from starlette.routing import Route
from starlette.testclient import TestClient

from {{ cookiecutter.package_name }} import api
from {{ cookiecutter.package_name }}.api import dependencies
from {{ cookiecutter.package_name }}.factory import create_app

from .support import AUTH_HEADERS, make_settings


def included_the_usual_way() -> FastAPI:
    app = FastAPI()
    for router, responses in api.ROUTERS:
        app.include_router(router, responses=responses)
    return app
{%- if cookiecutter.auth != "none" %}


def without_security(document: dict[str, Any]) -> dict[str, Any]:
    """The document less what `api.security` adds (the bearer scheme, and each
    protected operation's requirement), which `include_router` knows nothing of."""
    document["components"].pop("securitySchemes")
    for operations in document["paths"].values():
        for operation in operations.values():
            operation.pop("security", None)
    return document
{%- endif %}


def test_the_openapi_document_is_the_one_include_router_gives() -> None:
    {%- if cookiecutter.auth != "none" %}
    ours = without_security(create_app(make_settings()).openapi())
    {%- else %}
    ours: dict[str, Any] = create_app(make_settings()).openapi()
    {%- endif %}
    usual: dict[str, Any] = included_the_usual_way().openapi()
    assert ours["paths"] == usual["paths"]  # every operation, response and parameter
    assert ours["components"] == usual["components"]


def test_every_route_is_on_the_app_itself() -> None:
    """No router node for a request to walk through: FastAPI 0.137+ keeps included
    routers as nodes of their own, matched again on every request."""
    app = create_app(make_settings())
    # The service's own routes and the docs' plain Starlette routes, no other node.
    assert all(isinstance(route, Route) for route in app.routes)
    declared = {
        (route.path, method)
        for router, _ in api.ROUTERS
        for route in router.routes
        if isinstance(route, APIRoute)
        for method in route.methods or ()
    }
    on_the_app = {
        (route.path, method)
        for route in app.routes
        if isinstance(route, APIRoute)
        for method in route.methods or ()
    }
    assert declared == on_the_app


def test_dependency_overrides_reach_the_routes() -> None:
    app = create_app(make_settings())

    class DownBackend:
        name = "overridden"

        async def check_dependencies(self) -> dict[str, str]:
            return {"jobs": "overridden by the test"}

        async def warnings(self) -> list[str]:
            return []

    app.dependency_overrides[dependencies.job_backend] = DownBackend
    with TestClient(app, headers=AUTH_HEADERS) as client:
        response = client.get("/health/ready")
    assert response.status_code == 503
    assert response.json()["checks"]["jobs"] == "overridden by the test"


def test_add_routes_copies_every_option_fastapi_has() -> None:
    """Fails when a FastAPI release adds a route option that `add_routes` would drop:
    add it to `ROUTE_OPTIONS`."""
    parameters = set(inspect.signature(APIRouter.add_api_route).parameters)
    not_options = {"self", "path", "endpoint", "route_class_override"}
    assert parameters - not_options == set(api.ROUTE_OPTIONS)
