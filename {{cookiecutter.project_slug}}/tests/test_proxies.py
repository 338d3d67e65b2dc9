"""Trusted proxies (FORWARDED_ALLOW_IPS): `X-Forwarded-For` counts only from them.

A real `uvicorn` process, as in production: its proxy-headers layer (on by default, and
in the Dockerfile's command) rewrites the client address before the app runs, so the
access line and the rate limit both see the address it settled on. A forwarded
address from anyone else is a claim any client can make, and must change nothing.
"""

import http.client
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from {{ cookiecutter.package_name }}.factory import create_app
from tests.support import (
    AUTH_HEADERS,
    LogCapture,
    ServerProcess,
    make_settings,
    uvicorn_process,
    wait_until,
)

CLIENT = "203.0.113.7"
OTHER_CLIENT = "203.0.113.8"
# Rate-limited, and open without credentials in every project: a request there counts
# against its client address.
UNAUTHENTICATED_PATH = "/openapi.json"


def get(server: ServerProcess, path: str, forwarded_for: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        headers = {"X-Forwarded-For": forwarded_for}
        if path != UNAUTHENTICATED_PATH:
            headers.update(AUTH_HEADERS)
        connection.request("GET", path, headers=headers)
        return connection.getresponse().status
    finally:
        connection.close()


def access_line(server: ServerProcess, path: str) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        lines = [r for r in server.log_records() if r.get("http", {}).get("path") == path]
        return lines[-1] if lines else None

    line: dict[str, Any] = wait_until(found, 10, f"the access line of {path}")
    return line


def test_a_trusted_proxy_reports_the_client_address(tmp_path: Path) -> None:
    settings = {"FORWARDED_ALLOW_IPS": "127.0.0.1", "RATE_LIMIT": "2/day"}
    with uvicorn_process(tmp_path, **settings) as server:
        assert get(server, "/health/live", CLIENT) == 200
        line = access_line(server, "/health/live")
        assert line["http"]["client"] == CLIENT
        assert f"client={CLIENT}" in line["message"]
        # The rate limit counts the forwarded address, not the proxy's (on a route
        # open without credentials: an authenticated client counts as its identity).
        statuses = [get(server, UNAUTHENTICATED_PATH, CLIENT) for _ in range(3)]
        assert statuses == [200, 200, 429]
        assert get(server, UNAUTHENTICATED_PATH, OTHER_CLIENT) == 200


def test_a_forwarded_address_from_an_untrusted_peer_changes_nothing(tmp_path: Path) -> None:
    settings = {"FORWARDED_ALLOW_IPS": "192.0.2.1", "RATE_LIMIT": "2/day"}
    with uvicorn_process(tmp_path, **settings) as server:
        assert get(server, "/health/live", CLIENT) == 200
        line = access_line(server, "/health/live")
        assert line["http"]["client"] == "127.0.0.1"
        assert CLIENT not in line["message"]
        # Every request counts against the real peer, whatever address it claims.
        assert get(server, UNAUTHENTICATED_PATH, CLIENT) == 200
        assert get(server, UNAUTHENTICATED_PATH, OTHER_CLIENT) == 200
        assert get(server, UNAUTHENTICATED_PATH, "198.51.100.9") == 429


def test_a_proxies_setting_only_in_env_file_is_warned_about(
    logs: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Settings read `.env`; uvicorn does not, and would trust only loopback."""
    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
    app = create_app(make_settings(forwarded_allow_ips="10.0.0.0/8"))
    logs.install()
    with TestClient(app):
        pass
    (warning,) = [m for m in logs.messages() if m.startswith("FORWARDED_ALLOW_IPS")]
    assert "uvicorn does not read" in warning
