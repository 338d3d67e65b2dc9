"""Request heads are bounded in size and in header fields, before the app sees them:
a real uvicorn process with the Dockerfile's server options, driven by raw sockets."""

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import AUTH_HEADERS, ServerProcess, uvicorn_process, wait_until

MAX_HEADER_BYTES = 16_384
MAX_HEADERS = 40
# A copy taken at import: the shared dict is handed to clients that may add to it.
AUTH_FIELDS = dict(AUTH_HEADERS)
AUTH_LINES = "".join(f"{name}: {value}\r\n" for name, value in AUTH_FIELDS.items())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with uvicorn_process(
        tmp_path_factory.mktemp("limits"),
        MAX_REQUEST_HEADER_BYTES=str(MAX_HEADER_BYTES),
        MAX_REQUEST_HEADERS=str(MAX_HEADERS),
    ) as process:
        yield process


def head(path: str = "/health/live", *lines: str, method: str = "GET") -> bytes:
    fields = "".join(f"{line}\r\n" for line in lines)
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{AUTH_LINES}{fields}".encode()


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response: status, headers, body (by Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed after {data!r}")
        data += chunk
    raw_head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = raw_head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    while len(body) < int(headers.get("content-length", "0")):
        body += sock.recv(65536)
    return int(status_line.split()[1]), headers, body


def exchange(server: ServerProcess, request: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request)
        return read_response(sock)


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_a_header_over_the_size_limit_gets_431_and_the_connection_closed(
    server: ServerProcess,
) -> None:
    cookie = "a" * MAX_HEADER_BYTES
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head("/health/live", f"Cookie: {cookie}") + b"\r\n")
        status, headers, body = read_response(sock)
        assert status == 431
        assert headers["content-type"] == "application/json"
        assert headers["connection"] == "close"
        assert "too large" in json.loads(body)["detail"]
        assert closed_by_server(sock)


def test_a_long_request_line_counts_against_the_same_limit(server: ServerProcess) -> None:
    status, _, _ = exchange(server, head("/health/live?q=" + "x" * MAX_HEADER_BYTES) + b"\r\n")
    assert status == 431


def test_more_header_fields_than_the_limit_get_431(server: ServerProcess) -> None:
    # Host (and Authorization, with auth) count too: this is one field over.
    extra = MAX_HEADERS - 1 - len(AUTH_FIELDS) + 1
    fields = [f"X-Field-{n}: {n}" for n in range(extra)]
    status, _, body = exchange(server, head("/health/live", *fields) + b"\r\n")
    assert status == 431
    assert "header fields" in json.loads(body)["detail"]


def test_requests_within_the_limits_are_served_on_a_kept_alive_connection(
    server: ServerProcess,
) -> None:
    """Just under both limits, twice on one connection (the count starts again for each
    request), then a POST whose body is far larger than the header limit: a body is
    not part of the head."""
    fields = [f"X-Field-{n}: {n}" for n in range(MAX_HEADERS - 3 - len(AUTH_FIELDS))]
    cookie = "Cookie: " + "c" * (MAX_HEADER_BYTES - 2_048)
    request = head("/health/live", cookie, *fields) + b"\r\n"
    # Padded with JSON whitespace: the model refuses unknown fields.
    payload = json.dumps({"rows": 3}).encode() + b" " * (8 * MAX_HEADER_BYTES)
    post = head(
        "/reports",
        "Content-Type: application/json",
        f"Content-Length: {len(payload)}",
        method="POST",
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        for _ in range(2):
            sock.sendall(request)
            assert read_response(sock)[0] == 200
        sock.sendall(post + b"\r\n" + payload)
        status, _, body = read_response(sock)
        assert status == 202, body
        assert json.loads(body)["status"] == "queued"


def test_memory_stays_bounded_under_a_flood_of_unfinished_large_heads(
    server: ServerProcess,
) -> None:
    """Ten connections, each sending 32 MB of one header that never ends: without the
    bound the server grew from 51 MB to 436 MB; with it each is refused at the limit."""
    assert exchange(server, head() + b"\r\n")[0] == 200  # warm: imports, first route
    before = server.rss_bytes()
    refused_after: list[int] = []

    def flood() -> None:
        chunk = b"a" * 65_536
        sent = 0
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            try:
                sock.sendall(head() + b"X-Flood: ")
                while sent < 32 * 1024 * 1024:
                    sock.sendall(chunk)
                    sent += len(chunk)
            except OSError:  # reset or broken pipe: the server closed on us
                refused_after.append(sent)
                return
            time.sleep(2)  # all sent (it should not get here): hold the connection

    threads = [threading.Thread(target=flood) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    after = server.rss_bytes()
    grown_mb = (after - before) / 1e6
    print(f"RSS {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB under the flood")
    assert len(refused_after) == 10, "a connection was allowed 32 MB of header"
    # Each was cut off within the socket buffers past the limit, far short of 32 MB.
    assert max(refused_after) < 16 * 1024 * 1024, refused_after
    assert grown_mb < 20, f"RSS grew {grown_mb:.0f} MB"
    assert exchange(server, head() + b"\r\n")[0] == 200  # and it still serves
    refusals = [m for m in server.messages() if m.startswith("431 to ")]
    assert len(refusals) >= 10


def test_the_bounded_server_does_not_warn_but_the_plain_command_does(
    server: ServerProcess, tmp_path: Path
) -> None:
    warning = "request headers have no size limit"
    assert not [m for m in server.messages() if m.startswith(warning)]
    with uvicorn_process(tmp_path, options=[]) as plain:
        wait_until(lambda: "service started" in " ".join(plain.messages()), 10, "start-up")
        assert [m for m in plain.messages() if m.startswith(warning)]
