"""What enqueueing one job costs the API process on the Celery backend, next to Redis's
own floor, in one process: `bench/run.py` (part `enqueue`) runs it in the generated
project's interpreter, against the benchmark's private `redis-server`.

    python bench/publish_cost.py REDIS_URL [--seconds 1] [--rounds 3] [--broker-url AMQP_URL]

With `--broker-url amqp://...` (a vhost of your own: the jobs pile up in it, no worker
takes them) the jobs go to RabbitMQ as in a `celery-rabbitmq` bake, admitted in Redis
first; `raw` stays Redis's floor, for the ratio.

Three loops, alternated round by round (best round each, as CPU time per job and as jobs
per wall-clock second):

- `raw`: redis-py doing what one job needs of Redis at the least: a SET of the job's
  state and an LPUSH of a message of the same size, two round trips.
- `submit`: the backend's own enqueue, one job after another: `await
  backend.submit(job)`, as `POST /reports` calls it.
- `submit x16`: the same with 16 submissions in flight at once, as under load.
- `submit, key` and `submit x16, key` (templates with idempotency keys, issue 10): each
  job with an `Idempotency-Key` of its own, as a client that always sends one.
- `LLEN, then submit x16` (same templates): the backpressure check as a round trip of
  its own before each submission, the alternative to the one the template ships
  (the check inside the admission script, in the batch's pipeline).
- `_publish, no thread` (templates from before the enqueue moved to the event loop):
  the call their client thread made for each job, called directly.

Each loop also gives `redis_cpu_us`, the Redis server's own CPU time per job (`INFO
cpu`, read around each round): the admission script runs on the server, which shares
the machine's cores with the API. And `redis_usec_per_call`, per command (`INFO
commandstats`, over the whole run; a script's time includes the commands it calls).

The JSON line it prints is read by `bench/run.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import redis

PACKAGE = os.environ["BENCH_PACKAGE"]
CONCURRENT = 16


def generated(module: str) -> Any:
    return importlib.import_module(f"{PACKAGE}.{module}")


def new_job() -> Any:
    params = {"rows": 1, "simulate_seconds": 0.0}
    return generated("jobs.models").JobRequest(
        id=uuid.uuid4().hex, name="build_report", params=params, request_id=os.urandom(16).hex()
    )


def server_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def rate(
    one: Callable[[], Awaitable[None]], seconds: float, parallel: int, client: redis.Redis
) -> dict[str, float]:
    done = 0
    deadline = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await one()
            done += 1

    server = server_cpu(client)
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(parallel)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    server = server_cpu(client) - server
    return {
        "per_second": done / wall,
        "cpu_us": cpu / done * 1e6,
        "redis_cpu_us": server / done * 1e6,
    }


async def measure(
    url: str, seconds: float, rounds: int, broker_url: str | None = None
) -> dict[str, Any]:
    # The queue grows by thousands of jobs a second here, with no worker: a limit high
    # enough never to refuse, so the check's cost is measured, not its refusals.
    os.environ.update(REDIS_URL=url, JOBS_BACKEND="celery", MAX_QUEUED_JOBS="10000000")
    os.environ["BROKER_URL"] = broker_url or ""  # empty: Redis is the broker
    settings = generated("settings").Settings()
    backend = generated("jobs.celery_backend").CeleryBackend(settings)
    client = redis.Redis.from_url(url)
    sample = generated("jobs.broker")
    state, message = b"s" * 110, b"m" * 1000
    if hasattr(sample, "encode_task_message"):  # the message the backend builds
        message = sample.encode_task_message(
            backend.app, "x.run_job", "0" * 32, ("build_report", {"rows": 1}), {}, "q"
        ).encode()

    async def raw() -> None:
        client.set(f"bench-raw-state-{uuid.uuid4().hex}", state, ex=60)
        client.lpush("bench-raw-queue", message)

    async def submit() -> None:
        await backend.submit(new_job(), lambda _: None)

    loops = {"raw": (raw, 1), "submit": (submit, 1), "submit x16": (submit, CONCURRENT)}
    models = generated("jobs.models")
    if hasattr(models, "IdempotencyClaim"):  # issue 10: admission

        async def submit_with_key() -> None:
            job = new_job()
            claim = models.IdempotencyClaim(uuid.uuid4().hex * 2, "f" * 64)
            await backend.submit(job, lambda _: None, claim)

        async def check_then_submit() -> None:
            await backend.waiting_jobs()
            await backend.submit(new_job(), lambda _: None)

        loops["submit, key"] = (submit_with_key, 1)
        loops["submit x16, key"] = (submit_with_key, CONCURRENT)
        loops["LLEN, then submit x16"] = (check_then_submit, CONCURRENT)
    if hasattr(backend, "_publish"):  # before: the call its thread made for each job

        async def publish() -> None:
            backend._publish(new_job(), time.monotonic() + 10)

        loops["_publish, no thread"] = (publish, 1)
    client.config_resetstat()
    for one, parallel in loops.values():  # warm-up: connections, caches
        await rate(one, 0.2, parallel, client)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in loops}
    for number in range(rounds):
        order = list(loops.items()) if number % 2 == 0 else list(reversed(loops.items()))
        for name, (one, parallel) in order:
            results[name].append(await rate(one, seconds, parallel, client))
    await backend.aclose()
    stats = client.info("commandstats")
    server_cost = {
        name.removeprefix("cmdstat_"): stat["usec_per_call"]
        for name, stat in stats.items()
        if name in ("cmdstat_set", "cmdstat_lpush", "cmdstat_evalsha", "cmdstat_llen")
    }
    client.delete("bench-raw-queue", *client.keys("bench-raw-state-*"))
    if claims := client.keys("idempotency-key-*"):
        client.delete(*claims)
    client.close()
    return {
        **{
            name: {
                "per_second": max(r["per_second"] for r in runs),
                "cpu_us": min(r["cpu_us"] for r in runs),
                "redis_cpu_us": min(r["redis_cpu_us"] for r in runs),
            }
            for name, runs in results.items()
        },
        "redis_usec_per_call": server_cost,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("redis_url")
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--broker-url", help="amqp://...: RabbitMQ as the broker")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.redis_url, args.seconds, args.rounds, args.broker_url))))


if __name__ == "__main__":
    main()
