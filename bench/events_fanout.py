"""Many clients following one Celery job through `GET /jobs/{id}/events`: how many Redis
subscriptions and pub/sub connections the API holds for them, and its CPU per event.

Run from a generated Celery project's root (it uses the project's own test helpers to
start a private redis-server, a worker and a uvicorn process, and stops them after):

    PYTHONPATH=src python <template>/bench/events_fanout.py [CLIENTS]

Measured on 2 shared cores (2026-12-02): 200 clients, one 4 s job of 100 rows: one
subscription (`PUBSUB NUMSUB`), one pub/sub connection, every client got every change
(20-23 events), 153 us of the API's CPU per event delivered, stream set-up included.
"""

import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

import httpx2 as httpx
import redis

sys.path.insert(0, os.getcwd())  # the generated project's `tests` package
from tests.celery_processes import redis_server, running_worker
from tests.support import uvicorn_process


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


async def follow(url: str, redis_url: str, pid: int, clients: int) -> dict[str, object]:
    store = redis.Redis.from_url(redis_url)
    limits = httpx.Limits(max_connections=clients + 10)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as http:
        submitted = await http.post("/reports", json={"rows": 100, "simulate_seconds": 4})
        job_id = submitted.json()["id"]
        counts: list[int] = []

        async def client() -> None:
            events = 0
            async with http.stream("GET", f"/jobs/{job_id}/events") as response:
                async for line in response.aiter_lines():
                    events += line.startswith("data:")
            counts.append(events)

        started = cpu_seconds(pid)
        tasks = [asyncio.create_task(client()) for _ in range(clients)]
        await asyncio.sleep(1.5)  # all streams open, the job running
        ((_, subscriptions),) = store.pubsub_numsub(f"celery-task-meta-{job_id}")
        pubsub_connections = sum(1 for c in store.client_list() if int(c.get("sub", 0)) > 0)
        await asyncio.gather(*tasks)
        used = cpu_seconds(pid) - started
    store.close()
    return {
        "clients": clients,
        "subscriptions": subscriptions,
        "pubsub_connections": pubsub_connections,
        "events_per_client": [min(counts), max(counts)],
        "api_cpu_seconds": round(used, 2),
        "api_cpu_us_per_event": round(used / sum(counts) * 1e6),
    }


def main() -> None:
    clients = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        (workdir / "worker").mkdir()
        with (
            redis_server(workdir / "redis") as server,
            running_worker(server.url, "fanout", workdir / "worker"),
            uvicorn_process(
                workdir, options=[], JOBS_BACKEND="celery", REDIS_URL=server.url,
                LOG_LEVEL="WARNING",
            ) as api,
        ):  # fmt: skip
            result = asyncio.run(follow(api.url, server.url, api.process.pid, clients))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
