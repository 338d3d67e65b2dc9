"""HTTP routes, one module per concern, and `add_routes`, which puts them on the app."""

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute

from . import events, health, jobs, metrics, notifications
from .responses import {% if cookiecutter.auth == "jwt" %}FORBIDDEN, {% endif %}INTERNAL{% if cookiecutter.auth != "none" %}, UNAUTHORIZED{% endif %}, Responses
{%- if cookiecutter.auth != "none" %}
from .security import document_security_scheme, security_requirement
{%- endif %}
{%- if cookiecutter.auth == "token" %}

# Every route but the health checks: the bearer-auth middleware answers 401.
PROTECTED: Responses = {**INTERNAL, **UNAUTHORIZED}
{%- elif cookiecutter.auth == "jwt" %}

# Every route but the health checks: the JWT middleware answers 401, `require_scopes` 403.
PROTECTED: Responses = {**INTERNAL, **UNAUTHORIZED, **FORBIDDEN}
{%- endif %}

# Each router, with the responses all its operations can give (for the OpenAPI document).
ROUTERS: tuple[tuple[APIRouter, Responses], ...] = (
    (health.router, INTERNAL),
    {%- if cookiecutter.auth != "none" %}
    (notifications.router, PROTECTED),
    (jobs.router, PROTECTED),
    (events.router, PROTECTED),
    (metrics.router, PROTECTED),
    {%- else %}
    (notifications.router, INTERNAL),
    (jobs.router, INTERNAL),
    (events.router, INTERNAL),
    (metrics.router, INTERNAL),
    {%- endif %}
)

# The options of `APIRouter.add_api_route`, each an attribute of the same name on the
# route: what `add_routes` copies. tests/test_routes.py fails when FastAPI adds one.
ROUTE_OPTIONS = (
    "response_model",
    "status_code",
    "tags",
    "dependencies",
    "summary",
    "description",
    "response_description",
    "responses",
    "deprecated",
    "methods",
    "operation_id",
    "response_model_include",
    "response_model_exclude",
    "response_model_by_alias",
    "response_model_exclude_unset",
    "response_model_exclude_defaults",
    "response_model_exclude_none",
    "include_in_schema",
    "response_class",
    "name",
    "callbacks",
    "openapi_extra",
    "generate_unique_id_function",
    "strict_content_type",
    "max_body_size",
    "form_limits",
)


def add_routes(app: FastAPI, router: APIRouter, responses: Responses) -> None:
    """Add each route of `router` to the app's own router, as `include_router` did
    before FastAPI 0.137.

    Since 0.137 an included router stays a node of its own that every request walks
    through (matching, a version check, a scope save and restore): measured here at
    about 15 us a request per level of nesting, 10% of a bare FastAPI request, where
    a route on the app itself costs nothing extra. A route made again on the app's
    router keeps everything it was declared with (the router's prefix, tags and
    dependencies are part of it already), and `app.dependency_overrides` reaches it.
    """
    for route in router.routes:
        if not isinstance(route, APIRoute):
            raise TypeError(f"{route!r}: add_routes takes FastAPI routes only")
        options = {name: getattr(route, name) for name in ROUTE_OPTIONS}
        options["responses"] = {**responses, **route.responses}
        {%- if cookiecutter.auth != "none" %}
        if 401 in responses:  # behind the auth middleware: say so in the document
            options["openapi_extra"] = security_requirement(route)
        {%- endif %}
        app.router.add_api_route(
            route.path, route.endpoint, route_class_override=type(route), **options
        )


def add_service_routes(app: FastAPI) -> None:
    for router, responses in ROUTERS:
        add_routes(app, router, responses)
    {%- if cookiecutter.auth != "none" %}
    document_security_scheme(app)
    {%- endif %}
