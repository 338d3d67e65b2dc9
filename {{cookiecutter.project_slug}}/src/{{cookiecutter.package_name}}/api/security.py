"""How the API authenticates, told to the OpenAPI document, and{% if cookiecutter.auth == "jwt" %} `require_scopes`,{% endif %}
for endpoints that need more than a valid token.

The auth middleware checks every request before FastAPI runs; a FastAPI security
dependency on each route would check nothing more and cost a dependency resolution per
request. So the scheme is written into the document instead: /docs shows an Authorize
button, and each protected operation names the scheme{% if cookiecutter.auth == "jwt" %} and the scopes it needs{% endif %}.
"""

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI{% if cookiecutter.auth == "jwt" %}, HTTPException, Request, params, status{% endif %}
from fastapi.routing import APIRoute
{%- if cookiecutter.auth == "jwt" %}
from starlette.authentication import AuthCredentials
{%- endif %}

SCHEME_NAME = "bearerAuth"
{%- if cookiecutter.auth == "jwt" %}
SECURITY_SCHEME: dict[str, Any] = {
    "type": "http",
    "scheme": "bearer",
    "bearerFormat": "JWT",
    "description": (
        "An access token from the identity provider (JWT_ISSUER), for JWT_AUDIENCE. "
        "Operations that need scopes (the `scope` or `scp` claim) list them."
    ),
}
SCOPES_ATTRIBUTE = "required_scopes"


def require_scopes(*scopes: str) -> params.Depends:
    """A route dependency: 403 unless the token grants every one of `scopes`.

    `dependencies=[require_scopes("reports:write")]`; the scopes also appear in the
    operation's security requirement in the OpenAPI document.
    """
    needed = tuple(scopes)
    challenge = f'Bearer error="insufficient_scope", scope="{" ".join(needed)}"'

    async def has_scopes(request: Request) -> None:
        credentials = request.scope.get("auth")
        granted = credentials.scopes if isinstance(credentials, AuthCredentials) else []
        missing = [scope for scope in needed if scope not in granted]
        if missing:
            raise HTTPException(
                status_code=status.HTTP_403_FORBIDDEN,
                detail=f"The token lacks the scope(s): {' '.join(missing)}",
                headers={"WWW-Authenticate": challenge},
            )

    setattr(has_scopes, SCOPES_ATTRIBUTE, needed)
    return params.Depends(has_scopes)


def route_scopes(route: APIRoute) -> list[str]:
    """The scopes the route's `require_scopes` dependencies ask for."""
    return [
        scope
        for dependency in route.dependencies
        for scope in getattr(dependency.dependency, SCOPES_ATTRIBUTE, ())
    ]
{%- else %}
SECURITY_SCHEME: dict[str, Any] = {
    "type": "http",
    "scheme": "bearer",
    "description": "The service's API_TOKEN.",
}


def route_scopes(route: APIRoute) -> list[str]:
    """One token grants everything: no scopes."""
    return []
{%- endif %}


def security_requirement(route: APIRoute) -> dict[str, Any]:
    """The route's `openapi_extra`, with the bearer scheme (and its scopes) required."""
    extra = dict(route.openapi_extra or {})
    extra.setdefault("security", [{SCHEME_NAME: route_scopes(route)}])
    return extra


def document_security_scheme(app: FastAPI) -> None:
    """Add the scheme to the document's components, where /docs looks for it."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
            schemes[SCHEME_NAME] = SECURITY_SCHEME
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
