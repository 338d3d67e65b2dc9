"""HTTP metrics in one pure-ASGI layer: requests by method, route template and status,
their latency, and how many are in flight (observability/metric_families.py).

The route template is known only once the app has routed the request: Starlette's
router leaves the matched route in `scope["route"]` (FastAPI the `APIRoute`, whose
`path_format` is `/jobs/{job_id}`), on the same scope dict this layer passed in, so it
is read after the response. A request no route took (an unknown path; the edge
layer's 413 or an auth 401, sent before routing) has no route there and shares one
label value. The clock stops at the last body byte, not when the app returns (which
waits for background tasks).

Why not prometheus-fastapi-instrumentator: measured per request (bench/instructions.py,
callgrind, GET /health/live on the generated stack) it added MEASURED_INSTRUMENTATOR
instructions where this layer adds MEASURED_LAYER; it is also a Starlette
base-HTTP-middleware-free layer but does more per request (a handler lookup of its own,
exclusion patterns, several metrics), and its 10% margin was missed.
"""

import time
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:  # imported for real by the metrics setup, which must come first
    from ..observability.metric_families import HttpMetrics

METRICS_PATH = "/metrics"
# The route label of every request no route answered: unknown paths, and requests
# refused before routing (the edge layer's 413, an auth 401).
UNMATCHED = "unmatched"


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: "HttpMetrics") -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = time.perf_counter()
        status = 0
        counted = False
        metrics = self.metrics

        async def send_counted(message: Message) -> None:
            nonlocal status, counted
            await send(message)
            if message["type"] == "http.response.start":
                status = message["status"]
            elif not message.get("more_body", False) and not counted:
                counted = True
                metrics.observe(
                    scope["method"], route_of(scope), status, time.perf_counter() - started
                )

        metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_counted)
        finally:
            metrics.in_flight.dec()
            if status and not counted:  # the response was cut off, or the app raised after it began
                metrics.observe(
                    scope["method"], route_of(scope), status, time.perf_counter() - started
                )


def route_of(scope: Scope) -> str:
    route = scope.get("route")
    if route is None:
        return UNMATCHED
    # Starlette's routes and mounts have a `path_format`; a route class of one's own may not.
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return template if isinstance(template, str) else UNMATCHED
