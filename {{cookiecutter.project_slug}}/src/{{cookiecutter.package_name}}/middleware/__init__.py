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
from typing import Any

from fastapi import FastAPI
from starlette.middleware import Middleware
from starlette.types import ASGIApp

from ..settings import Settings{% if cookiecutter.use_bearer_auth %}, require_api_token{% endif %}
{%- if cookiecutter.use_bearer_auth %}
from .bearer_auth import BearerAuthMiddleware
{%- endif %}
from .cors import cors_layers
from .edge import EdgeMiddleware
from .rate_limit import rate_limit_layers


def middleware_stack(settings: Settings) -> list[Middleware]:
    """The layers, outermost first."""
    return [
        # CORS (when CORS_ALLOW_ORIGINS is set) outside the edge layer: a preflight is
        # answered before any auth, and the edge's 413, a 401, a 429 and a 500 carry
        # the CORS headers, which a browser needs to show the page the error (cors.py).
        *cors_layers(settings),
        # Outermost but for CORS, so every response (a 500, the 413 it sends, an auth layer's 401)
        # has the request id and the headers and is logged, and every log line of the
        # request carries the id. It is one layer for four concerns: see edge.py.
        Middleware(EdgeMiddleware, max_body_bytes=settings.max_request_body_bytes),
        {%- if cookiecutter.use_bearer_auth %}
        # Rejects before the app reads a byte of the body. The health checks stay
        # open for load balancers and orchestrators.
        Middleware(BearerAuthMiddleware, token=require_api_token(settings)),
        {%- endif %}
        # Rate limits (when RATE_LIMIT is set), inside auth: a request counts against
        # its authenticated identity, and one without a valid token is refused before
        # it costs a count (rate_limit.py).
        *rate_limit_layers(settings),
        # Add a layer here, e.g. Starlette's pure-ASGI GZipMiddleware.
    ]


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
