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
    CROSS_ORIGIN_HEADERS,
    bare_app,
    drive,
    edge_policy_app,
    import_generated,
    lifespan,
)

VARIANTS = {
    "bare": ("FastAPI, one route, no middleware", "WARNING"),
    "generated_app_no_mw": ("generated app with its middleware list emptied", "WARNING"),
    "generated_stack": ("generated app, log level WARNING", "WARNING"),
    "generated_stack_info_logging": ("generated app, INFO: one JSON access line", "INFO"),
    # CORS and rate limits (issue 11), at WARNING: compare with `generated_stack`.
    "generated_stack_cors": ("generated_stack, CORS_ALLOW_ORIGINS, a cross-origin GET", "WARNING"),
    "generated_stack_rate_limit": ("generated_stack, RATE_LIMIT counted in memory", "WARNING"),
}


def child(project: Path, variant: str, requests: int) -> None:
    """Serve `requests` requests in-process; callgrind counts them (see the docstring)."""
    generated = import_generated(project)
    log_level = VARIANTS[variant][1]
    headers = CROSS_ORIGIN_HEADERS if variant == "generated_stack_cors" else ()
    if variant == "bare":
        app = bare_app()
    elif variant == "generated_stack_cors":
        app = edge_policy_app(generated, cors=True)
    elif variant == "generated_stack_rate_limit":
        app = edge_policy_app(generated, rate_limit=True)
    else:
        app = generated.factory.create_app(generated.settings_for(log_level))
        if variant == "generated_app_no_mw":
            app.outer_middleware = []
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
    with (
        tempfile.TemporaryDirectory(prefix="instructions-") as workdir,
        ThreadPoolExecutor(3) as pool,
    ):
        counts = dict(
            zip(
                VARIANTS,
                pool.map(
                    lambda v: count(args.project.resolve(), v, args.requests, Path(workdir)),
                    VARIANTS,
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
    for variant, (description, _) in VARIANTS.items():
        print(f"- `{variant}`: {description}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
