"""The server span of every request: OpenTelemetry's maintained ASGI middleware, named
after the route template.

It is the outermost layer, so a request the edge layer refuses (413) or an auth layer
rejects (401) is traced too, and every log line of the request, the access line
included, carries the trace id. FastAPI's own instrumentor would put its layer inside
this service's stack (which wraps the whole app, see `StackedFastAPI`), and name
spans from a second routing pass.

Span names: OpenTelemetry's default is the method and the raw path, and an id in a
name makes one name per job. The name is the method alone until the router has matched
a route, then `GET /jobs/{job_id}` from the route Starlette leaves in the scope, set as
the response starts. Requests that match none (a 404 for an unknown path, or a 401
before routing) keep the method alone, as the HTTP conventions ask.
"""

from opentelemetry import context, trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.trace import TracerProvider
from opentelemetry.util.http import get_excluded_urls
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The middleware's optional spans around each `receive` and `send` call: two more spans
# for every request, noise in a trace and most of the layer's cost.
EXCLUDED_SPANS: list[str] = ["receive", "send"]
# Where the server span waits in the scope, for `TracingMiddleware` when the app raises.
SPAN_KEY = "opentelemetry.span"


def method_only(scope: Scope) -> tuple[str, dict[str, str]]:
    return str(scope.get("method") or "HTTP"), {}


class RouteSpanName:
    """Renames the server span (current when this layer, inside OpenTelemetry's, is
    called) as the response starts: routing is done by then, and the span ends with
    the last body byte."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        span = scope[SPAN_KEY] = trace.get_current_span()

        async def send_naming_the_route(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = getattr(scope.get("route"), "path", None)
                if route is not None:
                    span.update_name(f"{scope['method']} {route}")
                    span.set_attribute("http.route", route)
            await send(message)

        await self.app(scope, receive, send_naming_the_route)


class TracingMiddleware:
    """OpenTelemetry's ASGI layer around `RouteSpanName`: one SERVER span per HTTP
    request, continuing an incoming W3C `traceparent`. `OTEL_PYTHON_ASGI_EXCLUDED_URLS`
    (comma-separated patterns, e.g. `health/`) leaves matching paths untraced."""

    def __init__(self, app: ASGIApp, tracer_provider: TracerProvider | None = None) -> None:
        self.app = app
        self.traced = OpenTelemetryMiddleware(
            RouteSpanName(app),
            excluded_urls=get_excluded_urls("ASGI"),
            default_span_details=method_only,
            tracer_provider=tracer_provider,
            exclude_spans=EXCLUDED_SPANS,  # type: ignore[arg-type]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # websockets and the lifespan pass through
            await self.app(scope, receive, send)
            return
        try:
            await self.traced(scope, receive, send)
        except Exception:
            # The span stays current when the app raised, as the request id does
            # (edge.py): the server's error line and an error report made outside this
            # stack (sentry_sdk wraps the whole app) then carry the trace id too.
            if (span := scope.get(SPAN_KEY)) is not None:
                context.attach(trace.set_span_in_context(span))
            raise
