"""CPU time a request costs in uvicorn's HTTP protocol, per parser variant, in one run.

`bench/run.py` (part 5, `limits`) runs this with a generated project's interpreter and
its package on the path; by hand, from a bake with its venv:

    PYTHONPATH=src .venv/bin/python <template>/bench/parser_cost.py orders_service

Each variant's protocol class is driven directly in this process: a fake transport, one
kept-alive connection, requests fed one after another (no sockets, no load generator
sharing the cores), in front of two apps: one that answers 200 at once (the protocol's
own cost) and the generated app (what a request costs in all). Rounds alternate the order
of the variants and each reports its best round, as `middleware_cost.py` does: on a
shared machine a slow round says more about the neighbours than about the code. What is
left is the parser and uvicorn's request cycle, the part a header bound can slow down.
Prints JSON.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
import time
from typing import Any

from uvicorn.config import Config
from uvicorn.server import ServerState

REQUESTS_A_TURN = 2_000
ROUNDS = 7


async def tiny_app(scope: Any, receive: Any, send: Any) -> None:
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


class FakeTransport(asyncio.Transport):
    """Takes what the protocol writes and forgets it; never closes on its own."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        extra = {"peername": ("127.0.0.1", 50_000), "sockname": ("127.0.0.1", 8_000)}
        return extra.get(name, default)

    def write(self, data: Any) -> None:
        self.writes += 1

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def variants(package: str) -> dict[str, str]:
    return {
        "httptools": "httptools",
        "bounded": f"{package}.http_protocol:BoundedHttpToolsProtocol",
        "h11": "h11",
    }


def requests(headers: list[tuple[str, str]]) -> dict[str, bytes]:
    bare = b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    fields = "".join(f"{name}: {value}\r\n" for name, value in headers)
    browser = f"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n{fields}\r\n".encode()
    return {"bare": bare, "browser": browser}


async def turn(http: str, app: Any, request: bytes, count: int) -> float:
    """CPU seconds for `count` requests on one connection of a fresh protocol."""
    config = Config(
        app,
        http=http,
        lifespan="off",
        access_log=False,
        log_level="warning",
        h11_max_incomplete_event_size=32_768,  # only h11 reads it
    )
    config.load()
    state = ServerState()
    protocol: Any = config.http_protocol_class(
        config=config, server_state=state, app_state={}, _loop=asyncio.get_running_loop()
    )
    transport = FakeTransport()
    protocol.connection_made(transport)
    started = time.process_time()
    for _ in range(count):
        protocol.data_received(request)
        if state.tasks:
            await asyncio.wait(set(state.tasks))
    spent = time.process_time() - started
    if transport.closed or transport.writes < count:
        raise RuntimeError(f"{http}: {transport.writes} writes for {count} requests")
    protocol.connection_lost(None)
    return spent


async def measure(package: str, headers: list[tuple[str, str]], rounds: int) -> dict[str, Any]:
    """Best CPU per request of each (variant, request, app); ratios to httptools."""
    names = variants(package)
    kinds = requests(headers)
    # The generated app as `uvicorn <package>.main:app` serves it (settings from the env).
    apps = {"tiny": tiny_app, "generated": importlib.import_module(f"{package}.main").app}
    best: dict[tuple[str, str, str], float] = {}
    for number in range(rounds):
        order = list(names.items()) if number % 2 == 0 else list(reversed(names.items()))
        for app_name, app in apps.items():
            for kind, request in kinds.items():
                for name, http in order:
                    spent = await turn(http, app, request, REQUESTS_A_TURN)
                    key = (name, app_name, kind)
                    best[key] = min(spent, best.get(key, spent))
    rows = []
    for app_name in apps:
        for name in names:
            row: dict[str, Any] = {"variant": name, "app": app_name}
            for kind in kinds:
                mine, base = best[(name, app_name, kind)], best[("httptools", app_name, kind)]
                row[kind] = {
                    "us_per_request": mine / REQUESTS_A_TURN * 1e6,
                    "vs_httptools": mine / base,
                }
            rows.append(row)
    return {
        "requests_a_turn": REQUESTS_A_TURN,
        "rounds": rounds,
        "request_bytes": {kind: len(request) for kind, request in kinds.items()},
        "rows": rows,
    }


def main() -> int:
    package = sys.argv[1]
    headers = json.loads(sys.argv[2]) if len(sys.argv) > 2 else []
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else ROUNDS
    print(json.dumps(asyncio.run(measure(package, [tuple(h) for h in headers], rounds))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
