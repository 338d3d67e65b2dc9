"""Load generators for `bench/run.py`: wrk when it is installed, and a small asyncio
HTTP/1.1 client (standard library only) for open-loop runs and as wrk's fallback.

Loopback only: every URL here is `http://127.0.0.1:<port>`.
"""

from __future__ import annotations

import asyncio
import math
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile: the smallest value with `fraction` of values at or below."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()  # sent besides Host (and the body's)

    def encode(self, port: int) -> bytes:
        head = f"{self.method} {self.path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in self.headers)
        if self.body or self.method in ("POST", "PUT", "PATCH"):
            head += f"Content-Type: application/json\r\nContent-Length: {len(self.body)}\r\n"
        return head.encode() + b"\r\n" + self.body


@dataclass(frozen=True)
class LoadResult:
    """What one load run measured. Latencies in milliseconds."""

    requests: int
    seconds: float
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    unexpected: int = 0  # responses whose status was not the expected one
    errors: int = 0  # connection errors and timeouts
    tool: str = "python"

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


# --------------------------------------------------------------------------- wrk

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def _to_ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS_MS[unit]


def parse_wrk(output: str) -> LoadResult:
    """Read requests, duration, p50/p99 (from `--latency`) and errors from wrk's output."""
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", output)
    if total is None:
        raise RuntimeError(f"wrk printed no request count:\n{output}")
    requests = int(total.group(1))
    seconds = _to_ms(total.group(2) + total.group(3)) / 1000
    distribution = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+(?:us|ms|s|m))\s*$", output, re.M))
    if set(distribution) != {"50", "99"}:
        raise RuntimeError(f"wrk printed no latency distribution (--latency):\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return LoadResult(
        requests=requests,
        seconds=seconds,
        p50_ms=_to_ms(distribution["50"]),
        p99_ms=_to_ms(distribution["99"]),
        unexpected=int(non_2xx.group(1)) if non_2xx else 0,
        errors=sum(int(n) for n in sockets.groups()) if sockets else 0,
        tool="wrk",
    )


def wrk_script(request: Request) -> str:
    """A wrk Lua script that sends `request` instead of a GET."""

    def lua(text: str) -> str:
        return text.replace("\\", "\\\\").replace('"', '\\"')

    script = f'wrk.method = "{request.method}"\n'
    if request.body or request.method != "GET":
        script += f'wrk.body = "{lua(request.body.decode())}"\n'
        script += 'wrk.headers["Content-Type"] = "application/json"\n'
    for name, value in request.headers:
        script += f'wrk.headers["{lua(name)}"] = "{lua(value)}"\n'
    return script


def run_wrk(port: int, request: Request, seconds: float, connections: int) -> LoadResult:
    command = [
        "wrk",
        "--threads",
        "1",
        "--connections",
        str(connections),
        "--duration",
        f"{max(1, round(seconds))}s",
        "--timeout",
        "5s",
        "--latency",
    ]
    with tempfile.TemporaryDirectory(prefix="wrk-") as workdir:
        if request.method != "GET" or request.body or request.headers:
            script = Path(workdir) / "request.lua"
            script.write_text(wrk_script(request))
            command += ["--script", str(script)]
        command.append(f"http://{HOST}:{port}{request.path}")
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=seconds + 30, check=False
        )
    if completed.returncode != 0:
        raise RuntimeError(f"wrk failed ({completed.returncode}):\n{completed.stderr}")
    return parse_wrk(completed.stdout)


# --------------------------------------------------------------------------- asyncio client


class Connection:
    """One keep-alive HTTP/1.1 connection; responses must carry a Content-Length."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, request: Request) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        assert self.reader is not None
        self.writer.write(request.encode(self.port))
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        length = 0
        for line in header_lines:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        body = await self.reader.readexactly(length)
        return status, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            await asyncio.gather(self.writer.wait_closed(), return_exceptions=True)
            self.writer = None


@dataclass
class Sample:
    request: Request
    status: int = 0
    body: bytes = b""
    latency_ms: float = math.nan
    error: str = ""


@dataclass
class _Pool:
    port: int
    limit: int
    idle: list[Connection] = field(default_factory=list)
    opened: int = 0
    freed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def take(self) -> Connection:
        async with self.freed:
            while not self.idle and self.opened >= self.limit:
                await self.freed.wait()
            if self.idle:
                return self.idle.pop()
            self.opened += 1
            return Connection(self.port)

    async def give_back(self, connection: Connection, healthy: bool) -> None:
        if not healthy:
            await connection.close()
        async with self.freed:
            if healthy:
                self.idle.append(connection)
            else:
                self.opened -= 1
            self.freed.notify()

    async def close(self) -> None:
        for connection in self.idle:
            await connection.close()


async def open_loop(
    port: int,
    requests: Sequence[Request],
    rate: float,
    max_connections: int = 64,
    timeout: float = 10.0,
) -> list[Sample]:
    """Send `requests` at a fixed `rate` per second whatever the server's pace.

    Each latency runs from the moment the request was *due*, so a request that waited
    for a free connection counts its wait: a slow server cannot hide its slowness by
    slowing the client down (no coordinated omission).
    """
    pool = _Pool(port, max_connections)
    samples = [Sample(request) for request in requests]
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05

    async def send(index: int, due: float) -> None:
        sample = samples[index]
        connection = await pool.take()
        healthy = False
        try:
            sample.status, sample.body = await asyncio.wait_for(
                connection.request(sample.request), timeout
            )
            healthy = True
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
            sample.error = f"{type(exc).__name__}: {exc}"
        finally:
            sample.latency_ms = (loop.time() - due) * 1000
            await pool.give_back(connection, healthy)

    tasks = []
    for index in range(len(samples)):
        due = start + index / rate
        await asyncio.sleep(max(0.0, due - loop.time()))
        tasks.append(asyncio.create_task(send(index, due)))
    await asyncio.gather(*tasks)
    await pool.close()
    return samples


async def closed_loop(
    port: int, request: Request, seconds: float, connections: int, expected_status: int
) -> LoadResult:
    """`connections` clients, each sending the next request when the last one returns."""
    latencies: list[float] = []
    unexpected = errors = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal unexpected, errors
        connection = Connection(port)
        try:
            while time.perf_counter() < deadline:
                sent = time.perf_counter()
                try:
                    status, _body = await connection.request(request)
                except (OSError, asyncio.IncompleteReadError) as exc:
                    errors += 1
                    await connection.close()
                    if isinstance(exc, ConnectionRefusedError):
                        return
                    continue
                latencies.append((time.perf_counter() - sent) * 1000)
                unexpected += status != expected_status
        finally:
            await connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    return LoadResult(
        requests=len(latencies),
        seconds=elapsed,
        p50_ms=percentile(latencies, 0.5) if latencies else math.nan,
        p99_ms=percentile(latencies, 0.99) if latencies else math.nan,
        unexpected=unexpected,
        errors=errors,
    )


def saturate(
    port: int, request: Request, seconds: float, connections: int, expected_status: int = 200
) -> LoadResult:
    """As many requests as the server takes for `seconds`: wrk if installed, else Python.

    The Python client shares the machine's cores with the server and is much slower than
    wrk, so with it the figures say more about the client; wrk is the one to trust.
    """
    if wrk_available():
        # wrk counts responses outside 2xx-3xx as unexpected, whatever `expected_status` is.
        return run_wrk(port, request, seconds, connections)
    return asyncio.run(closed_loop(port, request, seconds, connections, expected_status))
