"""Instructions per request, counted by valgrind's callgrind: a measure of the app's own
work that a busy machine cannot sway (the same count run after run, whatever else runs).

Run from the repository root with a project baked with `job_backend=inprocess` and an
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
    bare_app,
    drive,
    exporting_to_sink,
    has_tracing,
    import_generated,
    lifespan,
    without_tracing,
)

VARIANTS = {
    "bare": ("FastAPI, one route, no middleware", "WARNING"),
    "generated_app_no_mw": ("generated app with its middleware list emptied", "WARNING"),
    "generated_stack": ("generated app, log level WARNING", "WARNING"),
    "generated_stack_info_logging": ("generated app, INFO: one JSON access line", "INFO"),
    # Projects baked with use_opentelemetry only (their `generated_stack` traces every
    # request, with no endpoint: nothing exported). Only this thread's instructions are
    # counted: the exporter's own thread is not.
    "generated_stack_no_tracing": ("generated app, WARNING, tracing layer taken out", "WARNING"),
    "generated_stack_tracing_exporting": (
        "generated app, WARNING, every span exported over OTLP/HTTP to a local sink",
        "WARNING",
    ),
}
TRACING_VARIANTS = ("generated_stack_no_tracing", "generated_stack_tracing_exporting")


def child(project: Path, variant: str, requests: int) -> None:
    """Serve `requests` requests in-process; callgrind counts them (see the docstring)."""
    generated = import_generated(project)
    log_level = VARIANTS[variant][1]
    if variant == "bare":
        app = bare_app()
    else:
        app = generated.factory.create_app(generated.settings_for(log_level))
        if variant == "generated_app_no_mw":
            app.outer_middleware = []
        elif variant == "generated_stack_no_tracing":
            without_tracing(app)
        elif variant == "generated_stack_tracing_exporting":
            exporting_to_sink(app)
    generated.logs.configure_logging(log_level, "json", stream=open(os.devnull, "w"))  # noqa: SIM115

    async def main() -> None:
        async with lifespan(app) as state:
            await drive(app, state, 300)  # warm-up, not counted

            def measured(_: int) -> int:
                # Nothing here waits on I/O, so the coroutine runs to its end when sent.
                coroutine = drive(app, state, requests // 2)
                try:
                    while True:
                        coroutine.send(None)
                except StopIteration:
                    return 0

            sorted([0, 1], key=measured)

    asyncio.run(main())


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
    traced = has_tracing(import_generated(args.project.resolve()))
    variants = [v for v in VARIANTS if traced or v not in TRACING_VARIANTS]
    with (
        tempfile.TemporaryDirectory(prefix="instructions-") as workdir,
        ThreadPoolExecutor(3) as pool,
    ):
        counts = dict(
            zip(
                variants,
                pool.map(
                    lambda v: count(args.project.resolve(), v, args.requests, Path(workdir)),
                    variants,
                ),
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
