"""What the middleware stack costs per request, as ratios to a bare FastAPI app, in one run.

Run from the repository root (the template's checkout), with a Python 3.11+ interpreter that
can import cookiecutter, fastapi, uvicorn, pydantic and pydantic-settings:

    python bench/middleware_cost.py            # in-process only, about 40 s
    python bench/middleware_cost.py --wrk      # plus uvicorn + wrk over 127.0.0.1, +1 min

The template's own `requirements-dev.txt` has cookiecutter but not fastapi, so its venv
is not enough. Either use an interpreter that has both (cookiecutter 2.7+ and the
generated project's dependencies), in which case the script bakes the template itself
(`job_backend=inprocess`) into a temporary directory and imports the generated package
from its `src`; or bake a project, install it as its README says, and point the script
at it with that project's own venv (cookiecutter is then not needed):

    cookiecutter . --no-input job_backend=inprocess auth=jwt -o /tmp/bench-bake
    cd /tmp/bench-bake/orders-service && python3.11 -m venv .venv \
        && .venv/bin/pip install -e ".[dev]" && cd -
    /tmp/bench-bake/orders-service/.venv/bin/python bench/middleware_cost.py \
        --project /tmp/bench-bake/orders-service

Nothing is installed and nothing outside a temporary directory is written (cookiecutter's
replay file included).

Every variant serves the same tiny JSON endpoint, `GET /health/live`. The ASGI app is
driven directly in this process: no sockets, no HTTP parsing, one request after another.
A round gives every variant many short turns (about 20 ms each), in alternating order, so
a burst of load from another process hits all variants alike; each variant then reports
its best round, because on a shared machine a slow round says more about the neighbours
than about the code. Time is taken on the wall clock and as this process's CPU time,
which ignores the time the process waited for a core. Ratios to `bare` are the figures
to compare; absolute requests per second depend on the machine and how busy it is.

Rows for CORS and rate limits (issue 11) come with a project that has them; the row for
rate limits counted in Redis needs a Celery bake as `--project` and `--redis-url` (a Redis
of your own: the benchmark's keys are left to expire).

With `--wrk` (and `wrk` on PATH) each variant is also served by uvicorn on a free
127.0.0.1 port, one at a time, and loaded by wrk for a few seconds. Those figures include
the HTTP server and the load generator sharing the same cores, and swing much more.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

# This folder, first on sys.path when the script runs: the benchmark's shared pieces.
from loadgen import Request, run_wrk
from run import bake, package_of

PATH = "/health/live"
EXPECTED_BODY = b'{"status":"ok"}'
REPO_ROOT = Path(__file__).resolve().parent.parent
MAX_WRK_SECONDS = 10
MAX_WRK_CONNECTIONS = 64
# Issue 14's targets for the in-process figures, as ratios to `bare`.
TARGETS = (
    ("generated_app_no_mw", 0.97, "the app itself: at most 3% over bare FastAPI"),
    ("generated_stack", 0.92, "the whole stack, no access line"),
    ("generated_stack_info_logging", 0.80, "the whole stack and its JSON access line"),
)

JWT_ISSUER = "http://127.0.0.1:9/bench-issuer"
JWT_AUDIENCE = "bench-api"
RawHeaders = tuple[tuple[bytes, bytes], ...]

Message = MutableMapping[str, Any]
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


# --------------------------------------------------------------------------- the generated
# project


@dataclass(frozen=True)
class Generated:
    """The generated package's modules the benchmark uses."""

    package: str
    factory: ModuleType
    settings: ModuleType
    logs: ModuleType

    def settings_for(self, log_level: str, **overrides: Any) -> Any:
        options: dict[str, Any] = {"jobs_backend": "inprocess", "log_level": log_level}
        options.update(overrides)
        fields = self.settings.Settings.model_fields
        # A project baked with auth: /health/live stays public, the layer still runs.
        if "api_token" in fields:  # auth=token
            options["api_token"] = "benchmark-token-" + "x" * 16
        if "jwt_issuer" in fields:  # auth=jwt: an issuer that refuses (the row below needs none)
            options["jwt_issuer"] = JWT_ISSUER
            options["jwt_audience"] = JWT_AUDIENCE
        return self.settings.Settings(_env_file=None, log_format="json", **options)


def import_generated(project: Path) -> Generated:
    package = package_of(project)
    sys.path.insert(0, str(project / "src"))
    return Generated(
        package=package,
        factory=importlib.import_module(f"{package}.factory"),
        settings=importlib.import_module(f"{package}.settings"),
        logs=importlib.import_module(f"{package}.logs"),
    )


# --------------------------------------------------------------------------- tracing
# (projects baked with use_opentelemetry)

TRACING_LAYER = "TracingMiddleware"


class TraceSink:
    """A local OTLP/HTTP endpoint that accepts every export (200, empty reply) and reads
    nothing into it: where the exporting variant's spans go, on loopback, in a thread.
    `exports` counts the requests it took (bench/run.py shows that spans did arrive)."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        sink = self
        self.exports = 0

        class Accept(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a collector does

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                sink.exports += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Accept)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"


def has_tracing(generated: Generated) -> bool:
    return "otel_service_name" in generated.settings.Settings.model_fields


def without_tracing(app: Any) -> Any:
    """The app with its tracing layer taken out of the stack (read at the first request)."""
    app.outer_middleware = [m for m in app.outer_middleware if m.cls.__name__ != TRACING_LAYER]
    return app


def exporting_to_sink(app: Any) -> Any:
    """The app with its tracing layer on a provider of its own that exports every span
    (batched, in the exporter's thread) to a `TraceSink`. The process's global provider
    is set once, so this variant cannot take it over."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from starlette.middleware import Middleware

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=TraceSink().url)))
    app.outer_middleware = [
        Middleware(m.cls, tracer_provider=provider) if m.cls.__name__ == TRACING_LAYER else m
        for m in app.outer_middleware
    ]
    return app


def tracing_variants(generated: Generated) -> list[Variant]:
    """Rows for a use_opentelemetry bake; its `generated_stack` has tracing on (every
    span sampled, no endpoint: nothing exported), as the service runs by default."""
    if not has_tracing(generated):
        return []

    def app() -> Any:
        return generated.factory.create_app(generated.settings_for("WARNING"))

    return [
        Variant(
            "generated_stack_no_tracing",
            "generated app, WARNING, its tracing layer taken out",
            lambda: without_tracing(app()),
        ),
        Variant(
            "generated_stack_tracing_exporting",
            "generated app, WARNING, every span exported over OTLP/HTTP to a local sink",
            lambda: exporting_to_sink(app()),
        ),
    ]


# --------------------------------------------------------------------------- the variants


async def live() -> dict[str, str]:
    """The same endpoint as the generated project's `/health/live`."""
    return {"status": "ok"}


def bare_app() -> Any:
    from fastapi import FastAPI

    # FastAPI's own tracing switches itself on once a tracer provider is set, as the
    # generated app of a use_opentelemetry bake does in this process: the baseline
    # stays untraced.
    app = FastAPI(telemetry={"tracing": False})
    app.get(PATH)(live)
    return app


def base_http_x3_app() -> Any:
    from starlette.requests import Request
    from starlette.responses import Response

    CallNext = Callable[[Request], Awaitable[Response]]
    app = bare_app()
    for _ in range(3):

        async def noop(request: Request, call_next: CallNext) -> Response:
            return await call_next(request)

        app.middleware("http")(noop)
    return app


class NoopASGIMiddleware:
    """A pure-ASGI layer that does the least a real one does: wrap `send`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def wrapped_send(message: Message) -> None:
            await send(message)

        await self.app(scope, receive, wrapped_send)


def pure_asgi_x3_app() -> Any:
    app = bare_app()
    for _ in range(3):
        app.add_middleware(NoopASGIMiddleware)
    return app


# --------------------------------------------------------------------------- metrics (issue 9)


def instrumentator_installed() -> bool:
    return importlib.util.find_spec("prometheus_fastapi_instrumentator") is not None


def bare_with_instrumentator() -> Any:
    """bare + prometheus-fastapi-instrumentator, its default metrics and in-flight gauge
    (the layer's counterpart), on a registry of its own."""
    from prometheus_client import CollectorRegistry
    from prometheus_fastapi_instrumentator import Instrumentator

    app = bare_app()
    Instrumentator(
        should_instrument_requests_inprogress=True, registry=CollectorRegistry()
    ).instrument(app)
    return app


def generated_without_metrics(generated: Generated, log_level: str) -> Any:
    """The generated app with the edge layer's HTTP metrics off (`metrics=None`)."""
    from starlette.middleware import Middleware

    app = generated.factory.create_app(generated.settings_for(log_level))
    app.outer_middleware = [
        Middleware(m.cls, *m.args, **{**m.kwargs, "metrics": None}) if "metrics" in m.kwargs else m
        for m in app.outer_middleware
    ]
    return app


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    build: Callable[[], Any]
    # Root log level while this variant runs: logging is configured per process, so it is
    # set again whenever this variant takes its turn.
    log_level: str = "WARNING"
    headers: RawHeaders = ()  # sent on every request beside the usual ones


# --------------------------------------------------------------------------- the JWT layer


@dataclass(frozen=True)
class JwtBench:
    """The generated JWT layer (auth=jwt bakes) around the bare app, checking a valid
    RS256 token on every request with its key cached: what a request pays for the layer
    once the JWKS is fetched. `verify` is the RSA check alone, the floor of that cost.
    `build_uncached` turns the layer's cache of verified tokens off (where it has one):
    every request then pays a full decode, as the first request with a token does."""

    build: Callable[[], Any]
    headers: RawHeaders
    verify: Callable[[], None]
    build_uncached: Callable[[], Any] | None = None


def jwt_bench(generated: Generated) -> JwtBench | None:
    try:
        jwt_auth = importlib.import_module(f"{generated.package}.middleware.jwt_auth")
        jwks = importlib.import_module(f"{generated.package}.middleware.jwks")
    except ModuleNotFoundError:
        return None
    import jwt
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_jwk = {**jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)}
    public_jwk.update(kid="bench", alg="RS256", use="sig")
    now = int(time.time())
    claims = {
        "iss": JWT_ISSUER,
        "aud": JWT_AUDIENCE,
        "sub": "bench-user",
        "scope": "reports:write",
        "iat": now,
        "exp": now + 86_400,
    }
    token = jwt.encode(claims, private, algorithm="RS256", headers={"kid": "bench"})

    def build(**cache: int) -> Any:
        keys = jwks.JwksCache(issuer=JWT_ISSUER, jwks_url=None, min_refresh_seconds=3600)
        keys.keys = jwks.usable_keys({"keys": [public_jwk]})
        keys.warm_up = _no_fetch  # the key is cached: no issuer is contacted
        return jwt_auth.JwtAuthMiddleware(
            bare_app(),
            keys,
            issuer=JWT_ISSUER,
            audience=JWT_AUDIENCE,
            algorithms=("RS256", "ES256"),
            leeway_seconds=30,
            public_paths=(),  # /health/live is checked like any protected route
            **cache,
        )

    def build_uncached() -> Any:
        return build(cached_tokens=0)

    signing_input, _, signature = token.encode().rpartition(b".")
    raw_signature = jwt.utils.base64url_decode(signature)
    public_key = private.public_key()

    def verify() -> None:
        public_key.verify(raw_signature, signing_input, padding.PKCS1v15(), hashes.SHA256())

    has_cache = hasattr(jwt_auth, "VERIFIED_TOKENS_CACHED")
    headers = ((b"authorization", b"Bearer " + token.encode()),)
    return JwtBench(build, headers, verify, build_uncached if has_cache else None)


async def _no_fetch() -> None:
    return None


def rsa_verify_us(bench: JwtBench, rounds: int = 7, calls: int = 500) -> float:
    """Microseconds of CPU for one RS256 signature check alone, best of `rounds`."""
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(calls):
            bench.verify()
        best = min(best, (time.process_time() - started) / calls)
    return best * 1e6


# CORS and rate limits (issue 11): the generated app with CORS_ALLOW_ORIGINS or RATE_LIMIT.
CROSS_ORIGIN = "https://app.example.com"
CROSS_ORIGIN_HEADERS = ((b"origin", CROSS_ORIGIN.encode()),)
# Never reached: every request pays for its count, none is refused.
UNREACHED_RATE_LIMIT = "1000000000/minute"


def edge_policy_app(
    generated: Generated, *, cors: bool = False, rate_limit: bool = False, redis_url: str = ""
) -> Any:
    overrides: dict[str, Any] = {}
    if cors:
        overrides["cors_allow_origins"] = CROSS_ORIGIN
    if rate_limit:
        overrides["rate_limit"] = UNREACHED_RATE_LIMIT
    if redis_url:  # the Redis store (a Celery bake): jobs_backend=celery picks it
        overrides.update(jobs_backend="celery", redis_url=redis_url)
    app = generated.factory.create_app(generated.settings_for("WARNING", **overrides))
    for layer in app.outer_middleware:
        if layer.cls.__name__ == "RateLimitMiddleware":
            layer.kwargs["exempt_paths"] = ()  # the measured path is a health check
    return app


def edge_policy_variants(generated: Generated, redis_url: str) -> list[Variant]:
    if "rate_limit" not in generated.settings.Settings.model_fields:
        return []
    variants = [
        Variant(
            "generated_stack_cors",
            "generated_stack with CORS_ALLOW_ORIGINS, a cross-origin GET (`Origin`)",
            lambda: edge_policy_app(generated, cors=True),
            headers=CROSS_ORIGIN_HEADERS,
        ),
        Variant(
            "generated_stack_rate_limit",
            "generated_stack with RATE_LIMIT, counted in memory",
            lambda: edge_policy_app(generated, rate_limit=True),
        ),
    ]
    if redis_url:
        variants.append(
            Variant(
                "generated_stack_rate_limit_redis",
                "generated_stack with RATE_LIMIT, counted in Redis: one round trip a request",
                lambda: edge_policy_app(generated, rate_limit=True, redis_url=redis_url),
            )
        )
    return variants


def variants_for(
    generated: Generated, progress: Callable[[str], None], redis_url: str = ""
) -> list[Variant]:
    def generated_app(log_level: str) -> Callable[[], Any]:
        return lambda: generated.factory.create_app(generated.settings_for(log_level))

    def generated_without_outer_middleware() -> Any:
        app = generated.factory.create_app(generated.settings_for("WARNING"))
        app.outer_middleware = []  # read when the stack is built, at the first request
        return app

    variants = [
        Variant("bare", "FastAPI, one route, no middleware", bare_app),
        Variant("base_http_x3", "bare + 3 no-op `@app.middleware('http')`", base_http_x3_app),
        Variant("pure_asgi_x3", "bare + 3 no-op pure-ASGI layers", pure_asgi_x3_app),
    ]
    # The generated app without its middleware separates what the layers cost from what
    # the rest of the app costs (nested routers, FastAPI's max_body_size). It relies on the
    # template's `StackedFastAPI.outer_middleware`; without it the variant is left out.
    if hasattr(generated_app("WARNING")(), "outer_middleware"):
        variants.append(
            Variant(
                "generated_app_no_mw",
                "generated app with its middleware list emptied",
                generated_without_outer_middleware,
            )
        )
    else:
        progress("the generated app has no `outer_middleware`: generated_app_no_mw left out")
    if (jwt_row := jwt_bench(generated)) is not None:
        variants.append(
            Variant(
                "jwt_layer",
                "bare + the JWT layer, a valid RS256 token on every request (key cached)",
                jwt_row.build,
                headers=jwt_row.headers,
            )
        )
        if jwt_row.build_uncached is not None:
            variants.append(
                Variant(
                    "jwt_layer_uncached",
                    "jwt_layer with its cache of verified tokens off: a full decode each time",
                    jwt_row.build_uncached,
                    headers=jwt_row.headers,
                )
            )
    else:
        progress("the project is not an auth=jwt bake: jwt_layer left out")
    # Metrics (issue 9): the stack without them, to read what they add (against
    # generated_stack), and prometheus-fastapi-instrumentator alone on bare.
    if importlib.util.find_spec(f"{generated.package}.middleware.metrics") is not None:
        if instrumentator_installed():
            variants.append(
                Variant(
                    "bare_instrumentator",
                    "bare + prometheus-fastapi-instrumentator",
                    bare_with_instrumentator,
                )
            )
        else:
            progress("prometheus-fastapi-instrumentator is not installed: no bare_instrumentator")
        variants.append(
            Variant(
                "generated_stack_no_metrics",
                "generated app, WARNING, HTTP metrics off",
                lambda: generated_without_metrics(generated, "WARNING"),
            )
        )
    return [
        *variants,
        Variant("generated_stack", "generated app, log level WARNING", generated_app("WARNING")),
        Variant(
            "generated_stack_info_logging",
            "generated app, INFO: one JSON access line a request, to /dev/null",
            generated_app("INFO"),
            log_level="INFO",
        ),
        *tracing_variants(generated),
        *edge_policy_variants(generated, redis_url),
    ]


# --------------------------------------------------------------------------- in-process driver


@dataclass(frozen=True)
class Timing:
    wall: float  # seconds on the clock
    cpu: float  # seconds of this process's CPU time: blind to time spent descheduled


def new_scope(lifespan_state: dict[str, Any], headers: RawHeaders = ()) -> Scope:
    """What uvicorn hands the app for `GET /health/live` from curl."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 51000),
        "scheme": "http",
        "method": "GET",
        "root_path": "",
        "path": PATH,
        "raw_path": PATH.encode(),
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"user-agent", b"middleware-cost-bench"),
            (b"accept", b"*/*"),
            *headers,
        ],
        "state": lifespan_state.copy(),
    }


async def one_request(
    app: ASGIApp, lifespan_state: dict[str, Any], headers: RawHeaders = ()
) -> tuple[int, bytes]:
    status = 0
    body = b""
    request_sent = False
    response_done = asyncio.Event()

    async def receive() -> Message:
        nonlocal request_sent
        if not request_sent:
            request_sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        # Like uvicorn: after the body, a receive waits until the response is done.
        await response_done.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status, body
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            body += message.get("body", b"")
            if not message.get("more_body", False):
                response_done.set()

    await app(new_scope(lifespan_state, headers), receive, send)
    return status, body


async def drive(
    app: ASGIApp, lifespan_state: dict[str, Any], requests: int, headers: RawHeaders = ()
) -> Timing:
    """Send `requests` requests one after another; return the time they took."""
    failures = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(requests):
        status, _body = await one_request(app, lifespan_state, headers)
        failures += status != 200
    timing = Timing(time.perf_counter() - wall, time.process_time() - cpu)
    if failures:
        raise RuntimeError(f"{failures} of {requests} requests did not answer 200")
    return timing


@contextlib.asynccontextmanager
async def lifespan(app: ASGIApp) -> AsyncIterator[dict[str, Any]]:
    """Run the app's startup before the requests and its shutdown after, as uvicorn does."""
    state: dict[str, Any] = {}
    to_app: asyncio.Queue[Message] = asyncio.Queue()
    from_app: asyncio.Queue[Message] = asyncio.Queue()
    scope: Scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": state}

    async def send(message: Message) -> None:
        await from_app.put(message)

    async def run_app() -> None:
        await app(scope, to_app.get, send)

    task = asyncio.create_task(run_app())
    await to_app.put({"type": "lifespan.startup"})
    reply = await from_app.get()
    if reply["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"startup failed: {reply}")
    try:
        yield state
    finally:
        await to_app.put({"type": "lifespan.shutdown"})
        await from_app.get()
        await task


@dataclass
class Measured:
    variant: Variant
    requests_per_slice: int = 0
    wall_rates: list[float] = field(default_factory=list)  # requests per second on the clock
    cpu_rates: list[float] = field(default_factory=list)  # requests per CPU-second
    wrk_rates: list[float] = field(default_factory=list)


class LogSwitch:
    """Sets the generated service's logging for the variant about to run."""

    def __init__(self, generated: Generated, sink: TextIO) -> None:
        self.generated = generated
        self.sink = sink
        self.current = ""

    def __call__(self, level: str) -> None:
        if level != self.current:
            self.generated.logs.configure_logging(level, "json", stream=self.sink)
            self.current = level


async def run_in_process(
    variants: list[Variant],
    set_logging: LogSwitch,
    rounds: int,
    round_seconds: float,
    slices: int,
    progress: Callable[[str], None],
) -> list[Measured]:
    measured = [Measured(v) for v in variants]
    async with contextlib.AsyncExitStack() as stack:
        apps: list[tuple[ASGIApp, dict[str, Any]]] = []
        for m in measured:
            set_logging(m.variant.log_level)
            app = m.variant.build()
            set_logging.current = ""  # create_app configured logging itself
            set_logging(m.variant.log_level)
            state = await stack.enter_async_context(lifespan(app))
            status, body = await one_request(app, state, m.variant.headers)
            if status != 200 or body != EXPECTED_BODY:
                raise RuntimeError(f"{m.variant.name}: {PATH} answered {status} {body!r}")
            apps.append((app, state))

        # Warm up each variant, then size its slices to last about `slice_seconds`.
        slice_seconds = round_seconds / slices
        for m, (app, state) in zip(measured, apps, strict=True):
            set_logging(m.variant.log_level)
            batch, spent = 50, 0.0
            while spent < 0.3:
                spent = (await drive(app, state, batch, m.variant.headers)).cpu
                batch *= 2
            rate = batch / 2 / spent
            m.requests_per_slice = max(10, round(rate * slice_seconds))

        # A round is `slices` short turns of every variant, in alternating order, so a
        # burst from a neighbouring process lands on all of them alike.
        order = list(zip(measured, apps, strict=True))
        turn = 0
        for number in range(rounds):
            gc.collect()
            wall = dict.fromkeys(range(len(order)), 0.0)
            cpu = dict.fromkeys(range(len(order)), 0.0)
            for _ in range(slices):
                turns = list(enumerate(order))
                for index, (m, (app, state)) in turns if turn % 2 == 0 else reversed(turns):
                    set_logging(m.variant.log_level)
                    timing = await drive(app, state, m.requests_per_slice, m.variant.headers)
                    wall[index] += timing.wall
                    cpu[index] += timing.cpu
                turn += 1
            for index, (m, _app) in enumerate(order):
                requests = m.requests_per_slice * slices
                m.wall_rates.append(requests / wall[index])
                m.cpu_rates.append(requests / cpu[index])
            progress(f"round {number + 1}/{rounds} done")
    return measured


def event_loop_factory(loop: str) -> tuple[Callable[[], asyncio.AbstractEventLoop], str]:
    if loop in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if loop == "uvloop":
                raise
        else:
            return uvloop.new_event_loop, f"uvloop {installed_version('uvloop')}"
    return asyncio.new_event_loop, "asyncio"


# --------------------------------------------------------------------------- uvicorn + wrk


@contextlib.contextmanager
def served(app: Any, loop: str) -> Iterator[int]:
    """Serve `app` with uvicorn on a free 127.0.0.1 port, in a thread; yield the port."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        loop=loop,
        lifespan="on",
        access_log=False,
        log_config=None,  # keep the generated service's logging as the variant set it
        log_level="warning",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def wrk_rate(port: int, seconds: int, connections: int, headers: RawHeaders = ()) -> float:
    text_headers = tuple((name.decode(), value.decode()) for name, value in headers)
    result = run_wrk(port, Request("GET", PATH, headers=text_headers), seconds, connections)
    if result.unexpected or result.errors:
        raise RuntimeError(f"wrk saw {result.unexpected} non-2xx and {result.errors} errors")
    return result.per_second


def run_wrk_rounds(
    measured: list[Measured],
    set_logging: LogSwitch,
    loop: str,
    rounds: int,
    seconds: int,
    connections: int,
    progress: Callable[[str], None],
) -> None:
    for number in range(rounds):
        for m in measured if number % 2 == 0 else reversed(measured):
            set_logging(m.variant.log_level)
            app = m.variant.build()
            set_logging.current = ""
            set_logging(m.variant.log_level)
            with served(app, loop) as port:
                wrk_rate(port, 1, connections, m.variant.headers)  # warm-up, not counted
                m.wrk_rates.append(wrk_rate(port, seconds, connections, m.variant.headers))
        progress(f"wrk round {number + 1}/{rounds} done")


# --------------------------------------------------------------------------- report


def installed_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_info(loop_name: str) -> list[str]:
    cpus = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus
    versions = ", ".join(
        f"{name} {installed_version(name)}"
        for name in ("fastapi", "starlette", "uvicorn", "pydantic", "cookiecutter")
    )
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return [
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- python: {platform.python_implementation()} {platform.python_version()}"
        f" on {platform.system()} {platform.machine()}",
        f"- cpus: {cpus} (usable by this process: {usable}); load average before: {load}",
        f"- {versions}; event loop: {loop_name}",
    ]


def report(
    measured: list[Measured],
    rounds: int,
    info: list[str],
    package: str,
    source: str,
    with_wrk: bool,
    rsa_us: float | None = None,
) -> str:
    bare = measured[0]
    assert bare.variant.name == "bare"
    bare_wall, bare_cpu = max(bare.wall_rates), max(bare.cpu_rates)
    header = (
        "| variant | req/s (wall, best) | vs bare | req/CPU-s (best) | vs bare "
        "| vs bare, each round | CPU us/req | overhead vs bare |"
    )
    rule = "|---|--:|--:|--:|--:|--:|--:|--:|"
    if with_wrk:
        header += " wrk req/s (noisier) | wrk vs bare |"
        rule += "--:|--:|"
    lines = [
        f"## Middleware cost: GET {PATH}, in-process, best of {rounds} interleaved rounds",
        "",
        *info,
        f"- generated package: `{package}`, {source}",
        "",
        header,
        rule,
    ]
    for m in measured:
        wall, cpu = max(m.wall_rates), max(m.cpu_rates)
        per_round = [v / b for v, b in zip(m.cpu_rates, bare.cpu_rates, strict=True)]
        per_request = 1e6 / cpu
        overhead = "-" if m is bare else f"{per_request - 1e6 / bare_cpu:+.1f} us"
        row = (
            f"| `{m.variant.name}` | {wall:,.0f} | {wall / bare_wall:.2f} | {cpu:,.0f} | "
            f"{cpu / bare_cpu:.2f} | {min(per_round):.2f}-{max(per_round):.2f} | "
            f"{per_request:.1f} | {overhead} |"
        )
        if with_wrk:
            best_wrk = max(m.wrk_rates)
            row += f" {best_wrk:,.0f} | {best_wrk / max(bare.wrk_rates):.2f} |"
        lines.append(row)
    by_name = {m.variant.name: m for m in measured}
    if "jwt_layer" in by_name and rsa_us is not None:
        layer_us = 1e6 / max(by_name["jwt_layer"].cpu_rates) - 1e6 / bare_cpu
        verdict = "met" if layer_us <= rsa_us * 1.10 else "**missed**"
        lines += [
            "",
            f"JWT layer: {layer_us:+.1f} us a request over bare; the RS256 signature check "
            f"alone costs {rsa_us:.1f} us (target: the layer at most 1.10 times it: {verdict}).",
        ]
    lines += ["", "| target (CPU time, best round, vs bare) | measured | |", "|---|--:|---|"]
    for name, target, what in TARGETS:
        if name in by_name:
            ratio = max(by_name[name].cpu_rates) / bare_cpu
            verdict = "met" if ratio >= target else "**missed**"
            lines.append(f"| `{name}` >= {target:.2f} ({what}) | {ratio:.2f} | {verdict} |")
    lines += ["", "Variants:", ""]
    lines += [f"- `{m.variant.name}`: {m.variant.description}" for m in measured]
    lines += [
        "",
        "req/s: each variant's best round, on the wall clock; req/CPU-s: requests per second",
        "of this process's CPU time, which leaves out time spent waiting for a core (the",
        "steadier figure on a shared machine). `vs bare, each round`: the lowest and highest",
        "CPU ratio of single rounds. `overhead vs bare`: extra CPU time per request.",
    ]
    if with_wrk:
        lines += [
            "wrk: uvicorn (in a thread of this process) and one wrk thread on the same cores,",
            f"best of {len(bare.wrk_rates)} run(s) a variant; expect swings of 10% or more.",
        ]
    return "\n".join(lines)


def as_json(measured: list[Measured], rsa_us: float | None) -> dict[str, Any]:
    """What `--json` prints: CPU us per request, best round, for each variant."""
    return {
        "cpu_us": {m.variant.name: 1e6 / max(m.cpu_rates) for m in measured},
        "rsa_verify_us": rsa_us,
    }


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=12, help="rounds per variant (best wins)")
    parser.add_argument(
        "--round-seconds", type=float, default=0.4, help="about how long one round lasts"
    )
    parser.add_argument(
        "--slices", type=int, default=20, help="turns each variant gets within a round"
    )
    parser.add_argument(
        "--template", type=Path, default=REPO_ROOT, help="the cookiecutter template to bake"
    )
    parser.add_argument(
        "--project", type=Path, help="an already baked project (skips baking the template)"
    )
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    parser.add_argument(
        "--redis-url",
        default="",
        help="a Redis for the rate-limit row with the Redis store (needs a Celery --project)",
    )
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated variants to run (bare is always kept: the ratios need it)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print CPU us per request of each variant (and the RS256 check) as JSON instead",
    )
    parser.add_argument("--wrk", action="store_true", help="also measure through uvicorn + wrk")
    parser.add_argument("--wrk-seconds", type=int, default=3)
    parser.add_argument("--wrk-connections", type=int, default=16)
    parser.add_argument("--wrk-rounds", type=int, default=2)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.slices < 1 or args.round_seconds <= 0:
        parser.error("--rounds and --slices must be at least 1, --round-seconds positive")
    if not 1 <= args.wrk_seconds <= MAX_WRK_SECONDS:
        parser.error(f"--wrk-seconds must be between 1 and {MAX_WRK_SECONDS}")
    if not 1 <= args.wrk_connections <= MAX_WRK_CONNECTIONS:
        parser.error(f"--wrk-connections must be between 1 and {MAX_WRK_CONNECTIONS}")
    if args.wrk_rounds < 1:
        parser.error("--wrk-rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    needed = ["fastapi", "pydantic_settings"] + ([] if args.project else ["cookiecutter"])
    if missing := [name for name in needed if importlib.util.find_spec(name) is None]:
        print(
            f"this interpreter cannot import {', '.join(missing)}: run the benchmark with a "
            "venv that has the generated project's dependencies (see the top of this file)",
            file=sys.stderr,
        )
        return 2
    if args.wrk and shutil.which("wrk") is None:
        print("--wrk needs `wrk` on PATH (Debian/Ubuntu: apt-get install wrk)", file=sys.stderr)
        return 2

    def progress(text: str) -> None:
        print(f"[bench] {text}", file=sys.stderr, flush=True)

    loop_factory, loop_name = event_loop_factory(args.loop)
    uvicorn_loop = "asyncio" if loop_name == "asyncio" else "uvloop"
    info = machine_info(loop_name)
    with (
        tempfile.TemporaryDirectory(prefix="middleware-cost-") as workdir,
        open(os.devnull, "w") as sink,
    ):
        if args.project is not None:
            project = args.project.resolve()
            source = f"from {project}"
        else:
            # auth=jwt, for the JWT layer's row; /health/live stays public, so the other
            # rows see the layer pass the request through.
            source = f"baked from {args.template.resolve()} with job_backend=inprocess auth=jwt"
            progress(f"baking {args.template} (job_backend=inprocess, auth=jwt)")
            project = bake(
                args.template.resolve(), "inprocess", Path(workdir) / "bake", Path(workdir), "jwt"
            )
        generated = import_generated(project)
        set_logging = LogSwitch(generated, sink)
        variants = variants_for(generated, progress, args.redis_url)
        if args.only:
            # bench/run.py asks for the few rows it reports beside its wrk figures.
            wanted = {"bare", *(name.strip() for name in args.only.split(","))}
            variants = [v for v in variants if v.name in wanted]

        progress(f"in-process: {len(variants)} variants x {args.rounds} rounds")
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            measured = runner.run(
                run_in_process(
                    variants, set_logging, args.rounds, args.round_seconds, args.slices, progress
                )
            )
        if args.wrk:
            progress(f"wrk: {args.wrk_rounds} x {args.wrk_seconds}s per variant")
            run_wrk_rounds(
                measured,
                set_logging,
                uvicorn_loop,
                args.wrk_rounds,
                args.wrk_seconds,
                args.wrk_connections,
                progress,
            )
    jwt_row = jwt_bench(generated)
    rsa_us = rsa_verify_us(jwt_row) if jwt_row is not None else None
    if args.json:
        print(json.dumps(as_json(measured, rsa_us)))
        return 0
    print(report(measured, args.rounds, info, generated.package, source, args.wrk, rsa_us))
    return 0


if __name__ == "__main__":
    sys.exit(main())
