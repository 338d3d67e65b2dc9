"""What the edge layer counts for the HTTP metrics, and how it names a route.

Requests by method, route template and status, their latency, and how many are in
flight (the metrics themselves: observability/metric_families.py). The edge layer
counts them in its own pass (edge.py), so the 413 it sends and an auth layer's 401
inside it are counted too. Why there and not in a layer of its own, and not with
prometheus-fastapi-instrumentator (callgrind instructions per request, GET
/health/live, bench/instructions.py):
- the instrumentator on bare FastAPI added 261,904 (it matches the route again
  itself, and records five metrics); the metrics as a pure-ASGI layer of their own,
  29,540 (on bare); folded into the edge layer's pass, 18,191 (on the generated stack:
  404,390 against 386,199). The instrumentator was far outside the 10% margin.
- A layer of its own cost a coroutine frame and a `send` wrapper per request; a
  Gauge's inc and dec for requests in flight cost 8,500 (see HttpMetrics).

The route template is known only once the app has routed the request: Starlette's
router leaves the matched route in `scope["route"]` (FastAPI the `APIRoute`, whose
`path_format` is `/jobs/{job_id}`), on the same scope dict the edge layer passed in,
so it is read after the response. A request no route took (an unknown path; the
413 or 401 sent before routing) has no route there and shares one label value. The
clock stops at the last body byte, not when the app returns (which waits for
background tasks).
"""

from starlette.types import Scope

METRICS_PATH = "/metrics"
# The route label of every request no route answered: unknown paths, and requests
# refused before routing (the edge layer's 413, an auth 401).
UNMATCHED = "unmatched"


def route_of(scope: Scope) -> str:
    route = scope.get("route")
    if route is None:
        return UNMATCHED
    # Starlette's routes and mounts have a `path_format`; a route class of one's own may not.
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return template if isinstance(template, str) else UNMATCHED
