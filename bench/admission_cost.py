"""What `POST /reports` costs the API process end to end (routing, validation, the
endpoint, the backend's enqueue; no sockets), with and without an `Idempotency-Key`,
in one process: run it with a generated project's interpreter, once per template to
compare (issue 10: enqueue throughput before and after admission, within 10%).

    BENCH_PACKAGES=orders_service,before_service PYTHONPATH=<bake>/src:<bake2>/src \\
        python bench/admission_cost.py [REDIS_URL] [--seconds 1] [--rounds 5]

Several packages (bakes of two templates, each with a `package_name` of its own) are
measured side by side in one process, their turns alternated, so that a neighbour's
burst of load hits both alike: run to run, two separate processes differed by up to
30% on this shared machine, more than the difference to measure.

The ASGI app of `create_app` is driven directly, 16 requests in flight (as a loaded
server has them; on Celery they share the publisher's batches). Without REDIS_URL the
in-process backend runs the jobs (`rows=1`, after each response, as in production);
with it, the Celery backend queues them in that Redis (no worker: they stay queued;
MAX_QUEUED_JOBS is set far above what a run queues). The loops alternate round by
round; each reports its best round, as requests per second and CPU us per request.
A template without admission ignores the header: the same loops run on both.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import time
import uuid
from typing import Any

PACKAGES = os.environ["BENCH_PACKAGES"].split(",")
CONCURRENT = 16
BODY = json.dumps({"rows": 1, "simulate_seconds": 0}).encode()


async def post(app: Any, key: str | None) -> int:
    headers = [(b"host", b"bench"), (b"content-type", b"application/json")]
    headers.append((b"content-length", str(len(BODY)).encode()))
    if key is not None:
        headers.append((b"idempotency-key", key.encode()))
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/reports", "raw_path": b"/reports", "query_string": b"",
        "root_path": "", "headers": headers, "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000), "state": {},
    }  # fmt: skip
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": BODY, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def rate(app: Any, keyed: bool, seconds: float) -> dict[str, float]:
    done = 0
    deadline = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            status = await post(app, uuid.uuid4().hex if keyed else None)
            if status != 202:
                raise RuntimeError(f"POST /reports answered {status}")
            done += 1

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(CONCURRENT)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"per_second": done / wall, "cpu_us": cpu / done * 1e6}


async def measure(redis_url: str | None, seconds: float, rounds: int) -> dict[str, Any]:
    os.environ.update(LOG_LEVEL="WARNING", MAX_QUEUED_JOBS="10000000")
    if redis_url:
        os.environ.update(JOBS_BACKEND="celery", REDIS_URL=redis_url)
    else:
        os.environ.update(JOBS_BACKEND="inprocess")
    apps = []
    for package in PACKAGES:
        settings = importlib.import_module(f"{package}.settings").Settings(_env_file=None)
        apps.append(importlib.import_module(f"{package}.factory").create_app(settings))
    loops = {
        f"{package}: POST /reports{', Idempotency-Key' if keyed else ''}": (app, keyed)
        for package, app in zip(PACKAGES, apps, strict=True)
        for keyed in (False, True)
    }
    for app, keyed in loops.values():
        await rate(app, keyed, 0.3)  # warm-up
    results: dict[str, list[dict[str, float]]] = {name: [] for name in loops}
    for number in range(rounds):
        order = list(loops.items()) if number % 2 == 0 else list(reversed(loops.items()))
        for name, (app, keyed) in order:
            results[name].append(await rate(app, keyed, seconds))
    for app in apps:
        await app.state.job_backend.aclose()
    return {
        name: {
            "per_second": max(r["per_second"] for r in runs),
            "cpu_us": min(r["cpu_us"] for r in runs),
        }
        for name, runs in results.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("redis_url", nargs="?")
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.redis_url, args.seconds, args.rounds))))


if __name__ == "__main__":
    main()
