"""The apps `bench/run.py` serves, one uvicorn process each: `uvicorn --factory apps:<name>`.

Imported by uvicorn in the *generated project's* virtualenv, with this folder on
`PYTHONPATH` and `BENCH_PACKAGE` naming the generated package. Settings come from the
environment, as in production (`LOG_LEVEL`, `LOG_FORMAT`, `JOBS_BACKEND`, `REDIS_URL`).

- `generated`: the service as it ships, `create_app()`.
- `no_metrics`: the same app with the edge layer's HTTP metrics off.
- `no_middleware`: the same app with its middleware list emptied; everything else
  (routes, error handlers, logging) is unchanged.
- `base_http`: `no_middleware` plus the same behaviour written the way most FastAPI code
  writes it, as `@app.middleware("http")` functions (`BaseHTTPMiddleware`): request id,
  access line + `Server-Timing`, security headers, `Content-Length` limit. It lives
  here, never in the generated service.
- `bare`: a plain FastAPI app with one route; served with uvicorn's own access line
  too (`bench/run.py` turns it on), it is what users deploy by default.
- `jwt_layer` (an auth=jwt bake): `bare` inside the generated JWT layer, its key cached,
  `/health/live` checked like a protected route; the RS256 token a client must send is
  written to `BENCH_TOKEN_FILE`. Built by `middleware_cost.jwt_bench`, as its row is.
- `rate_limit`: the service as it ships with `RATE_LIMIT` set too high to be reached and
  the health check counted like any route (`middleware_cost.edge_policy_app`); counted in
  the Redis at `BENCH_RATE_LIMIT_REDIS_URL` when set (a Celery bake), else in memory.
- `no_tracing` (a use_opentelemetry bake): the service with its tracing layer taken out
  (`middleware_cost.without_tracing`).
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

CallNext = Callable[[Request], Awaitable[Response]]

PACKAGE = os.environ["BENCH_PACKAGE"]

REQUEST_ID_HEADER = "X-Request-ID"
VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
CONTENT_SECURITY_POLICY = "default-src 'none'; frame-ancestors 'none'"


def _generated(module: str) -> Any:
    return importlib.import_module(f"{PACKAGE}.{module}")


def generated() -> FastAPI:
    app: FastAPI = _generated("factory").create_app()
    return app


def no_metrics() -> FastAPI:
    """The service as it ships with the edge layer's HTTP metrics off (issue 9)."""
    from starlette.middleware import Middleware

    app = generated()
    app.outer_middleware = [  # type: ignore[attr-defined]
        Middleware(m.cls, *m.args, **{**m.kwargs, "metrics": None}) if "metrics" in m.kwargs else m
        for m in app.outer_middleware  # type: ignore[attr-defined]
    ]
    return app


def no_middleware() -> FastAPI:
    app = generated()
    # Read when the stack is built, at the first request.
    app.outer_middleware = []  # type: ignore[attr-defined]
    return app


def base_http() -> FastAPI:
    """`no_middleware` plus the generated stack's work, as four `BaseHTTPMiddleware`s."""
    app = no_middleware()
    request_id_var = _generated("context").request_id_var
    access_logger = logging.getLogger(f"{PACKAGE}.access")
    max_body_bytes = app.state.settings.max_request_body_bytes

    # Registered innermost first: `app.middleware` puts each new one outside the last.
    @app.middleware("http")
    async def limit_body(request: Request, call_next: CallNext) -> Response:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_body_bytes:
            return JSONResponse({"detail": "Content Too Large"}, status_code=413)
        return await call_next(request)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: CallNext) -> Response:
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if not request.url.path.startswith(("/docs", "/redoc")):
            response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        return response

    @app.middleware("http")
    async def access_log(request: Request, call_next: CallNext) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        duration_ms = (time.perf_counter() - started) * 1000
        response.headers.append("Server-Timing", f"app;dur={duration_ms:.1f}")
        access_logger.info(
            "%s %s %s %.1fms",
            request.method,
            request.url.path,
            response.status_code,
            duration_ms,
            extra={
                "http": {
                    "method": request.method,
                    "path": request.url.path,
                    "status": response.status_code,
                    "duration_ms": round(duration_ms, 3),
                }
            },
        )
        return response

    @app.middleware("http")
    async def request_id(request: Request, call_next: CallNext) -> Response:
        incoming = request.headers.get(REQUEST_ID_HEADER)
        valid = incoming and VALID_REQUEST_ID.match(incoming)
        value = incoming if valid else uuid.uuid4().hex
        token = request_id_var.set(value)
        try:
            response = await call_next(request)
        finally:
            request_id_var.reset(token)
        response.headers[REQUEST_ID_HEADER] = value
        return response

    return app


def bare() -> FastAPI:
    app = FastAPI()

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    return app


# --------------------------------------------------------------------------- issue 11


def _in_process_bench() -> Any:
    """The in-process benchmark's view of the generated package, to build its rows here."""
    import middleware_cost

    return middleware_cost, middleware_cost.Generated(
        package=PACKAGE,
        factory=_generated("factory"),
        settings=_generated("settings"),
        logs=_generated("logs"),
    )


def jwt_layer() -> Any:
    middleware_cost, generated = _in_process_bench()
    bench = middleware_cost.jwt_bench(generated)
    if bench is None:
        raise RuntimeError(f"{PACKAGE} is not an auth=jwt bake: no JWT layer")
    ((_, authorization),) = bench.headers
    with open(os.environ["BENCH_TOKEN_FILE"], "wb") as token_file:
        token_file.write(authorization)
    return bench.build()


def rate_limit() -> FastAPI:
    middleware_cost, generated = _in_process_bench()
    redis_url = os.environ.get("BENCH_RATE_LIMIT_REDIS_URL", "")
    app: FastAPI = middleware_cost.edge_policy_app(generated, rate_limit=True, redis_url=redis_url)
    return app


def no_tracing() -> FastAPI:
    middleware_cost, _ = _in_process_bench()
    app: FastAPI = middleware_cost.without_tracing(generated())
    return app
