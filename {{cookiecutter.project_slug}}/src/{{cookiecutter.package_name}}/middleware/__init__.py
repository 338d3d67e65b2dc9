"""The middleware stack: every layer is plain ASGI, listed here in order.

No layers made with FastAPI's HTTP middleware decorator (Starlette's base HTTP
middleware class): that class runs the app in a separate task, so context variables
set by the endpoint never reach it, it never sees the client leave, and it costs about
0.2 ms a layer.

The stack wraps the *whole* FastAPI app, Starlette's error handler included.
`add_middleware` would put these layers inside it, and the 500 it sends would miss the
request id, timing and security headers.
"""

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from starlette.middleware import Middleware
from starlette.types import ASGIApp

from ..settings import Settings{% if cookiecutter.auth == "token" %}, require_api_token{% elif cookiecutter.auth == "jwt" %}, require_jwt_issuer{% endif %}
{%- if cookiecutter.auth == "token" %}
from .bearer_auth import BearerAuthMiddleware
{%- endif %}
from .cors import cors_layers
from .edge import EdgeMiddleware
{%- if cookiecutter.auth == "jwt" %}
from .jwks import JwksCache
from .jwt_auth import JwtAuthMiddleware
{%- endif %}
{%- if cookiecutter.auth != "none" %}
from .metrics import METRICS_PATH
from .paths import HEALTH_PATHS
{%- endif %}
from .rate_limit import rate_limit_layers
{%- if cookiecutter.use_opentelemetry %}
from .tracing import TracingMiddleware
{%- endif %}

if TYPE_CHECKING:
    from ..observability.metric_families import ServiceMetrics
{%- if cookiecutter.auth != "none" %}

# Open without credentials: the health checks (paths.py), and the docs (while
# DOCS_ENABLED), for people, who authorize inside them.
OPEN_DOCS_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")


def public_paths(settings: Settings) -> tuple[str, ...]:
    """The paths the auth layer lets through without credentials."""
    docs = OPEN_DOCS_PATHS if settings.docs_enabled else ()
    # Metrics (issue 9): /metrics needs credentials unless METRICS_PUBLIC is true.
    metrics = (METRICS_PATH,) if settings.metrics_public else ()
    return HEALTH_PATHS + docs + metrics
{%- endif %}


def middleware_stack(settings: Settings, metrics: "ServiceMetrics") -> list[Middleware]:
    """The layers, outermost first."""
    assert metrics.http is not None, "the API's metrics count HTTP"
    return [
        {%- if cookiecutter.use_opentelemetry %}
        # Tracing (issue 9): outermost, so a request refused by any layer below (413,
        # 401, 429) is traced too and every log line of the request has its trace id.
        Middleware(TracingMiddleware),
        {%- endif %}
        # CORS (when CORS_ALLOW_ORIGINS is set) outside the edge layer: a preflight is
        # answered before any auth, and the edge's 413, a 401, a 429 and a 500 carry
        # the CORS headers, which a browser needs to show the page the error (cors.py).
        *cors_layers(settings),
        # Outermost but for {% if cookiecutter.use_opentelemetry %}tracing and {% endif %}CORS, so every response (a 500,
        # the 413 it sends, an auth layer's 401) has the request id and the headers, is
        # logged and is counted in the metrics, and every log line of the request
        # carries the id. It is one layer for five concerns: see edge.py (and
        # middleware/metrics.py for why metrics are one).
        Middleware(
            EdgeMiddleware,
            max_body_bytes=settings.max_request_body_bytes,
            metrics=metrics.http,
        ),
        {%- if cookiecutter.auth == "token" %}
        # Rejects before the app reads a byte of the body; inside the edge layer, so
        # its 401 carries the request id, is logged and is counted.
        Middleware(
            BearerAuthMiddleware,
            token=require_api_token(settings),
            public_paths=public_paths(settings),
        ),
        {%- elif cookiecutter.auth == "jwt" %}
        # Rejects before the app reads a byte of the body; inside the edge layer, so
        # its 401 carries the request id and the access line has the token's subject.
        jwt_layer(settings),
        {%- endif %}
        # Rate limits (when RATE_LIMIT is set), inside auth: a request counts against
        # its authenticated identity, and one without a valid token is refused before
        # it costs a count (rate_limit.py).
        *rate_limit_layers(settings),
        # Add a layer here, e.g. Starlette's pure-ASGI GZipMiddleware.
    ]
{%- if cookiecutter.auth == "jwt" %}


def jwt_layer(settings: Settings) -> Middleware:
    issuer, audience = require_jwt_issuer(settings)
    keys = JwksCache(
        issuer=issuer,
        jwks_url=settings.jwt_jwks_url,
        min_refresh_seconds=settings.jwt_jwks_min_refresh_seconds,
    )
    return Middleware(
        JwtAuthMiddleware,
        keys=keys,
        issuer=issuer,
        audience=audience,
        algorithms=settings.jwt_algorithms,
        leeway_seconds=settings.jwt_leeway_seconds,
        public_paths=public_paths(settings),
    )
{%- endif %}


class StackedFastAPI(FastAPI):
    """FastAPI with `outer_middleware` wrapped around its complete stack."""

    def __init__(self, *, outer_middleware: Sequence[Middleware] = (), **options: Any) -> None:
        super().__init__(**options)
        self.outer_middleware = list(outer_middleware)

    def build_middleware_stack(self) -> ASGIApp:
        app = super().build_middleware_stack()
        for cls, args, kwargs in reversed(self.outer_middleware):
            app = cls(app, *args, **kwargs)
        return app


__all__ = ["StackedFastAPI", "middleware_stack"]
