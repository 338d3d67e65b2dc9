"""What publishing job states costs (GET /jobs/{id}/events on the Celery backend): the
worker's PROGRESS write and the API's QUEUED write, each with and without the PUBLISH
that lets followers see the state without polling. Run in a generated Celery project's
interpreter, against a Redis of your own (it writes and deletes only `bench-*` keys):

    BENCH_PACKAGE=<package> PYTHONPATH=<bake>/src python bench/state_publish_cost.py REDIS_URL

Loops, alternated round by round, best round each, as CPU time of this process per
state and states per wall-clock second:

- `progress SET`: the PROGRESS write before, one SET.
- `progress SET+PUBLISH`: `celery_app.write_state` now: one script that stores the
  state unless the job is final, publishes it and reads the cancel flag.
- `queued x16 SET+LPUSH`: the QUEUED record and message of 16 jobs in one pipeline, as
  `QueuePublisher._send` sends a batch under load (per job).
- `queued x16 SET+LPUSH+PUBLISH`: the same with a PUBLISH of each QUEUED record.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio

PACKAGE = os.environ["BENCH_PACKAGE"]
BATCH = 16


def generated(module: str) -> Any:
    return importlib.import_module(f"{PACKAGE}.{module}")


def timed(one: Callable[[], Any], seconds: float, per_call: int) -> dict[str, float]:
    done = 0
    cpu, wall = time.process_time(), time.perf_counter()
    deadline = wall + seconds
    while time.perf_counter() < deadline:
        one()
        done += per_call
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"per_second": round(done / wall), "cpu_us": round(cpu / done * 1e6, 1)}


def measure(url: str, seconds: float, rounds: int) -> dict[str, Any]:
    os.environ.update(REDIS_URL=url, JOBS_BACKEND="celery")
    settings = generated("settings").Settings()
    celery_app = generated("jobs.celery_app")
    app = celery_app.create_celery_app(settings, worker=True)
    store = app.backend
    job_id = f"bench-{uuid.uuid4().hex}"
    key = store.get_key_for_task(job_id)
    state = celery_app.encode_state(store, job_id, celery_app.PROGRESS, 50)
    message = b"m" * 1000
    loop = asyncio.new_event_loop()
    async_client = redis.asyncio.Redis.from_url(url)

    def progress_set() -> None:
        store.client.set(key, state, ex=60)

    def progress_set_publish() -> None:
        celery_app.write_state(store, job_id, celery_app.PROGRESS, 50, 60)

    def queued_batch(publish: bool) -> Callable[[], None]:
        async def send() -> None:
            async with async_client.pipeline(transaction=False) as pipe:
                for n in range(BATCH):
                    job_key = f"bench-state-{n}"
                    pipe.set(job_key, state, ex=60)
                    pipe.lpush("bench-queue", message)
                    if publish:
                        pipe.publish(job_key, state)
                await pipe.execute()

        def one() -> None:
            loop.run_until_complete(send())

        return one

    loops: dict[str, tuple[Callable[[], None], int]] = {
        "progress SET": (progress_set, 1),
        "progress SET+PUBLISH": (progress_set_publish, 1),
        f"queued x{BATCH} SET+LPUSH": (queued_batch(publish=False), BATCH),
        f"queued x{BATCH} SET+LPUSH+PUBLISH": (queued_batch(publish=True), BATCH),
    }
    for one, per_call in loops.values():  # warm-up: connections, caches
        timed(one, 0.2, per_call)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in loops}
    for number in range(rounds):
        order = list(loops.items()) if number % 2 == 0 else list(reversed(loops.items()))
        for name, (one, per_call) in order:
            results[name].append(timed(one, seconds, per_call))
            store.client.delete("bench-queue")
    store.client.delete(key, *(f"bench-state-{n}" for n in range(BATCH)), "bench-queue")
    loop.run_until_complete(async_client.aclose())
    loop.close()
    app.close()
    return {
        name: {
            "per_second": max(r["per_second"] for r in runs),
            "cpu_us": min(r["cpu_us"] for r in runs),
        }
        for name, runs in results.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("redis_url")
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(measure(args.redis_url, args.seconds, args.rounds), indent=1))


if __name__ == "__main__":
    main()
