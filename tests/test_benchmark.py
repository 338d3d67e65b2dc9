"""The benchmark command (`bench/run.py`) and its load generators.

The numbers themselves are never asserted (speed is reported by the benchmark, not
checked by a timed test); what is checked is that the command runs end to end against
real servers, a real Redis and a real worker, and that its client measures honestly.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from conftest import REPO_ROOT, ProjectEnv, clean_env, run

sys.path.insert(0, str(REPO_ROOT / "bench"))

import loadgen
import run as bench_run


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert loadgen.percentile(values, 0.5) == 50
    assert loadgen.percentile(values, 0.99) == 99
    assert loadgen.percentile(values, 1.0) == 100
    assert loadgen.percentile([7.0], 0.99) == 7
    with pytest.raises(ValueError, match="no values"):
        loadgen.percentile([], 0.5)


@asynccontextmanager
async def slow_server(delay: float) -> AsyncIterator[int]:
    """An HTTP/1.1 keep-alive server that answers every request after `delay` seconds."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.decode("latin-1").split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                await asyncio.sleep(delay)
                status = b"202 Accepted" if head.startswith(b"POST") else b"200 OK"
                reply = b'{"echo": %d}' % len(body)
                writer.write(
                    b"HTTP/1.1 " + status + b"\r\nContent-Length: %d\r\n\r\n" % len(reply) + reply
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, loadgen.HOST, 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


def test_the_open_loop_client_counts_the_wait_for_a_busy_server() -> None:
    """With one connection and a server slower than the rate, requests queue; each
    latency must include that queueing (no coordinated omission)."""

    async def scenario() -> list[loadgen.Sample]:
        async with slow_server(delay=0.1) as port:
            requests = [
                loadgen.Request("POST", "/reports", b'{"rows": 1}'),
                loadgen.Request("GET", "/health/live"),
            ] * 3
            return await loadgen.open_loop(port, requests, rate=50, max_connections=1)

    samples = asyncio.run(scenario())
    assert [s.status for s in samples] == [202, 200] * 3
    assert [json.loads(s.body) for s in samples] == [{"echo": 11}, {"echo": 0}] * 3
    assert not any(s.error for s in samples)
    # Due every 20 ms, served every 100 ms: the n-th waits about n * 80 ms more.
    latencies = [s.latency_ms for s in samples]
    assert latencies[0] >= 100
    assert latencies[-1] >= 100 + 5 * 80 - 20
    assert latencies == sorted(latencies)


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_wrk_output_is_read_for_rate_latency_and_errors() -> None:
    async def scenario() -> loadgen.LoadResult:
        async with slow_server(delay=0.0) as port:
            post = loadgen.Request("POST", "/reports", b'{"rows": 1}')
            return await asyncio.to_thread(loadgen.run_wrk, port, post, 1, 4)

    result = asyncio.run(scenario())
    assert result.tool == "wrk"
    assert result.requests > 100
    assert 0.9 < result.seconds < 2
    assert 0 < result.p50_ms <= result.p99_ms
    assert result.unexpected == 0
    assert result.errors == 0


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--seconds", "600"], "--seconds must be between 1 and 30"),
        (["--rounds", "0"], "--rounds must be between 1 and 20"),
        (["--parts", "middleware,typo"], "unknown part(s) typo"),
        (["--python", "/nonexistent/python"], "no such interpreter"),
        (["--memory-requests", "100"], "--memory-requests must be between 2000 and 1000000"),
    ],
)
def test_the_benchmark_refuses_bad_or_unbounded_runs(
    arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench_run.parse_args(arguments)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.heavy(seconds=240)
def test_the_benchmark_runs_every_part_and_writes_its_tables(
    project_env: ProjectEnv, tmp_path: Path
) -> None:
    """A short run of the real command: bakes, uvicorn servers, wrk or the Python
    client, a private redis-server and a Celery worker. `--python` reuses the shared
    env instead of installing two fresh ones (test_fresh_install.py covers installs)."""
    if shutil.which("redis-server") is None:
        pytest.fail("the benchmark's Celery parts need redis-server on PATH")
    out = tmp_path / "results"
    command = [
        sys.executable, str(REPO_ROOT / "bench" / "run.py"), "--quick", "--python",
        str(project_env.python), "--rounds", "1", "--seconds", "1", "--job-seconds", "1",
        "--job-rate", "10", "--bake-repeats", "1", "--out", str(out),
    ]  # fmt: skip
    ran = run(command, cwd=tmp_path, env=clean_env(None), timeout=900)
    assert ran.ok, ran.report()
    assert not ran.leaked, "a server, worker or redis-server outlived the benchmark"

    (folder,) = out.iterdir()
    results = json.loads((folder / "results.json").read_text())
    table = (folder / "results.md").read_text()
    assert table.strip() in ran.output
    for heading in (
        "## 1. Middleware cost", "## 2. Response time", "## 3. Enqueue", "## 4.", "## 5.",
        "## 6. Memory",
    ):  # fmt: skip
        assert heading in table

    middleware = {row["variant"]: row for row in results["middleware"]["rows"]}
    assert set(middleware) == {
        "bare", "bare+uvicorn_log", "no_middleware", "generated", "base_http",
        "generated@WARNING", "base_http@WARNING", "no_metrics@WARNING",
        "jwt_layer", "rate_limit@WARNING", "rate_limit_redis@WARNING", "sentry@WARNING",
        "no_tracing@WARNING", "tracing@WARNING", "tracing_exporting@WARNING",
    }  # fmt: skip
    assert all(row["requests_per_second"]["median"] > 0 for row in middleware.values())
    # The comparisons are all there, each a ratio of real rounds.
    assert {
        "generated_vs_bare+uvicorn_log", "generated_vs_base_http", "generated_vs_base_http@WARNING",
    } <= set(results["middleware"]["comparisons"])  # fmt: skip
    # Issues 9 and 11: each new layer read against its own baseline, over wrk and
    # in-process, with the RS256 check alone beside the JWT layer.
    layers = {row["variant"]: row for row in results["middleware"]["layers"]}
    assert {name: row["baseline"] for name, row in layers.items()} == {
        "jwt_layer": "bare",
        "rate_limit@WARNING": "generated@WARNING",
        "rate_limit_redis@WARNING": "generated@WARNING",
        "sentry@WARNING": "generated@WARNING",
        "no_tracing@WARNING": "generated@WARNING",
        "tracing@WARNING": "no_tracing@WARNING",
        "tracing_exporting@WARNING": "no_tracing@WARNING",
    }
    assert all(row["vs_baseline"]["median"] > 0 for row in layers.values())
    in_process = results["middleware"]["in_process"]
    assert [(row["variant"], row["baseline"]) for row in in_process["rows"]] == [
        ("jwt_layer", "bare"),
        ("generated_stack", "generated_stack_no_metrics"),
        ("generated_stack_cors", "generated_stack"),
        ("generated_stack_rate_limit", "generated_stack"),
        ("generated_stack_rate_limit_redis", "generated_stack"),
        ("generated_stack", "generated_stack_no_tracing"),
        ("generated_stack_tracing_exporting", "generated_stack_no_tracing"),
    ]
    assert all(row["cpu_us"] > 0 and row["baseline_cpu_us"] > 0 for row in in_process["rows"])
    assert in_process["rsa_verify_us"] > 0
    # The exporting row's spans reached the sink over OTLP/HTTP.
    assert results["middleware"]["trace_exports_received"] > 0
    assert "### Auth, rate limits, error reporting, tracing (issues 9, 11)" in table
    assert "JWT layer's extra CPU us <= 1.1 x the RS256 check alone" in table

    jobs = results["jobs"]["rows"]
    assert [(row["backend"], row["simulate_seconds"]) for row in jobs] == [
        (backend, seconds) for backend in ("inprocess", "celery") for seconds in (0, 1, 5)
    ]
    for row in jobs:
        assert row["post_reports"]["count"] == row["get_live"]["count"] == 10
        # The first job of every phase was followed to a real result.
        assert row["jobs_after_run"].get("succeeded", 0) >= 1

    enqueue = results["enqueue"]
    assert enqueue["jobs_accepted_per_second"]["median"] > 0
    # Every 202 left a real Celery message in Redis (no worker was consuming).
    assert enqueue["messages_in_queue"] >= enqueue["accepted_in_measured_rounds"] > 0
    assert enqueue["redis_commands_per_job"] > 0
    assert {"raw", "submit", "submit x16"} <= set(enqueue["publish"])
    assert all(loop["per_second"] > 0 for loop in enqueue["publish"].values())

    limits = {row["variant"]: row for row in results["limits"]["rows"]}
    assert set(limits) == {"httptools", "bounded", "h11"}
    assert all(row["flood"]["still_serves"] for row in limits.values())
    # The unbounded parser took the whole 32 MB of each unfinished header; the bounds
    # cut every connection off long before, and memory stayed near where it started.
    assert limits["httptools"]["flood"]["max_sent_mb"] == 32
    for bounded in ("bounded", "h11"):
        flood = limits[bounded]["flood"]
        assert flood["max_sent_mb"] < 16
        assert flood["rss_during_mb"] - flood["rss_before_mb"] < 30
    cpu = {(row["app"], row["variant"]): row for row in results["limits"]["parser_cpu"]["rows"]}
    assert all(row["bare"]["us_per_request"] > 0 for row in cpu.values())

    memory = {row["backend"]: row for row in results["memory"]["rows"]}
    assert set(memory) == {"inprocess", "celery"}
    for row in memory.values():
        # --quick: 10,000 requests, a fifth of them jobs, sampled after the first 1,000.
        assert row["requests"] == 10_000
        assert row["jobs_accepted"] == 2_000
        assert [point["requests"] for point in row["curve"]][::5] == [1_000, 5_500, 10_000]
        assert all(point["rss_mb"] > 0 for point in row["curve"])
    # The store's bound was reached and held: the first of 2,000 jobs is gone, while
    # the Celery job still waits in Redis, as no worker ran.
    assert memory["inprocess"]["max_finished_jobs"] < 2_000
    assert memory["inprocess"]["first_job_at_the_end"] == "forgotten"
    assert memory["celery"]["first_job_at_the_end"] == "queued"

    generation = results["generation"]["backends"]
    assert set(generation) == {"inprocess", "celery"}
    assert all(len(row["bake_seconds"]) == 1 for row in generation.values())


@pytest.mark.heavy(seconds=60)
def test_the_in_process_benchmarks_run_on_a_fresh_bake(
    project_env: ProjectEnv, tmp_path: Path
) -> None:
    """`bench/middleware_cost.py` (one short round) and the measured part of
    `bench/instructions.py` (what callgrind counts, run here without valgrind, which
    CI does not install) both drive today's generated app."""
    bake = bench_run.bake(REPO_ROOT, "inprocess", tmp_path / "bake", tmp_path)
    cost = [
        str(project_env.python), str(REPO_ROOT / "bench" / "middleware_cost.py"),
        "--project", str(bake), "--rounds", "1", "--round-seconds", "0.1", "--slices", "2",
    ]  # fmt: skip
    ran = run(cost, cwd=tmp_path, env=clean_env(None), timeout=300)
    assert ran.ok, ran.report()
    for variant in ("bare", "generated_app_no_mw", "generated_stack"):
        assert f"| `{variant}` |" in ran.output
    assert "| `generated_stack` >= 0.92" in ran.output  # the targets table

    # --only and --json, as bench/run.py calls it: the JWT row and the RS256 check alone.
    jwt_bake = bench_run.bake(REPO_ROOT, "inprocess", tmp_path / "bake-jwt", tmp_path, "jwt")
    cost = [
        str(project_env.python), str(REPO_ROOT / "bench" / "middleware_cost.py"),
        "--project", str(jwt_bake), "--rounds", "1", "--round-seconds", "0.1", "--slices", "2",
        "--only", "jwt_layer,generated_stack_rate_limit", "--json",
    ]  # fmt: skip
    ran = run(cost, cwd=tmp_path, env=clean_env(None), timeout=300)
    assert ran.ok, ran.report()
    (line,) = (line for line in ran.output.splitlines() if line.startswith('{"cpu_us"'))
    printed = json.loads(line)
    assert set(printed["cpu_us"]) == {"bare", "jwt_layer", "generated_stack_rate_limit"}
    assert all(us > 0 for us in printed["cpu_us"].values())
    assert printed["rsa_verify_us"] > 0

    for variant in ("generated_stack", "generated_stack_info_logging"):
        child = [
            str(project_env.python), str(REPO_ROOT / "bench" / "instructions.py"),
            "--child", variant, "--project", str(bake), "--requests", "20",
        ]  # fmt: skip
        ran = run(child, cwd=tmp_path, env=clean_env(None), timeout=120)
        assert ran.ok, ran.report()
