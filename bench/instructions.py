"""Instructions per request, counted by valgrind's callgrind: a measure of the app's own
work that a busy machine cannot sway (the same count run after run, whatever else runs).

Run from the repository root with a project baked with `job_backend=inprocess` (and
`auth=jwt` for the JWT rows, which are left out otherwise) and an
interpreter that has its dependencies (see bench/middleware_cost.py), and `valgrind`
on PATH (Debian: apt-get install valgrind):

    python bench/instructions.py --project /tmp/bench-bake/orders-service

Each variant runs in its own process under callgrind, which counts only the measured
requests (the loop runs inside a `sorted()` key call, the one C function callgrind is
told to count in), about a minute each, three at a time. It counts instructions, not
time: system calls (a log line's write) and cache misses are not in it, so read it
beside bench/middleware_cost.py's CPU times, not instead of them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from middleware_cost import (
    CROSS_ORIGIN_HEADERS,
    bare_app,
    bare_with_instrumentator,
    drive,
    edge_policy_app,
    exporting_to_sink,
    generated_without_metrics,
    has_tracing,
    import_generated,
    instrumentator_installed,
    jwt_bench,
    lifespan,
    without_tracing,
)

VARIANTS = {
    "bare": ("FastAPI, one route, no middleware", "WARNING"),
    "jwt_layer": ("bare + the JWT layer, a valid RS256 token (key cached)", "WARNING"),
    "jwt_layer_uncached": ("jwt_layer, its cache of verified tokens off", "WARNING"),
    "rs256_verify_only": ("the RS256 signature check alone (cryptography), no request", "WARNING"),
    # Metrics (issue 9): the instrumentator alone on bare; the stack with HTTP metrics off
    # (what they add is generated_stack's count less this one).
    "bare_instrumentator": ("bare + prometheus-fastapi-instrumentator", "WARNING"),
    "generated_stack_no_metrics": ("generated app, WARNING, HTTP metrics off", "WARNING"),
    "generated_app_no_mw": ("generated app with its middleware list emptied", "WARNING"),
    "generated_stack": ("generated app, log level WARNING", "WARNING"),
    "generated_stack_info_logging": ("generated app, INFO: one JSON access line", "INFO"),
    # Error reporting (issue 9): sentry_sdk instruments Starlette once SENTRY_DSN is set.
    # Its own process here, as every variant: the instrumentation is process-wide.
    "generated_stack_sentry": ("generated app, WARNING, SENTRY_DSN set", "WARNING"),
    "generated_stack_sentry_info_logging": ("generated app, INFO, SENTRY_DSN set", "INFO"),
    # Projects baked with use_opentelemetry only (their `generated_stack` traces every
    # request, with no endpoint: nothing exported). Only this thread's instructions are
    # counted: the exporter's own thread is not.
    "generated_stack_no_tracing": ("generated app, WARNING, tracing layer taken out", "WARNING"),
    "generated_stack_tracing_exporting": (
        "generated app, WARNING, every span exported over OTLP/HTTP to a local sink",
        "WARNING",
    ),
    # CORS and rate limits (issue 11), at WARNING: compare with `generated_stack`.
    "generated_stack_cors": ("generated_stack, CORS_ALLOW_ORIGINS, a cross-origin GET", "WARNING"),
    "generated_stack_rate_limit": ("generated_stack, RATE_LIMIT counted in memory", "WARNING"),
}
# Never reached: a 200 sends no report, and nothing listens on port 9 (discard).
BENCH_SENTRY_DSN = "http://benchmark@127.0.0.1:9/1"
TRACING_VARIANTS = ("generated_stack_no_tracing", "generated_stack_tracing_exporting")


def child(project: Path, variant: str, requests: int) -> None:
    """Serve `requests` requests in-process; callgrind counts them (see the docstring)."""
    generated = import_generated(project)
    log_level = VARIANTS[variant][1]
    headers: tuple[tuple[bytes, bytes], ...] = (
        CROSS_ORIGIN_HEADERS if variant == "generated_stack_cors" else ()
    )
    jwt_row = jwt_bench(generated) if variant in JWT_VARIANTS else None
    if jwt_row is not None and variant == "rs256_verify_only":
        verify = jwt_row.verify
        verify()  # warm-up, not counted

        def verified(_: int) -> int:
            for _ in range(requests // 2):
                verify()
            return 0

        sorted([0, 1], key=verified)  # `requests` checks in all, counted as the loops are
        return
    if jwt_row is not None and variant == "jwt_layer_uncached":
        if jwt_row.build_uncached is None:
            raise SystemExit("this bake's JWT layer has no cache of verified tokens")
        app = jwt_row.build_uncached()
        headers = jwt_row.headers
    elif jwt_row is not None:
        app = jwt_row.build()
        headers = jwt_row.headers
    elif variant == "bare":
        app = bare_app()
    elif variant == "generated_stack_cors":
        app = edge_policy_app(generated, cors=True)
    elif variant == "generated_stack_rate_limit":
        app = edge_policy_app(generated, rate_limit=True)
    elif variant == "bare_instrumentator":
        app = bare_with_instrumentator()
    elif variant == "generated_stack_no_metrics":
        app = generated_without_metrics(generated, log_level)
    else:
        settings = generated.settings_for(log_level)
        if variant.startswith("generated_stack_sentry"):
            if "sentry_dsn" not in type(settings).model_fields:
                raise SystemExit("this bake has no SENTRY_DSN setting")
            values = {**settings.model_dump(), "sentry_dsn": BENCH_SENTRY_DSN}
            settings = type(settings)(_env_file=None, **values)
        app = generated.factory.create_app(settings)
        if variant == "generated_app_no_mw":
            app.outer_middleware = []
        elif variant == "generated_stack_no_tracing":
            without_tracing(app)
        elif variant == "generated_stack_tracing_exporting":
            exporting_to_sink(app)
    generated.logs.configure_logging(log_level, "json", stream=open(os.devnull, "w"))  # noqa: SIM115

    async def main() -> None:
        async with lifespan(app) as state:
            await drive(app, state, 300, headers)  # warm-up, not counted

            def measured(_: int) -> int:
                # Nothing here waits on I/O, so the coroutine runs to its end when sent.
                coroutine = drive(app, state, requests // 2, headers)
                try:
                    while True:
                        coroutine.send(None)
                except StopIteration:
                    return 0

            sorted([0, 1], key=measured)

    asyncio.run(main())


JWT_VARIANTS = ("jwt_layer", "jwt_layer_uncached", "rs256_verify_only")


def count(project: Path, variant: str, requests: int, workdir: Path) -> int:
    out = workdir / f"callgrind.{variant}"
    subprocess.run(
        [
            "valgrind", "--tool=callgrind", "--collect-atstart=no",
            "--toggle-collect=list_sort_impl*", f"--callgrind-out-file={out}",
            sys.executable, __file__, "--child", variant,
            "--project", str(project), "--requests", str(requests),
        ],
        check=True, capture_output=True,
    )  # fmt: skip
    for line in out.read_text().splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1]) // requests
    raise RuntimeError(f"no summary in {out}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--project", type=Path, required=True, help="an in-process bake")
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.project.resolve(), args.child, args.requests)
        return 0
    if shutil.which("valgrind") is None:
        print("needs valgrind on PATH (Debian/Ubuntu: apt-get install valgrind)", file=sys.stderr)
        return 2
    project = args.project.resolve()
    traced = has_tracing(import_generated(project))
    variants = [
        v
        for v in VARIANTS
        if (v not in JWT_VARIANTS or any(project.glob("src/*/middleware/jwt_auth.py")))
        and (v != "bare_instrumentator" or instrumentator_installed())
        and (traced or v not in TRACING_VARIANTS)
    ]
    with (
        tempfile.TemporaryDirectory(prefix="instructions-") as workdir,
        ThreadPoolExecutor(3) as pool,
    ):
        counts = dict(
            zip(
                variants,
                pool.map(lambda v: count(project, v, args.requests, Path(workdir)), variants),
                strict=True,
            )
        )
    bare = counts["bare"]
    print(f"## Instructions per request: GET /health/live, {args.requests} requests (callgrind)\n")
    print("| variant | instructions | vs bare | extra |\n|---|--:|--:|--:|")
    for variant, instructions in counts.items():
        print(
            f"| `{variant}` | {instructions:,} | {bare / instructions:.3f} "
            f"| {instructions - bare:+,} |"
        )
    print("\nVariants:\n")
    for variant in variants:
        print(f"- `{variant}`: {VARIANTS[variant][0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
