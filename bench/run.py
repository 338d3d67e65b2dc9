"""Benchmark the generated service: middleware cost, response time while heavy jobs run,
enqueue throughput, and the cost of generating a project. Everything side by side in one
run, on loopback, bounded in time; a Markdown table and JSON go to a results folder.

From the template's checkout, with its dev requirements installed (cookiecutter):

    python bench/run.py                  # about 8 minutes on 2 cores
    python bench/run.py --quick          # about 3 minutes, fewer and shorter rounds

It bakes the template twice (job_backend=inprocess and celery), installs each bake into
a fresh virtualenv and runs its test suite (part 4: the cost of generation), then serves
the bakes with uvicorn, one process per variant, and loads them with wrk (an asyncio
client when wrk is missing). Redis runs as a private `redis-server` on a free port, with
a real Celery worker where jobs must run. Part 6 (memory: one API process's RSS over
100,000 requests, 20,000 of them jobs, on each backend) adds about 6 minutes, under
one with --quick; `--parts` picks parts. Read docs/benchmarks.md for what is measured
and how to read it.

Part 1 also serves the optional layers (issues 9 and 11): the JWT layer (a third bake,
auth=jwt), a rate limit counted in memory and in its own redis-server, SENTRY_DSN set,
and tracing on and exporting to a local sink (a fourth bake, use_opentelemetry=true);
beside them, the same layers in-process (`middleware_cost.py --only ... --json`, CPU us
a request) and the RS256 check alone, the JWT target's yardstick.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import http.client
import importlib.metadata
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import (
    HOST,
    Connection,
    LoadResult,
    Request,
    Sample,
    open_loop,
    percentile,
    saturate,
    wrk_available,
)

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
BACKENDS = ("inprocess", "celery")
SIMULATE_SECONDS = (0.0, 1.0, 5.0)
LIVE = Request("GET", "/health/live")
# Targets from the issue, checked on the ratios this run measured.
# Through uvicorn: against bare FastAPI with uvicorn's access line (the default deploy),
# and against the same work done by BaseHTTPMiddleware layers.
TARGET_STACK_VS_DEFAULT_DEPLOY = 0.95
TARGET_STACK_VS_BASE_HTTP = 5.0
# Issue 9: metrics on cost at most 5% of throughput (against the stack with them off,
# a little stricter than the 5% of the no-middleware app's).
TARGET_METRICS_VS_NO_METRICS = 0.95
# Issue 11: the JWT layer, key cached, costs at most the RS256 check itself plus 10%.
TARGET_JWT_VS_RSA_VERIFY = 1.10
# As bench/instructions.py's: nothing listens on port 9, and a 200 sends no report.
SENTRY_DSN_NOWHERE = "http://benchmark@127.0.0.1:9/1"
TARGET_POST_P99_VS_LIVE_P99 = 2.0
TARGET_JOBS_VS_LIVE = 0.5
TARGET_ENQUEUE_VS_RAW = 0.5
STARTUP_TIMEOUT = 30.0


def progress(text: str) -> None:
    print(f"[bench {datetime.now().strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class Processes:
    """Every process the benchmark starts, each in its own process group, all stopped
    on the way out, whatever happens."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: list[subprocess.Popen[bytes]] = []

    def start(
        self, name: str, command: Sequence[str | Path], **options: Any
    ) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [str(part) for part in command],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **options,
        )
        log.close()
        self.running.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes], grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `grace`: a server with a backlog of in-process jobs
        would otherwise finish them all before it exits."""
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if process in self.running:
            self.running.remove(process)

    def stop_all(self) -> None:
        for process in reversed(list(self.running)):
            self.stop(process, grace=2.0)


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


def answers(port: int, path: str, status: int = 200) -> bool:
    try:
        return http_get(port, path, timeout=2.0)[0] == status
    except OSError:
        return False


# --------------------------------------------------------------------------- bakes


@dataclass
class Bake:
    backend: str
    project: Path
    package: str
    python: Path  # an interpreter that has the project's dependencies
    on_path: bool  # True: the project is not installed, put its src on PYTHONPATH

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
            and not key.startswith("PYTEST_")
        }
        env["PATH"] = f"{self.python.parent}{os.pathsep}{env.get('PATH', '')}"
        paths = [str(BENCH_DIR)] + ([str(self.project / "src")] if self.on_path else [])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env["BENCH_PACKAGE"] = self.package
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.update(extra)
        return env


def cookiecutter_config(workdir: Path) -> Path:
    """Keep cookiecutter's replay files and clone cache out of the user's home."""
    config = workdir / "cookiecutter-config.yaml"
    if not config.exists():
        config.write_text(
            f'cookiecutters_dir: "{workdir / "cookiecutters"}"\n'
            f'replay_dir: "{workdir / "replay"}"\n'
        )
    return config


def bake(
    template: Path, backend: str, output: Path, workdir: Path, auth: str = "none", **answers: Any
) -> Path:
    """Bake with `job_backend=backend` and `auth=auth` (none, token or jwt), and any other
    `answers` (use_opentelemetry=True)."""
    from cookiecutter.main import cookiecutter  # type: ignore[import-untyped]

    project = cookiecutter(
        str(template),
        no_input=True,
        extra_context={"job_backend": backend, "auth": auth, **answers},
        output_dir=str(output),
        config_file=str(cookiecutter_config(workdir)),
    )
    return Path(project)


def package_of(project: Path) -> str:
    packages = sorted(p.parent.name for p in (project / "src").glob("*/factory.py"))
    if len(packages) != 1:
        raise RuntimeError(f"expected one package under {project / 'src'}, found {packages}")
    return packages[0]


def timed(command: Sequence[str | Path], log: Path, **options: Any) -> tuple[float, str]:
    started = time.perf_counter()
    completed = subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, check=False, **options
    )
    elapsed = time.perf_counter() - started
    log.write_text(completed.stdout + completed.stderr)
    if completed.returncode != 0:
        raise RuntimeError(
            f"{' '.join(map(str, command))} failed ({completed.returncode}); see {log}:\n"
            + (completed.stdout + completed.stderr)[-3000:]
        )
    return elapsed, completed.stdout


def generation_cost(
    args: argparse.Namespace, workdir: Path, logs: Path
) -> tuple[dict[str, Any], dict[str, Bake]]:
    """Part 4: time to bake; time to bake, install and pass the generated tests."""
    results: dict[str, Any] = {"bake_repeats": args.bake_repeats, "backends": {}}
    bakes: dict[str, Bake] = {}
    for backend in BACKENDS:
        times = []
        for attempt in range(args.bake_repeats if args.measure_generation else 0):
            output = workdir / f"bake-timing-{backend}-{attempt}"
            started = time.perf_counter()
            bake(args.template, backend, output, workdir)
            times.append(time.perf_counter() - started)
            shutil.rmtree(output)
        row: dict[str, Any] = {"bake_seconds": times}

        started = time.perf_counter()
        project = bake(args.template, backend, workdir / f"bake-{backend}", workdir)
        bake_seconds = time.perf_counter() - started
        package = package_of(project)
        if args.python is not None:
            bakes[backend] = Bake(backend, project, package, args.python, on_path=True)
            row["install"] = f"skipped: --python {args.python} given"
        else:
            venv = workdir / f"venv-{backend}"
            progress(f"{backend}: fresh virtualenv, pip install -e '.[dev]'")
            venv_seconds, _ = timed(
                [sys.executable, "-m", "venv", venv], logs / f"venv-{backend}.log"
            )
            python = venv / "bin" / "python"
            pip = [python, "-m", "pip", "install", "--disable-pip-version-check", "-e", ".[dev]"]
            install_seconds, _ = timed(pip, logs / f"install-{backend}.log", cwd=project)
            bake_env = Bake(backend, project, package, python, on_path=False)
            bakes[backend] = bake_env
            if not args.measure_generation:
                row["tests"] = "not run: part 'generation' not asked for"
                results["backends"][backend] = row
                continue
            progress(f"{backend}: running the generated test suite")
            test_env = bake_env.env(REQUIRE_REDIS="1")
            del test_env["PYTHONPATH"]
            test_seconds, output = timed(
                [python, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                logs / f"tests-{backend}.log",
                cwd=project,
                env=test_env,
            )
            summary = re.findall(r"(\d+) (passed|failed|skipped|errors?)", output)
            counts = {kind: int(number) for number, kind in summary}
            row.update(
                bake_once_seconds=bake_seconds,
                venv_seconds=venv_seconds,
                install_seconds=install_seconds,
                test_seconds=test_seconds,
                tests=counts,
                total_seconds=bake_seconds + venv_seconds + install_seconds + test_seconds,
            )
        results["backends"][backend] = row
        progress(f"{backend}: generation measured")
    if args.layer_rows:
        bakes["jwt"] = option_bake(args, workdir, logs, "jwt", auth="jwt")
        bakes["tracing"] = option_bake(args, workdir, logs, "tracing", use_opentelemetry=True)
    return results, bakes


def option_bake(
    args: argparse.Namespace, workdir: Path, logs: Path, name: str, **answers: Any
) -> Bake:
    """Issues 9 and 11: an in-process bake with one more option (auth=jwt, tracing), for
    part 1's rows of that layer. Installed in a virtualenv of its own (its dependencies)
    unless --python serves every bake."""
    project = bake(args.template, "inprocess", workdir / f"bake-{name}", workdir, **answers)
    package = package_of(project)
    if args.python is not None:
        return Bake("inprocess", project, package, args.python, on_path=True)
    venv = workdir / f"venv-{name}"
    progress(f"{name}: fresh virtualenv, pip install -e '.[dev]'")
    timed([sys.executable, "-m", "venv", venv], logs / f"venv-{name}.log")
    python = venv / "bin" / "python"
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check", "-e", ".[dev]"]
    timed(pip, logs / f"install-{name}.log", cwd=project)
    return Bake("inprocess", project, package, python, on_path=False)


# --------------------------------------------------------------------------- services


@dataclass
class Service:
    port: int
    process: subprocess.Popen[bytes]


def start_api(
    processes: Processes,
    bake: Bake,
    factory: str,
    name: str,
    run_dir: Path,
    options: Sequence[str] = (),
    uvicorn_access_log: bool = False,
    live_status: int = 200,
    **env: str,
) -> Service:
    """Serve `apps:<factory>` with uvicorn; `options` are more uvicorn options (--http).
    uvicorn's own access line is off, as the template sets it, unless asked for."""
    port = free_port()
    settings = {"LOG_LEVEL": "INFO", "LOG_FORMAT": "text", "JOBS_BACKEND": bake.backend, **env}
    access = [] if uvicorn_access_log else ["--no-access-log"]
    command = [
        bake.python, "-m", "uvicorn", "--factory", f"apps:{factory}",
        "--host", HOST, "--port", str(port), *access, *options,
    ]  # fmt: skip
    # cwd: a folder of our own, so no developer `.env` changes the settings.
    process = processes.start(name, command, cwd=run_dir, env=bake.env(**settings))
    wait_until(
        lambda: answers(port, LIVE.path, live_status) or process.poll() is not None,
        STARTUP_TIMEOUT,
        f"{name} to answer",
    )
    if process.poll() is not None:
        raise RuntimeError(f"{name} exited; see {processes.logs / (name + '.log')}")
    return Service(port, process)


@dataclass
class Redis:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def cli(self, *args: str) -> str:
        return subprocess.run(
            ["redis-cli", "-h", HOST, "-p", str(self.port), *args],
            capture_output=True, text=True, check=True, timeout=30,
        ).stdout  # fmt: skip


def start_redis(processes: Processes, run_dir: Path, name: str) -> Redis:
    if shutil.which("redis-server") is None:
        raise RuntimeError(
            "redis-server is not on PATH (Debian/Ubuntu: apt-get install redis-server)"
        )
    port = free_port()
    command = [
        "redis-server", "--port", str(port), "--bind", HOST, "--save", "",
        "--appendonly", "no", "--dir", str(run_dir), "--maxmemory-policy", "noeviction",
    ]  # fmt: skip
    process = processes.start(name, command, cwd=run_dir)
    redis = Redis(port, process)

    def pong() -> bool:
        try:
            return redis.cli("ping").strip() == "PONG"
        except subprocess.CalledProcessError:
            return False

    wait_until(pong, STARTUP_TIMEOUT, "redis-server")
    return redis


def start_worker(
    processes: Processes, bake: Bake, redis: Redis, run_dir: Path, name: str
) -> subprocess.Popen[bytes]:
    command = [
        bake.python, "-m", "celery", "-A", f"{bake.package}.worker", "worker",
        "--pool", "prefork", "--concurrency", "2", "--without-gossip", "--without-mingle",
        "--loglevel", "INFO",
    ]  # fmt: skip
    env = bake.env(REDIS_URL=redis.url, LOG_LEVEL="INFO", LOG_FORMAT="text")
    return processes.start(name, command, cwd=run_dir, env=env)


# --------------------------------------------------------------------------- part 1


@dataclass
class Variant:
    name: str
    factory: str
    log_level: str
    description: str
    uvicorn_access_log: bool = False
    results: list[LoadResult] = field(default_factory=list)
    # Issues 9 and 11's rows: the bake that serves it, the variant it is read against.
    bake: str = "inprocess"
    baseline: str = ""
    settings: tuple[tuple[str, str], ...] = ()  # more environment for its server


def middleware_variants() -> list[Variant]:
    no_line = "LOG_LEVEL=WARNING: no access line"
    return [
        Variant("bare", "bare", "INFO", "plain FastAPI, one route, no middleware (for scale)"),
        Variant(
            "bare+uvicorn_log",
            "bare",
            "INFO",
            "what users deploy by default: bare, with uvicorn's own access line",
            uvicorn_access_log=True,
        ),
        Variant("no_middleware", "no_middleware", "INFO", "the generated app, stack emptied"),
        Variant("generated", "generated", "INFO", "the generated app as it ships"),
        Variant("base_http", "base_http", "INFO", "no_middleware + the same work as 4 BaseHTTP"),
        Variant("generated@WARNING", "generated", "WARNING", f"as `generated`, {no_line}"),
        # Metrics (issue 9): what the HTTP metrics cost on top of the rest of the stack.
        Variant("no_metrics@WARNING", "no_metrics", "WARNING", "`generated@WARNING`, no metrics"),
        Variant("base_http@WARNING", "base_http", "WARNING", f"as `base_http`, {no_line}"),
        # Issue 11: the JWT layer checking a token, the rate limit counting every request.
        Variant(
            "jwt_layer",
            "jwt_layer",
            "WARNING",
            "bare inside the JWT layer (auth=jwt bake), a valid RS256 token a request, key cached",
            bake="jwt",
            baseline="bare",
        ),
        Variant(
            "rate_limit@WARNING",
            "rate_limit",
            "WARNING",
            "`generated@WARNING` with RATE_LIMIT (never reached), counted in memory",
            baseline="generated@WARNING",
        ),
        Variant(
            "rate_limit_redis@WARNING",
            "rate_limit",
            "WARNING",
            "the same counted in a private redis-server (Celery bake): a round trip a request",
            bake="celery",
            baseline="generated@WARNING",
        ),
        # Issue 9: error reporting on (sentry_sdk instruments Starlette, process-wide).
        Variant(
            "sentry@WARNING",
            "generated",
            "WARNING",
            "`generated@WARNING` with SENTRY_DSN set (a 200 reports nothing)",
            baseline="generated@WARNING",
            settings=(("SENTRY_DSN", SENTRY_DSN_NOWHERE),),
        ),
        # Issue 9: tracing (a use_opentelemetry bake). Off: its layer taken out, against the
        # untraced bake; on, every span sampled: without an endpoint, and exporting.
        Variant(
            "no_tracing@WARNING",
            "no_tracing",
            "WARNING",
            "a use_opentelemetry bake at WARNING, its tracing layer taken out",
            bake="tracing",
            baseline="generated@WARNING",
        ),
        Variant(
            "tracing@WARNING",
            "generated",
            "WARNING",
            "the use_opentelemetry bake as it ships: every span sampled, no endpoint",
            bake="tracing",
            baseline="no_tracing@WARNING",
        ),
        Variant(
            "tracing_exporting@WARNING",
            "generated",
            "WARNING",
            "the same, exporting every span over OTLP/HTTP to a sink in this process",
            bake="tracing",
            baseline="no_tracing@WARNING",
            settings=(("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", TRACE_SINK),),
        ),
    ]


def ratio_stats(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def middleware_cost(
    args: argparse.Namespace, bakes: dict[str, Bake], processes: Processes, run_dir: Path
) -> dict[str, Any]:
    """Part 1: the same app with the stack, without it, and with BaseHTTPMiddleware."""
    variants = middleware_variants()
    if not args.layer_rows:
        variants = [variant for variant in variants if not variant.baseline]
    redis = start_redis(processes, run_dir, "mw-redis")  # the Redis-counted rate limit's
    sink = trace_sink()
    services = {}
    requests = {}
    for variant in variants:
        name = f"mw-{variant.name.replace('+', '-').replace('@', '-')}"
        env = {"LOG_LEVEL": variant.log_level, **dict(variant.settings)}
        if env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") == TRACE_SINK:
            env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = sink.url
        if variant.factory == "jwt_layer":
            env["BENCH_TOKEN_FILE"] = str(run_dir / f"{name}.token")
        if variant.factory == "rate_limit" and variant.bake == "celery":
            env["BENCH_RATE_LIMIT_REDIS_URL"] = redis.url
        services[variant.name] = start_api(
            processes,
            bakes[variant.bake],
            variant.factory,
            name,
            run_dir,
            uvicorn_access_log=variant.uvicorn_access_log,
            # Up once the JWT layer refuses a request without a token.
            live_status=401 if variant.factory == "jwt_layer" else 200,
            **env,
        )
        requests[variant.name] = LIVE
        if "BENCH_TOKEN_FILE" in env:
            token = Path(env["BENCH_TOKEN_FILE"]).read_text()
            requests[variant.name] = Request("GET", LIVE.path, headers=(("Authorization", token),))
    for variant in variants:  # warm-up: imports, caches, the first route match
        saturate(services[variant.name].port, requests[variant.name], 1, args.connections)
    for number in range(args.rounds):
        # Alternate the order so a burst from a neighbour lands on all variants alike.
        for variant in variants if number % 2 == 0 else reversed(variants):
            port = services[variant.name].port
            result = saturate(port, requests[variant.name], args.seconds, args.connections)
            if result.unexpected or result.errors:
                raise RuntimeError(
                    f"{variant.name}: {result.unexpected} non-2xx, {result.errors} errors"
                )
            variant.results.append(result)
        progress(f"middleware: round {number + 1}/{args.rounds}")
    for service in services.values():
        processes.stop(service.process)
    sink.server.shutdown()
    exported = sink.exports
    in_process = layer_cpu(args, bakes, redis, run_dir) if args.layer_rows else None
    processes.stop(redis.process)

    by_name = {variant.name: variant for variant in variants}

    def per_round(name: str, baseline: str) -> list[float]:
        return [
            mine.per_second / base.per_second
            for mine, base in zip(by_name[name].results, by_name[baseline].results, strict=True)
        ]

    rows = []
    for variant in variants:
        rows.append(
            {
                "variant": variant.name,
                "log_level": variant.log_level,
                "description": variant.description,
                "requests_per_second": ratio_stats([r.per_second for r in variant.results]),
                "p50_ms": statistics.median(r.p50_ms for r in variant.results),
                "p99_ms": statistics.median(r.p99_ms for r in variant.results),
                "vs_no_middleware": ratio_stats(per_round(variant.name, "no_middleware")),
            }
        )
    pairs = [
        ("generated", "bare+uvicorn_log", ""),
        ("generated", "no_middleware", ""),
        ("generated", "base_http", ""),
        ("generated@WARNING", "no_middleware", "@WARNING"),
        ("generated@WARNING", "base_http@WARNING", "@WARNING"),
        ("generated@WARNING", "no_metrics@WARNING", "@WARNING"),
    ]
    comparisons = {
        f"generated_vs_{baseline.partition('@')[0]}{suffix}": ratio_stats(per_round(mine, baseline))
        for mine, baseline, suffix in pairs
    }
    layers = []
    for variant in variants:
        if not variant.baseline:
            continue
        mine, base = by_name[variant.name].results, by_name[variant.baseline].results
        pairs_of_rounds = zip(mine, base, strict=True)
        extra_us = [1e6 / m.per_second - 1e6 / b.per_second for m, b in pairs_of_rounds]
        layers.append(
            {
                "variant": variant.name,
                "baseline": variant.baseline,
                "vs_baseline": ratio_stats(per_round(variant.name, variant.baseline)),
                "wrk_extra_us": statistics.median(extra_us),
            }
        )
    return {
        "load": f"{'wrk' if wrk_available() else 'python client'}, 1 thread, "
        f"{args.connections} connections, {args.seconds:g} s a turn, {args.rounds} rounds",
        "rows": rows,
        "comparisons": comparisons,
        "layers": layers,
        "in_process": in_process,
        "trace_exports_received": exported,
    }


TRACE_SINK = "the trace sink"  # replaced by its URL once it runs


def trace_sink() -> Any:
    """`middleware_cost.TraceSink`: an OTLP/HTTP endpoint in a thread of this process
    that accepts and counts every export, where `tracing_exporting@WARNING` sends spans."""
    import middleware_cost  # imports this module: not at the top

    return middleware_cost.TraceSink()


# Issue 11: the same layers in-process (bench/middleware_cost.py), CPU per request, which
# the wrk figures above are too noisy to give within a few microseconds. Each row: the
# bake it runs on, its variant there, and the variant it is read against in the same run.
IN_PROCESS_LAYERS = (
    ("jwt", "jwt_layer", "bare", "JWT layer, a valid RS256 token, key cached"),
    ("jwt", "generated_stack", "generated_stack_no_metrics", "HTTP metrics on (vs off)"),
    ("jwt", "generated_stack_cors", "generated_stack", "CORS, a cross-origin GET"),
    ("jwt", "generated_stack_rate_limit", "generated_stack", "rate limit, memory store"),
    ("celery", "generated_stack_rate_limit_redis", "generated_stack", "rate limit, Redis store"),
    ("tracing", "generated_stack", "generated_stack_no_tracing", "tracing on, no endpoint"),
    (
        "tracing",
        "generated_stack_tracing_exporting",
        "generated_stack_no_tracing",
        "tracing on, exporting to a local sink",
    ),
)


def layer_cpu(
    args: argparse.Namespace, bakes: dict[str, Bake], redis: Redis, run_dir: Path
) -> dict[str, Any]:
    """CPU us per request of the layers in IN_PROCESS_LAYERS, and of the RS256 check
    alone: `middleware_cost.py --only ... --json` on each bake, in its interpreter."""
    runs: dict[str, dict[str, Any]] = {}
    rounds = max(2, args.rounds)
    round_seconds = 0.25 if args.quick else 0.4  # --quick: under 15 s a bake
    for bake_name in ("jwt", "celery", "tracing"):
        wanted = {
            name for where, *names, _ in IN_PROCESS_LAYERS if where == bake_name for name in names
        }
        bake = bakes[bake_name]
        command = [
            bake.python, BENCH_DIR / "middleware_cost.py", "--project", bake.project,
            "--rounds", str(rounds), "--round-seconds", str(round_seconds),
            "--only", ",".join(sorted(wanted)), "--json",
        ]  # fmt: skip
        if bake_name == "celery":
            command += ["--redis-url", redis.url]
        completed = subprocess.run(
            [str(part) for part in command],
            cwd=run_dir, env=bake.env(), capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        if completed.returncode != 0:
            raise RuntimeError(f"middleware_cost.py failed:\n{completed.stderr[-3000:]}")
        runs[bake_name] = json.loads(completed.stdout.strip().splitlines()[-1])
    rows = []
    for where, name, baseline, what in IN_PROCESS_LAYERS:
        cpu_us = runs[where]["cpu_us"]
        rows.append(
            {
                "layer": what,
                "variant": name,
                "baseline": baseline,
                "cpu_us": cpu_us[name],
                "baseline_cpu_us": cpu_us[baseline],
                "extra_us": cpu_us[name] - cpu_us[baseline],
            }
        )
    return {
        "rounds": rounds,
        "rows": rows,
        "rsa_verify_us": runs["jwt"]["rsa_verify_us"],
    }


# --------------------------------------------------------------------------- part 2


def report_request(rows: int, simulate_seconds: float) -> Request:
    body = json.dumps({"rows": rows, "simulate_seconds": simulate_seconds}).encode()
    return Request("POST", "/reports", body)


def latency_summary(samples: Sequence[Sample]) -> dict[str, float]:
    latencies = [s.latency_ms for s in samples]
    return {
        "p50_ms": percentile(latencies, 0.5),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": max(latencies),
        "count": len(latencies),
    }


def check_jobs_ran(port: int, job_ids: Sequence[str], rows: int, timeout: float) -> dict[str, int]:
    """Follow the first job to its end and count where all of them are.

    Proves that a 202 had a real job behind it, which ran and gave the right result; the
    later jobs may still be waiting for a free worker or thread, and are counted as such.
    """

    def state(job_id: str) -> dict[str, Any]:
        status, body = http_get(port, f"/jobs/{job_id}")
        if status != 200:
            raise RuntimeError(f"GET /jobs/{job_id} answered {status}: {body!r}")
        parsed: dict[str, Any] = json.loads(body)
        return parsed

    first = job_ids[0]
    wait_until(lambda: state(first)["status"] in ("succeeded", "failed"), timeout, f"job {first}")
    final = state(first)
    if final["status"] != "succeeded" or final["result"]["rows"] != rows:
        raise RuntimeError(f"job {first} did not succeed: {final}")
    counts: dict[str, int] = {}
    for job_id in job_ids:
        status = state(job_id)["status"]
        counts[status] = counts.get(status, 0) + 1
    return counts


def jobs_under_load(
    args: argparse.Namespace, bakes: dict[str, Bake], processes: Processes, run_dir: Path
) -> dict[str, Any]:
    """Part 2: POST /reports and GET /health/live, interleaved at a fixed rate, while
    the jobs those posts create run."""
    per_endpoint = max(1, round(args.job_rate * args.job_seconds))
    rows_out = []
    for backend in BACKENDS:
        bake = bakes[backend]
        for simulate in SIMULATE_SECONDS:
            tag = f"jobs-{backend}-{simulate:g}s"
            env: dict[str, str] = {}
            started: list[subprocess.Popen[bytes]] = []
            if backend == "celery":
                redis = start_redis(processes, run_dir, f"{tag}-redis")
                started.append(redis.process)
                started.append(start_worker(processes, bake, redis, run_dir, f"{tag}-worker"))
                env["REDIS_URL"] = redis.url
            api = start_api(processes, bake, "generated", f"{tag}-api", run_dir, **env)
            started.append(api.process)
            ready = partial(answers, api.port, "/health/ready")
            wait_until(ready, STARTUP_TIMEOUT, f"{tag} ready")

            post = report_request(args.job_rows, simulate)
            # Warm-up, not counted: the first requests open connections to Redis and
            # start threads, which a server that has run for a while did long ago.
            warm_up = [
                r for _ in range(round(args.job_rate)) for r in (report_request(1, 0.0), LIVE)
            ]
            asyncio.run(open_loop(api.port, warm_up, rate=2 * args.job_rate))
            mixed = [r for _ in range(per_endpoint) for r in (post, LIVE)]
            samples = asyncio.run(open_loop(api.port, mixed, rate=2 * args.job_rate))
            posts = [s for s in samples if s.request is post]
            lives = [s for s in samples if s.request is LIVE]
            failed = [s for s in samples if s.error or s.status not in (200, 202)]
            if failed:
                raise RuntimeError(f"{tag}: {len(failed)} requests failed, e.g. {failed[0]}")
            job_ids = [json.loads(s.body)["id"] for s in posts]
            counts = check_jobs_ran(api.port, job_ids, args.job_rows, timeout=simulate + 30)
            for process in reversed(started):
                processes.stop(process)

            post_stats, live_stats = latency_summary(posts), latency_summary(lives)
            rows_out.append(
                {
                    "backend": backend,
                    "simulate_seconds": simulate,
                    "post_reports": post_stats,
                    "get_live": live_stats,
                    "p99_ratio": post_stats["p99_ms"] / live_stats["p99_ms"],
                    "jobs_after_run": counts,
                }
            )
            progress(f"jobs: {tag} done")
    return {
        "load": f"open loop, {args.job_rate:g} POST /reports + {args.job_rate:g} GET "
        f"/health/live a second, interleaved, for {args.job_seconds:g} s; rows={args.job_rows}",
        "rows": rows_out,
    }


# --------------------------------------------------------------------------- part 3


def redis_calls(redis: Redis) -> int:
    stats = redis.cli("info", "commandstats")
    return sum(int(n) for n in re.findall(r"^cmdstat_\w+:calls=(\d+)", stats, re.M))


def redis_floor(bake: Bake, redis: Redis, seconds: float) -> dict[str, Any]:
    """One client, one round trip after another: what Redis itself allows."""
    floor: dict[str, Any] = {}
    script = (
        "import redis, sys, time\n"
        "client = redis.Redis.from_url(sys.argv[1])\n"
        "client.ping()\n"
        "count, deadline = 0, time.perf_counter() + float(sys.argv[2])\n"
        "started = time.perf_counter()\n"
        "while time.perf_counter() < deadline:\n"
        "    client.ping()\n"
        "    count += 1\n"
        "print(count / (time.perf_counter() - started))\n"
    )
    output = subprocess.run(
        [str(bake.python), "-c", script, redis.url, str(seconds)],
        capture_output=True, text=True, check=True, env=bake.env(), timeout=seconds + 30,
    ).stdout  # fmt: skip
    floor["redis_py_ping_loop_per_second"] = float(output)
    if shutil.which("redis-benchmark"):
        requests = max(10_000, int(floor["redis_py_ping_loop_per_second"] * seconds))
        output = subprocess.run(
            ["redis-benchmark", "-h", HOST, "-p", str(redis.port), "-c", "1", "-n", str(requests),
             "-t", "ping", "-q"],
            capture_output=True, text=True, check=True, timeout=seconds * 10 + 30,
        ).stdout  # fmt: skip
        rates = re.findall(r"PING_MBULK: ([\d.]+) requests per second", output)
        if rates:
            floor["redis_benchmark_ping_c1_per_second"] = float(rates[-1])
    return floor


def publish_cost(args: argparse.Namespace, bake: Bake, redis: Redis) -> dict[str, Any]:
    """The enqueue alone, in one process, next to redis-py's two round trips
    (bench/publish_cost.py)."""
    command = [
        bake.python, str(BENCH_DIR / "publish_cost.py"), redis.url,
        "--seconds", str(min(args.seconds, 2)), "--rounds", str(max(2, min(args.rounds, 5))),
    ]  # fmt: skip
    output = subprocess.run(
        command, capture_output=True, text=True, check=True, env=bake.env(), timeout=120
    ).stdout
    loops: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return loops


def enqueue_throughput(
    args: argparse.Namespace, bake: Bake, processes: Processes, run_dir: Path
) -> dict[str, Any]:
    """Part 3: jobs accepted per second by one API process on the Celery backend."""
    redis = start_redis(processes, run_dir, "enqueue-redis")
    # No worker: it would compete for the same two cores. The jobs wait in the queue,
    # which is counted at the end to prove every 202 left a real message behind.
    # MAX_QUEUED_JOBS (issue 10) far above what the rounds queue: its check runs on every
    # job, and none is refused (templates before it ignore the setting).
    api = start_api(
        processes, bake, "generated", "enqueue-api", run_dir, REDIS_URL=redis.url,
        MAX_QUEUED_JOBS="10000000",
    )  # fmt: skip
    post = report_request(1, 0.0)
    saturate(api.port, post, 1, args.connections)  # warm-up
    saturate(api.port, LIVE, 1, args.connections)
    accepted: list[LoadResult] = []
    live: list[LoadResult] = []
    calls_per_job: list[float] = []
    jobs_vs_live: list[float] = []
    for number in range(args.rounds):
        before = redis_calls(redis)
        result = saturate(api.port, post, args.seconds, args.connections, expected_status=202)
        calls = redis_calls(redis) - before - 1  # the INFO call itself
        if result.unexpected or result.errors:
            raise RuntimeError(f"enqueue: {result.unexpected} non-2xx, {result.errors} errors")
        accepted.append(result)
        calls_per_job.append(calls / result.requests)
        live.append(saturate(api.port, LIVE, args.seconds, args.connections))
        jobs_vs_live.append(result.per_second / live[-1].per_second)
        progress(f"enqueue: round {number + 1}/{args.rounds}")
    queued = int(redis.cli("llen", "celery"))
    total_accepted = sum(r.requests for r in accepted)
    processes.stop(api.process)
    floor = redis_floor(bake, redis, seconds=min(args.seconds, 3))
    publish = publish_cost(args, bake, redis)
    processes.stop(redis.process)
    jobs_per_second = ratio_stats([r.per_second for r in accepted])
    return {
        "load": f"{'wrk' if wrk_available() else 'python client'}, {args.connections} connections, "
        f"{args.seconds:g} s a turn, {args.rounds} rounds; no worker running",
        "jobs_accepted_per_second": jobs_per_second,
        "post_p50_ms": statistics.median(r.p50_ms for r in accepted),
        "post_p99_ms": statistics.median(r.p99_ms for r in accepted),
        "live_requests_per_second": ratio_stats([r.per_second for r in live]),
        "jobs_vs_live": ratio_stats(jobs_vs_live),
        # The Redis server's CPU per command (issue 10: the admission script runs there).
        "redis_usec_per_call": publish.pop("redis_usec_per_call", {}),
        "publish": publish,
        "redis_commands_per_job": statistics.median(calls_per_job),
        "messages_in_queue": queued,
        "accepted_in_measured_rounds": total_accepted,
        **floor,
    }


# --------------------------------------------------------------------------- report


def installed(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def project_versions(bake: Bake) -> str:
    names = [
        "fastapi",
        "starlette",
        "uvicorn",
        "pydantic",
        "celery",
        "kombu",
        "redis",
        "uvloop",
        "httptools",
    ]
    script = (
        "import importlib.metadata as m, sys\n"
        "for n in sys.argv[1:]:\n"
        "    try: print(n, m.version(n))\n"
        "    except m.PackageNotFoundError: pass\n"
    )
    output = subprocess.run(
        [str(bake.python), "-c", script, *names],
        capture_output=True,
        text=True,
        check=True,
        env=bake.env(),
    ).stdout
    return ", ".join(output.split("\n")[:-1])


def machine(bakes: dict[str, Bake]) -> dict[str, Any]:
    tools = {}
    for tool, flag in (("wrk", "-v"), ("redis-server", "--version")):
        if shutil.which(tool):
            text = subprocess.run([tool, flag], capture_output=True, text=True, check=False)
            tools[tool] = (text.stdout + text.stderr).splitlines()[0].strip()
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": f"{platform.system()} {platform.machine()}",
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "cookiecutter": installed("cookiecutter"),
        "generated_project_packages": project_versions(bakes["celery"]),
        "tools": tools,
    }


def spread(stats: dict[str, float], thousands: bool = False) -> str:
    def fmt(x: float) -> str:
        return f"{x:,.0f}" if thousands else f"{x:.2f}"

    return f"{fmt(stats['median'])} ({fmt(stats['min'])}-{fmt(stats['max'])})"


def verdict(value: float, target: float, higher_is_better: bool = True) -> str:
    met = value >= target if higher_is_better else value <= target
    return "met" if met else "**missed**"


def cells(*values: object) -> str:
    return "| " + " | ".join(str(v) for v in values) + " |"


def middleware_section(mw: dict[str, Any]) -> list[str]:
    lines = [
        "## 1. Middleware cost: `GET /health/live`",
        "",
        f"Load: {mw['load']}. One uvicorn process per variant, LOG_FORMAT=text, logs to a file.",
        "Medians over rounds (min-max); ratios are taken round by round.",
        "",
        cells("variant", "LOG_LEVEL", "req/s", "vs no_middleware", "p50 ms", "p99 ms"),
        "|---|---|--:|--:|--:|--:|",
    ]
    for row in mw["rows"]:
        rate = spread(row["requests_per_second"], thousands=True)
        ratio = spread(row["vs_no_middleware"])
        p50, p99 = f"{row['p50_ms']:.2f}", f"{row['p99_ms']:.2f}"
        lines.append(cells(f"`{row['variant']}`", row["log_level"], rate, ratio, p50, p99))
    targets = [
        ("bare+uvicorn_log", "both write an access line", "", TARGET_STACK_VS_DEFAULT_DEPLOY),
        ("base_http", "same work, INFO", "", TARGET_STACK_VS_BASE_HTTP),
        ("base_http", "same work, WARNING", "@WARNING", TARGET_STACK_VS_BASE_HTTP),
        ("no_metrics", "metrics on vs off, WARNING", "@WARNING", TARGET_METRICS_VS_NO_METRICS),
    ]
    lines += ["", cells("target", "measured", ""), "|---|--:|---|"]
    for baseline, condition, suffix, target in targets:
        measured = mw["comparisons"][f"generated_vs_{baseline}{suffix}"]
        lines.append(
            cells(
                f"generated >= {target:g} x {baseline} ({condition})",
                spread(measured),
                verdict(measured["median"], target),
            )
        )
    return [*lines, "", *(layers_section(mw) if mw["in_process"] else [])]


def layers_section(mw: dict[str, Any]) -> list[str]:
    """Issues 9 and 11: what each optional layer adds, over wrk and in-process."""
    cpu = mw["in_process"]
    rsa_us = cpu["rsa_verify_us"]
    lines = [
        "### Auth, rate limits, error reporting, tracing (issues 9, 11): each layer's cost",
        "",
        "Over uvicorn + wrk, from the rows above: the ratio to the row it is read against, "
        "round by round, and the difference in wall time a request (1e6 / req/s).",
        "",
        cells("variant", "against", "req/s ratio", "extra us a request (wrk)"),
        "|---|---|--:|--:|",
    ]
    for row in mw["layers"]:
        lines.append(
            cells(
                f"`{row['variant']}`",
                f"`{row['baseline']}`",
                spread(row["vs_baseline"]),
                f"{row['wrk_extra_us']:+.1f}",
            )
        )
    lines += [
        "",
        f"`tracing_exporting@WARNING` sent {mw['trace_exports_received']:,} OTLP export "
        "requests to the sink.",
        "",
        f"In-process (`bench/middleware_cost.py --only ... --json`, best of {cpu['rounds']} "
        "rounds): CPU time a request, no sockets; each row against a variant of the same run "
        "(the exporter's own thread is in the CPU time: one process).",
        "",
        cells("layer", "variant", "CPU us", "against", "CPU us", "extra us", "ratio"),
        "|---|---|--:|---|--:|--:|--:|",
    ]
    for row in cpu["rows"]:
        lines.append(
            cells(
                row["layer"],
                f"`{row['variant']}`",
                f"{row['cpu_us']:.1f}",
                f"`{row['baseline']}`",
                f"{row['baseline_cpu_us']:.1f}",
                f"{row['extra_us']:+.1f}",
                f"{row['baseline_cpu_us'] / row['cpu_us']:.2f}",
            )
        )
    (jwt,) = (row for row in cpu["rows"] if row["variant"] == "jwt_layer")
    target = TARGET_JWT_VS_RSA_VERIFY
    lines += [
        "",
        cells("target", "measured", ""),
        "|---|--:|---|",
        cells(
            f"JWT layer's extra CPU us <= {target:g} x the RS256 check alone ({rsa_us:.1f} us)",
            f"{jwt['extra_us']:.1f} us = {jwt['extra_us'] / rsa_us:.2f} x",
            verdict(jwt["extra_us"] / rsa_us, target, higher_is_better=False),
        ),
    ]
    return [*lines, ""]


def jobs_section(jobs: dict[str, Any]) -> list[str]:
    lines = [
        "## 2. Response time while heavy jobs run",
        "",
        f"Load: {jobs['load']}. Latency from the moment each request was due.",
        "",
        cells(
            "backend",
            "simulate_seconds",
            "POST /reports p50 / p99 ms",
            "GET /health/live p50 / p99 ms",
            f"p99 ratio (target <= {TARGET_POST_P99_VS_LIVE_P99:g})",
            "jobs right after the run",
        ),
        "|---|--:|--:|--:|--:|---|",
    ]
    for row in jobs["rows"]:
        post, live, ratio = row["post_reports"], row["get_live"], row["p99_ratio"]
        met = verdict(ratio, TARGET_POST_P99_VS_LIVE_P99, higher_is_better=False)
        counts = ", ".join(f"{n} {s}" for s, n in sorted(row["jobs_after_run"].items()))
        lines.append(
            cells(
                row["backend"],
                f"{row['simulate_seconds']:g}",
                f"{post['p50_ms']:.2f} / {post['p99_ms']:.2f}",
                f"{live['p50_ms']:.2f} / {live['p99_ms']:.2f}",
                f"{ratio:.2f} ({met})",
                counts,
            )
        )
    return [*lines, ""]


def enqueue_section(e: dict[str, Any]) -> list[str]:
    rows = [
        ("jobs accepted (202) per second", spread(e["jobs_accepted_per_second"], True)),
        (
            "POST /reports p50 / p99 under that load, ms",
            f"{e['post_p50_ms']:.2f} / {e['post_p99_ms']:.2f}",
        ),
        ("same process, GET /health/live per second", spread(e["live_requests_per_second"], True)),
        ("Redis commands per accepted job", f"{e['redis_commands_per_job']:.1f}"),
        (
            "messages in the queue at the end (every 202, warm-up included)",
            f"{e['messages_in_queue']:,}",
        ),
    ]
    floor = e.get("redis_py_ping_loop_per_second")
    if floor:
        rows += [
            ("floor: redis-py PING round trips per second, one connection", f"{floor:,.0f}"),
            (
                "floor / commands per job: jobs per second if round trips were all a job cost",
                f"{floor / e['redis_commands_per_job']:,.0f}",
            ),
        ]
    for command, usec in e.get("redis_usec_per_call", {}).items():
        rows.append((f"Redis server CPU per `{command.upper()}` call, us", f"{usec:.2f}"))
    if "redis_benchmark_ping_c1_per_second" in e:
        rate = e["redis_benchmark_ping_c1_per_second"]
        rows.append(("redis-benchmark PING, one client, per second", f"{rate:,.0f}"))
    publish = e.get("publish", {})
    loop_rows = [
        cells(
            f"`{name}`",
            f"{loop['per_second']:,.0f}",
            f"{loop['cpu_us']:,.0f}",
            f"{loop['redis_cpu_us']:,.1f}" if "redis_cpu_us" in loop else "",
            f"{loop['per_second'] / publish['raw']['per_second']:.2f}",
        )
        for name, loop in publish.items()
    ]
    targets = [
        cells(
            f"jobs accepted per second >= {TARGET_JOBS_VS_LIVE:g} x GET /health/live, same process",
            spread(e["jobs_vs_live"]),
            verdict(e["jobs_vs_live"]["median"], TARGET_JOBS_VS_LIVE),
        )
    ]
    if publish:
        for name in ("submit", "submit x16"):
            ratio = publish[name]["per_second"] / publish["raw"]["per_second"]
            targets.append(
                cells(
                    f"`{name}` per second >= {TARGET_ENQUEUE_VS_RAW:g} x `raw`",
                    f"{ratio:.2f}",
                    verdict(ratio, TARGET_ENQUEUE_VS_RAW),
                )
            )
    return [
        "## 3. Enqueue throughput, Celery backend: `POST /reports` on one API process",
        "",
        f"Load: {e['load']}.",
        "",
        cells("measure", "value"),
        "|---|--:|",
        *(cells(name, value) for name, value in rows),
        "",
        "The enqueue alone, in one process (`bench/publish_cost.py`, best of its rounds): "
        "`raw` is redis-py making a job's two round trips (SET of the state, LPUSH of a "
        "message of the same size); `submit` the backend's own enqueue as `POST /reports` "
        "awaits it, one job after another; `submit x16` with 16 in flight; `, key` with "
        "an `Idempotency-Key` of its own on each job; `LLEN, then submit x16` the queue-length "
        "check as a round trip of its own (the template checks it inside the admission "
        "script, in the batch's pipeline).",
        "",
        cells("loop", "jobs per second", "CPU us per job", "Redis CPU us per job", "vs raw"),
        "|---|--:|--:|--:|--:|",
        *loop_rows,
        "",
        cells("target", "measured", ""),
        "|---|--:|---|",
        *targets,
        "",
    ]


def generation_section(g: dict[str, Any]) -> list[str]:
    lines = [
        "## 4. Cost of generation",
        "",
        f"Bake: cookiecutter with its hooks, {g['bake_repeats']} times a backend, median "
        "(min-max). Then once: bake, fresh virtualenv, `pip install -e '.[dev]'`, and the "
        "generated test suite with REQUIRE_REDIS=1.",
        "",
        cells("job_backend", "bake s", "venv s", "install s", "tests s", "tests", "total s"),
        "|---|--:|--:|--:|--:|---|--:|",
    ]
    for backend, row in g["backends"].items():
        bake_time = spread(ratio_stats(row["bake_seconds"]))
        if "total_seconds" not in row:
            reason = row.get("install") or row.get("tests")
            lines.append(cells(backend, bake_time, "-", "-", "-", reason, "-"))
            continue
        lines.append(
            cells(
                backend,
                bake_time,
                f"{row['venv_seconds']:.1f}",
                f"{row['install_seconds']:.1f}",
                f"{row['test_seconds']:.1f}",
                ", ".join(f"{n} {kind}" for kind, n in row["tests"].items()),
                f"{row['total_seconds']:.1f}",
            )
        )
    return [*lines, ""]


def markdown(results: dict[str, Any], command: str) -> str:
    m = results["machine"]
    tools = ", ".join(f"{k}: {v}" for k, v in m["tools"].items()) or "none"
    load = ", ".join(map(str, m["load_average_at_start"]))
    lines = [
        "# Benchmark results",
        "",
        f"- command: `{command}`",
        f"- {m['date']}; {m['python']} on {m['platform']}, {m['cpus']} CPUs; "
        f"load average at start: {load}",
        f"- generated project: {m['generated_project_packages']}",
        f"- tools: {tools}; cookiecutter {m['cookiecutter']}",
        "",
    ]
    sections = {
        "middleware": middleware_section,
        "jobs": jobs_section,
        "enqueue": enqueue_section,
        "generation": generation_section,
        "limits": limits_section,
        "memory": memory_section,
    }
    for part, section in sections.items():
        if part in results:
            lines += section(results[part])
    return "\n".join(lines)


# --------------------------------------------------------------------------- part 5


# What a browser sends through a proxy: 14 fields, about 1.1 KB, the parser's real work.
BROWSER_HEADERS = (
    ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"),
    ("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    ("Accept-Language", "en-GB,en;q=0.7,fr;q=0.3"),
    ("Accept-Encoding", "gzip, deflate, br, zstd"),
    ("Referer", "https://app.example.com/reports/2026/11?view=table&page=3"),
    ("Cookie", "session=" + "s" * 180 + "; theme=dark; consent=" + "c" * 120),
    ("Authorization", "Bearer " + "t" * 220),
    ("X-Forwarded-For", "203.0.113.7, 198.51.100.23"),
    ("X-Forwarded-Proto", "https"),
    ("X-Request-ID", "0f8e6c2a9b7d4e1f8a3c5b7d9e1f2a4c"),
    ("Sec-Fetch-Dest", "empty"),
    ("Sec-Fetch-Mode", "cors"),
    ("Sec-Fetch-Site", "same-origin"),
    ("Cache-Control", "no-cache"),
)
LIMITS_REQUESTS = {
    "bare": LIVE,
    "browser": Request("GET", LIVE.path, headers=BROWSER_HEADERS),
}
FLOOD_CONNECTIONS = 10
FLOOD_BYTES = 32 * 1024 * 1024


def parser_variants(package: str) -> list[tuple[str, list[str], str]]:
    return [
        ("httptools", ["--http", "httptools"], "uvicorn's default parser: no header limit"),
        (
            "bounded",
            ["--http", f"{package}.http_protocol:BoundedHttpToolsProtocol"],
            "the Dockerfile's: httptools, 431 past MAX_REQUEST_HEADER_BYTES/_HEADERS",
        ),
        (
            "h11",
            ["--http", "h11", "--h11-max-incomplete-event-size", "32768"],
            "h11 with its size bound (400, fields not counted)",
        ),
    ]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def unfinished_header_flood(port: int, pid: int) -> tuple[list[int], float]:
    """FLOOD_CONNECTIONS connections at once, each sending FLOOD_BYTES of one header that
    never ends. Returns how much each got to send before the server cut it off, and the
    server's RSS in MB while they are all still open."""

    async def one(writers: list[asyncio.StreamWriter]) -> int:
        _, writer = await asyncio.open_connection(HOST, port)
        writers.append(writer)
        sent = 0
        try:
            writer.write(b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Flood: ")
            chunk = b"a" * 65_536
            while sent < FLOOD_BYTES:
                writer.write(chunk)
                await asyncio.wait_for(writer.drain(), 10)
                sent += len(chunk)
        except (OSError, TimeoutError):
            pass  # cut off by the server
        return sent

    async def flood() -> tuple[list[int], float]:
        writers: list[asyncio.StreamWriter] = []
        sent = await asyncio.gather(*(one(writers) for _ in range(FLOOD_CONNECTIONS)))
        await asyncio.sleep(0.5)  # let the server read what is in flight
        held = rss_mb(pid)  # with every connection still open, as an attacker keeps them
        for writer in writers:
            writer.close()
        return list(sent), held

    return asyncio.run(flood())


def header_limits_cost(
    args: argparse.Namespace, bake: Bake, processes: Processes, run_dir: Path
) -> dict[str, Any]:
    """Part 5: the generated app under each HTTP parser, with and without a header bound:
    throughput side by side, then memory under a flood of unfinished large headers."""
    variants = parser_variants(bake.package)
    services = {
        name: start_api(
            processes, bake, "generated", f"limits-{name}", run_dir, options, LOG_LEVEL="WARNING"
        )
        for name, options, _ in variants
    }
    results: dict[tuple[str, str], list[LoadResult]] = {
        (name, kind): [] for name, _, _ in variants for kind in LIMITS_REQUESTS
    }
    for name, _, _ in variants:  # warm-up
        saturate(services[name].port, LIVE, 1, args.connections)
    for number in range(args.rounds):
        order = variants if number % 2 == 0 else list(reversed(variants))
        for kind, request in LIMITS_REQUESTS.items():
            for name, _, _ in order:
                result = saturate(services[name].port, request, args.seconds, args.connections)
                if result.unexpected or result.errors:
                    raise RuntimeError(
                        f"{name}/{kind}: {result.unexpected} non-2xx, {result.errors} errors"
                    )
                results[(name, kind)].append(result)
        progress(f"limits: round {number + 1}/{args.rounds}")
    rows = []
    for name, _, description in variants:
        row: dict[str, Any] = {"variant": name, "description": description}
        for kind in LIMITS_REQUESTS:
            mine, base = results[(name, kind)], results[("httptools", kind)]
            row[kind] = {
                "requests_per_second": ratio_stats([r.per_second for r in mine]),
                "vs_httptools": ratio_stats(
                    [m.per_second / b.per_second for m, b in zip(mine, base, strict=True)]
                ),
            }
        service = services[name]
        before = rss_mb(service.process.pid)
        sent, held = unfinished_header_flood(service.port, service.process.pid)
        row["flood"] = {
            "rss_before_mb": before,
            "rss_during_mb": held,
            "max_sent_mb": max(sent) / 2**20,
            "still_serves": answers(service.port, LIVE.path),
        }
        rows.append(row)
    for service in services.values():
        processes.stop(service.process)
    cpu = parser_cpu(args, bake, run_dir)
    return {
        "load": f"{'wrk' if wrk_available() else 'python client'}, 1 thread, "
        f"{args.connections} connections, {args.seconds:g} s a turn, {args.rounds} rounds; "
        "the generated app at LOG_LEVEL=WARNING",
        "flood": f"{FLOOD_CONNECTIONS} connections at once, each sending up to "
        f"{FLOOD_BYTES >> 20} MB of one unfinished header",
        "rows": rows,
        "parser_cpu": cpu,
    }


def parser_cpu(args: argparse.Namespace, bake: Bake, run_dir: Path) -> dict[str, Any]:
    """CPU a request costs in each protocol, driven in-process (`parser_cost.py`), with the
    project's interpreter: steadier than any load over sockets on a shared machine."""
    command = [
        bake.python, BENCH_DIR / "parser_cost.py", bake.package,
        json.dumps(BROWSER_HEADERS), str(max(3, args.rounds)),
    ]  # fmt: skip
    completed = subprocess.run(
        [str(part) for part in command],
        cwd=run_dir,
        env=bake.env(LOG_LEVEL="WARNING", JOBS_BACKEND=bake.backend),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"parser_cost.py failed:\n{completed.stderr}")
    result: dict[str, Any] = json.loads(completed.stdout)
    return result


def limits_section(limits: dict[str, Any]) -> list[str]:
    cpu = limits["parser_cpu"]
    lines = [
        "## 5. Request-header limits: the HTTP parser's cost",
        "",
        "CPU per request, driven in-process (`bench/parser_cost.py`: best of "
        f"{cpu['rounds']} rounds of {cpu['requests_a_turn']:,} requests on one kept-alive",
        "connection), in front of an app that answers at once (`tiny`: the protocol's own",
        "cost) and of the generated app at LOG_LEVEL=WARNING (`generated`: a request in all).",
        "",
        cells("app", "variant", "bare us", "vs httptools", "browser us", "vs httptools"),
        "|---|---|--:|--:|--:|--:|",
    ]
    for row in cpu["rows"]:
        lines.append(
            cells(
                row["app"],
                f"`{row['variant']}`",
                f"{row['bare']['us_per_request']:.1f}",
                f"{row['bare']['vs_httptools']:.2f}",
                f"{row['browser']['us_per_request']:.1f}",
                f"{row['browser']['vs_httptools']:.2f}",
            )
        )
    lines += [
        "",
        f"Over sockets: {limits['load']}. `bare`: `GET /health/live` with Host only;",
        f"`browser`: the same with {len(BROWSER_HEADERS)} header fields a browser sends "
        "through a proxy (about 1.1 KB). Medians (min-max); ratios round by round.",
        "",
        cells("variant", "bare req/s", "vs httptools", "browser req/s", "vs httptools", "is"),
        "|---|--:|--:|--:|--:|---|",
    ]
    for row in limits["rows"]:
        lines.append(
            cells(
                f"`{row['variant']}`",
                spread(row["bare"]["requests_per_second"], thousands=True),
                spread(row["bare"]["vs_httptools"]),
                spread(row["browser"]["requests_per_second"], thousands=True),
                spread(row["browser"]["vs_httptools"]),
                row["description"],
            )
        )
    lines += [
        "",
        f"Flood: {limits['flood']}; RSS of the server process.",
        "",
        cells(
            "variant", "RSS before MB", "RSS during MB", "most sent, one connection MB", "serves"
        ),
        "|---|--:|--:|--:|---|",
    ]
    for row in limits["rows"]:
        flood = row["flood"]
        lines.append(
            cells(
                f"`{row['variant']}`",
                f"{flood['rss_before_mb']:.0f}",
                f"{flood['rss_during_mb']:.0f}",
                f"{flood['max_sent_mb']:.1f}",
                "yes" if flood["still_serves"] else "no",
            )
        )
    return [*lines, ""]


# --------------------------------------------------------------------------- part 6


TARGET_RSS_GROWTH = 1.10
MEMORY_WARM_UP = 1_000  # requests before the baseline sample
MEMORY_CONNECTIONS = 8
MEMORY_SAMPLES = 10  # RSS samples after the warm-up, evenly spaced
# Issue 14's run: 100,000 requests, 20,000 of them in-process jobs, default settings.
MEMORY_FULL_REQUESTS = 100_000
MEMORY_QUICK_REQUESTS = 10_000
# One cycle of the mix: 2 of 10 submit a job, so the jobs are a fifth of the requests.
MEMORY_MIX = (
    "post_report", "live", "known_job", "notification", "unknown_job",
    "post_report", "live", "known_job", "missing_path", "invalid_body",
)  # fmt: skip
MEMORY_EXPECTED = {
    "post_report": 202, "live": 200, "known_job": 200, "notification": 202,
    "unknown_job": 404, "missing_path": 404, "invalid_body": 422,
}  # fmt: skip
INVALID_REPORT = Request("POST", "/reports", b'{"rows": "many", "simulate_seconds": -1}')


def peak_rss_mb(pid: int) -> float:
    """The process's highest RSS so far (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for {pid}")


class MemoryDriver:
    """A closed loop on one process: `MEMORY_CONNECTIONS` keep-alive clients sending
    the mix in turn. Known job ids are among the latest accepted, always still stored;
    every unknown id and missing path is new, so nothing the server might keep by path
    or id is ever asked for twice."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sent = 0
        self.first_job = ""
        self.accepted_jobs = 0
        self.recent_jobs: collections.deque[str] = collections.deque(maxlen=64)
        self.unexpected: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, str] = {}

    def request(self, index: int) -> tuple[str, Request]:
        kind = MEMORY_MIX[index % len(MEMORY_MIX)]
        if kind == "known_job" and not self.recent_jobs:
            kind = "live"
        if kind == "post_report":
            return kind, report_request(1, 0.0)
        if kind == "live":
            return kind, LIVE
        if kind == "known_job":
            return kind, Request("GET", f"/jobs/{random.choice(self.recent_jobs)}")
        if kind == "unknown_job":
            return kind, Request("GET", f"/jobs/{uuid.uuid4().hex}")
        if kind == "missing_path":
            return kind, Request("GET", f"/no-such-page/{index}?page={index}")
        if kind == "notification":
            body = {"email": f"user{index}@example.com", "message": f"message {index}"}
            return kind, Request("POST", "/notifications", json.dumps(body).encode())
        return kind, INVALID_REPORT

    async def send(self, count: int) -> None:
        """Send the next `count` requests of the mix."""
        stop = self.sent + count

        async def client() -> None:
            connection = Connection(self.port)
            try:
                while self.sent < stop:
                    index = self.sent
                    self.sent += 1
                    kind, request = self.request(index)
                    status, body = await asyncio.wait_for(connection.request(request), 10)
                    if status != MEMORY_EXPECTED[kind]:
                        self.unexpected[kind] += 1
                        self.examples.setdefault(kind, f"{status} {body[:200]!r}")
                    elif kind == "post_report":
                        job_id = json.loads(body)["id"]
                        self.first_job = self.first_job or job_id
                        self.accepted_jobs += 1
                        self.recent_jobs.append(job_id)
            finally:
                await connection.close()

        await asyncio.gather(*(client() for _ in range(MEMORY_CONNECTIONS)))

    def job_status(self, job_id: str) -> str:
        status, body = http_get(self.port, f"/jobs/{job_id}")
        if status == 404:
            return "forgotten"  # only finished jobs are ever forgotten
        if status != 200:
            raise RuntimeError(f"GET /jobs/{job_id} answered {status}: {body!r}")
        job_status: str = json.loads(body)["status"]
        return job_status

    def wait_for_jobs(self, timeout: float = 120.0) -> None:
        """Until the latest job has ended. Jobs start in the order they came, so then
        no backlog is in the sample, only what the server keeps."""
        if self.recent_jobs:
            latest = self.recent_jobs[-1]
            ended = ("succeeded", "failed", "forgotten")
            wait_until(lambda: self.job_status(latest) in ended, timeout, f"job {latest}")


def default_store_bound(bake: Bake) -> int:
    """INPROCESS_MAX_FINISHED_JOBS's default, read from the bake's own settings."""
    script = (
        "import importlib, sys\n"
        "settings = importlib.import_module(sys.argv[1] + '.settings').Settings\n"
        "print(settings.model_fields['inprocess_max_finished_jobs'].default)\n"
    )
    output = subprocess.run(
        [str(bake.python), "-c", script, bake.package],
        capture_output=True, text=True, check=True, env=bake.env(), timeout=60,
    ).stdout  # fmt: skip
    return int(output)


def memory_growth(
    args: argparse.Namespace, bake: Bake, processes: Processes, run_dir: Path, **env: str
) -> dict[str, Any]:
    """One API process's RSS while it serves `args.memory_requests` requests of the mix,
    sampled after the warm-up and then at even steps."""
    total = args.memory_requests
    default_bound = max_finished = default_store_bound(bake)
    if total != MEMORY_FULL_REQUESTS:
        # A shorter run bounds the store in proportion, so it fills and stops there too.
        max_finished = max(100, default_bound * total // MEMORY_FULL_REQUESTS)
        env = {"INPROCESS_MAX_FINISHED_JOBS": str(max_finished), **env}
    api = start_api(processes, bake, "generated", f"memory-{bake.backend}", run_dir, **env)
    driver = MemoryDriver(api.port)
    step = (total - MEMORY_WARM_UP) / MEMORY_SAMPLES
    marks = [MEMORY_WARM_UP + round(step * n) for n in range(MEMORY_SAMPLES + 1)]
    curve = []
    started = time.perf_counter()
    for mark in marks:
        asyncio.run(driver.send(mark - driver.sent))
        if bake.backend == "inprocess":
            driver.wait_for_jobs()  # Celery jobs wait in Redis: no worker runs
        curve.append({"requests": driver.sent, "rss_mb": rss_mb(api.process.pid)})
    elapsed = time.perf_counter() - started
    peak = peak_rss_mb(api.process.pid)
    first_job = driver.job_status(driver.first_job)
    processes.stop(api.process)
    if driver.unexpected:
        raise RuntimeError(
            f"memory ({bake.backend}): unexpected answers {dict(driver.unexpected)}, "
            f"e.g. {driver.examples}"
        )
    baseline = curve[0]["rss_mb"]
    return {
        "backend": bake.backend,
        "requests": driver.sent,
        "jobs_accepted": driver.accepted_jobs,
        "max_finished_jobs": max_finished if bake.backend == "inprocess" else None,
        "default_max_finished_jobs": default_bound,
        "seconds": elapsed,
        "curve": [{**point, "vs_warm_up": point["rss_mb"] / baseline} for point in curve],
        "peak_rss_mb": peak,
        "first_job_at_the_end": first_job,
        "ratio": curve[-1]["rss_mb"] / baseline,
    }


def memory_use(
    args: argparse.Namespace, bakes: dict[str, Bake], processes: Processes, run_dir: Path
) -> dict[str, Any]:
    """Part 6: does an API process keep its memory over many requests and jobs?"""
    rows = [memory_growth(args, bakes["inprocess"], processes, run_dir)]
    progress(f"memory: inprocess {rows[0]['ratio']:.3f} x its RSS after the warm-up")
    redis = start_redis(processes, run_dir, "memory-redis")
    rows.append(memory_growth(args, bakes["celery"], processes, run_dir, REDIS_URL=redis.url))
    processes.stop(redis.process)
    progress(f"memory: celery {rows[1]['ratio']:.3f} x its RSS after the warm-up")
    mix = ", ".join(f"{MEMORY_MIX.count(kind)} {kind}" for kind in MEMORY_EXPECTED)
    return {
        "load": f"{args.memory_requests:,} requests on {MEMORY_CONNECTIONS} keep-alive "
        f"connections, as fast as the server answers; every {len(MEMORY_MIX)}: {mix}",
        "rows": rows,
    }


def memory_section(memory: dict[str, Any]) -> list[str]:
    rows = memory["rows"]
    lines = [
        "## 6. Memory: RSS of one API process over many requests and jobs",
        "",
        f"Load: {memory['load']}. LOG_LEVEL=INFO, the settings' defaults; "
        "RSS (VmRSS of /proc/<pid>/status) after the first "
        f"{MEMORY_WARM_UP:,} requests, then at even steps, each taken once the latest "
        "in-process job has ended. Celery: no worker runs, its jobs wait in Redis.",
    ]
    inprocess = rows[0]
    if inprocess["max_finished_jobs"] != inprocess["default_max_finished_jobs"]:
        lines.append(
            f"Shortened run: INPROCESS_MAX_FINISHED_JOBS={inprocess['max_finished_jobs']:,} "
            f"instead of its default {inprocess['default_max_finished_jobs']:,}, in proportion, "
            "so the store fills up and stops growing as it does in the full run."
        )
    header = ["requests"]
    for row in rows:
        header += [f"{row['backend']} RSS MB", f"vs after {MEMORY_WARM_UP:,}"]
    lines += ["", cells(*header), "|--:|" + "--:|--:|" * len(rows)]
    for number, point in enumerate(rows[0]["curve"]):
        values: list[object] = [f"{point['requests']:,}"]
        for row in rows:
            mine = row["curve"][number]
            values += [f"{mine['rss_mb']:.1f}", f"{mine['vs_warm_up']:.3f}"]
        lines.append(cells(*values))
    lines += [
        "",
        cells("backend", "jobs accepted", "peak RSS MB", "first job at the end", "seconds",
              f"final / after {MEMORY_WARM_UP:,} (target <= {TARGET_RSS_GROWTH:.2f})"),
        "|---|--:|--:|---|--:|---|",
    ]  # fmt: skip
    for row in rows:
        met = verdict(row["ratio"], TARGET_RSS_GROWTH, higher_is_better=False)
        lines.append(
            cells(
                row["backend"],
                f"{row['jobs_accepted']:,}",
                f"{row['peak_rss_mb']:.1f}",
                row["first_job_at_the_end"],
                f"{row['seconds']:.0f}",
                f"{row['ratio']:.3f} ({met})",
            )
        )
    return [*lines, ""]


# --------------------------------------------------------------------------- main


PARTS = ("generation", "middleware", "jobs", "enqueue", "limits", "memory")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "bench-results", help="results folder"
    )
    parser.add_argument("--template", type=Path, default=REPO_ROOT, help="the template to bake")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds (about 3 min)")
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}"
    )
    parser.add_argument(
        "--rounds", type=int, help="rounds of parts 1, 3 and 5 (default 5; quick 2)"
    )
    parser.add_argument("--seconds", type=float, help="seconds of load a turn (default 3; quick 1)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    parser.add_argument(
        "--job-rate", type=float, default=25.0, help="POST /reports a second in part 2"
    )
    parser.add_argument(
        "--job-seconds", type=float, help="seconds a part-2 phase lasts (default 10; quick 3)"
    )
    parser.add_argument(
        "--job-rows", type=int, default=10_000, help="rows each report sums (CPU work)"
    )
    parser.add_argument(
        "--bake-repeats", type=int, help="bakes timed a backend (default 5; quick 2)"
    )
    parser.add_argument(
        "--memory-requests",
        type=int,
        help=f"requests a process serves in part 6 (default {MEMORY_FULL_REQUESTS:,}; quick "
        f"{MEMORY_QUICK_REQUESTS:,})",
    )
    parser.add_argument(
        "--python",
        type=Path,
        help="an interpreter that already has the generated projects' dependencies: skips the "
        "fresh installs and test runs of part 4, and serves the bakes from their src folders",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    args.rounds = args.rounds if args.rounds is not None else (2 if quick else 5)
    args.seconds = args.seconds if args.seconds is not None else (1.0 if quick else 3.0)
    args.job_seconds = (
        args.job_seconds if args.job_seconds is not None else (3.0 if quick else 10.0)
    )
    args.bake_repeats = args.bake_repeats if args.bake_repeats is not None else (2 if quick else 5)
    if args.memory_requests is None:
        args.memory_requests = MEMORY_QUICK_REQUESTS if quick else MEMORY_FULL_REQUESTS
    args.parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    # Bounded, so a typo cannot turn into an hour of load on a shared machine.
    limits = {
        "rounds": (1, 20), "seconds": (1, 30), "connections": (1, 256), "job_rate": (1, 500),
        "job_seconds": (1, 60), "job_rows": (1, 1_000_000), "bake_repeats": (1, 20),
        "memory_requests": (2_000, 1_000_000),
    }  # fmt: skip
    for name, (low, high) in limits.items():
        if not low <= getattr(args, name) <= high:
            parser.error(f"--{name.replace('_', '-')} must be between {low} and {high}")
    if unknown := set(args.parts) - set(PARTS):
        parser.error(
            f"unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}"
        )
    if args.python is not None and not args.python.exists():
        parser.error(f"--python {args.python}: no such interpreter")
    args.template = args.template.resolve()
    args.measure_generation = "generation" in args.parts
    # Issues 9 and 11: part 1's rows for the optional layers, on bakes of their own.
    args.layer_rows = "middleware" in args.parts
    return args


@contextlib.contextmanager
def workspace() -> Iterator[tuple[Path, Path, Processes]]:
    with tempfile.TemporaryDirectory(prefix="fastapi-template-bench-") as tmp:
        workdir = Path(tmp)
        logs = workdir / "logs"
        run_dir = workdir / "run"
        logs.mkdir()
        run_dir.mkdir()
        processes = Processes(logs)
        try:
            yield workdir, run_dir, processes
        except BaseException:
            kept = Path(tempfile.mkdtemp(prefix="bench-logs-"))
            shutil.copytree(logs, kept, dirs_exist_ok=True)
            progress(f"failed; process logs kept in {kept}")
            raise
        finally:
            processes.stop_all()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not wrk_available():
        progress(
            "wrk not found: using the Python client, which saturates far less (apt-get install wrk)"
        )
    command = " ".join(["python bench/run.py", *(sys.argv[1:] if argv is None else argv)])
    results: dict[str, Any] = {"command": command, "parts": args.parts}
    started = time.perf_counter()
    with workspace() as (workdir, run_dir, processes):
        progress("part 4 first: bake and install both backends (the other parts serve these bakes)")
        generation, bakes = generation_cost(args, workdir, processes.logs)
        results["machine"] = machine(bakes)
        if "generation" in args.parts:
            results["generation"] = generation
        if "middleware" in args.parts:
            progress("part 1: middleware cost")
            results["middleware"] = middleware_cost(args, bakes, processes, run_dir)
        if "jobs" in args.parts:
            progress("part 2: response time while heavy jobs run")
            results["jobs"] = jobs_under_load(args, bakes, processes, run_dir)
        if "enqueue" in args.parts:
            progress("part 3: enqueue throughput (Celery)")
            results["enqueue"] = enqueue_throughput(args, bakes["celery"], processes, run_dir)
        if "limits" in args.parts:
            progress("part 5: request-header limits (HTTP parser cost, memory under a flood)")
            results["limits"] = header_limits_cost(args, bakes["inprocess"], processes, run_dir)
        if "memory" in args.parts:
            progress("part 6: memory of an API process over many requests and jobs")
            results["memory"] = memory_use(args, bakes, processes, run_dir)
    results["elapsed_seconds"] = time.perf_counter() - started

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out / stamp
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(results, command)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(table)
    progress(f"done in {results['elapsed_seconds']:.0f} s; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
