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

from ..settings import Settings{% if cookiecutter.use_bearer_auth %}, require_api_token{% endif %}
{%- if cookiecutter.use_bearer_auth %}
from .bearer_auth import PUBLIC_PATHS, BearerAuthMiddleware
{%- endif %}
from .edge import EdgeMiddleware
{%- if cookiecutter.use_bearer_auth %}
from .metrics import METRICS_PATH
{%- endif %}

if TYPE_CHECKING:
    from ..observability.metric_families import ServiceMetrics


def middleware_stack(settings: Settings, metrics: "ServiceMetrics") -> list[Middleware]:
    """The layers, outermost first."""
    assert metrics.http is not None, "the API's metrics count HTTP"
    return [
        # Outermost, so every response (a 500, the 413 it sends, an auth layer's 401)
        # has the request id and the headers, is logged and is counted in the metrics,
        # and every log line of the request carries the id. It is one layer for five
        # concerns: see edge.py (and middleware/metrics.py for why metrics are one).
        Middleware(
            EdgeMiddleware,
            max_body_bytes=settings.max_request_body_bytes,
            metrics=metrics.http,
        ),
        {%- if cookiecutter.use_bearer_auth %}
        # Rejects before the app reads a byte of the body. The health checks stay
        # open for load balancers and orchestrators.
        Middleware(
            BearerAuthMiddleware,
            token=require_api_token(settings),
            public_paths=public_paths(settings),
        ),
        {%- endif %}
        # Add a layer here, e.g. Starlette's pure-ASGI CORSMiddleware or GZipMiddleware.
    ]


{%- if cookiecutter.use_bearer_auth %}


def public_paths(settings: Settings) -> tuple[str, ...]:
    """The paths the auth layer lets through without a token."""
    # Metrics (issue 9): /metrics needs the token unless METRICS_PUBLIC is true.
    return (*PUBLIC_PATHS, METRICS_PATH) if settings.metrics_public else PUBLIC_PATHS
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
