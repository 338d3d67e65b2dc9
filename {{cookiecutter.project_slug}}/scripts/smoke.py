"""Smoke test of a running stack (`docker compose up`): the API is live and ready, and a
job submitted to it is finished{% if cookiecutter.job_backend != "inprocess" %} by a worker{% endif %}.

    python scripts/smoke.py [BASE_URL]        (default http://127.0.0.1:8000)

CI runs it inside the API container, where only the standard library is installed:
`docker compose exec -T api python - < scripts/smoke.py`.
{%- if cookiecutter.auth == "token" %}
The bearer token comes from `API_TOKEN` in the environment.
{%- elif cookiecutter.auth == "jwt" %}
With a token of the identity provider in `SMOKE_JWT` (scope `reports:write`) it runs a
job; without one it checks that the API refuses a request without a token.
{%- endif %}
Exit 0 when every step passed; otherwise one line says which step failed and why.
"""

import json
{%- if cookiecutter.auth != "none" %}
import os
{%- endif %}
import sys
import time
import urllib.error
import urllib.request
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8000"
START_TIMEOUT = 120.0  # a cold stack: the image starting{% if cookiecutter.job_backend != "inprocess" %}, Redis, the worker joining{% endif %}
JOB_TIMEOUT = 60.0


class SmokeError(Exception):
    """A step failed; the message says which and why."""


def call(base: str, method: str, path: str, body: Any = None) -> tuple[int, Any, dict[str, str]]:
    headers = {"Accept": "application/json"}
{%- if cookiecutter.auth != "none" %}
    token = os.environ.get("{{ "API_TOKEN" if cookiecutter.auth == "token" else "SMOKE_JWT" }}")
    if token:
        headers["Authorization"] = f"Bearer {token}"
{%- endif %}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if not base.startswith(("http://", "https://")):
        raise SmokeError(f"not an http(s) URL: {base}")
    request = urllib.request.Request(base + path, data=data, headers=headers, method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            status, raw, found = response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        status, raw, found = error.code, error.read(), dict(error.headers)
    try:
        payload = json.loads(raw) if raw else None
    except ValueError:
        payload = raw.decode(errors="replace")
    return status, payload, found


def wait_for(base: str, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            status, payload, _ = call(base, "GET", path)
        except OSError as error:  # not listening yet
            last = str(error)
        else:
            if status == 200:
                return
            last = f"{status} {payload}"
        time.sleep(1)
    raise SmokeError(f"GET {path} did not answer 200 within {timeout:.0f} s: {last}")


def run_job(base: str) -> dict[str, Any]:
    status, payload, headers = call(base, "POST", "/reports", {"rows": 100, "simulate_seconds": 0})
    if status != 202:
        raise SmokeError(f"POST /reports answered {status}: {payload}")
    location = headers.get("Location") or headers.get("location")
    if location != f"/jobs/{payload['id']}":
        raise SmokeError(f"POST /reports gave Location {location!r} for job {payload['id']}")
    deadline = time.monotonic() + JOB_TIMEOUT
    while time.monotonic() < deadline:
        status, job, _ = call(base, "GET", location)
        if status != 200:
            raise SmokeError(f"GET {location} answered {status}: {job}")
        if job["status"] == "succeeded":
            return dict(job)
        if job["status"] in ("failed", "cancelled"):
            raise SmokeError(f"job {job['id']} ended {job['status']}: {job.get('error')}")
        time.sleep(0.5)
    raise SmokeError(f"job {payload['id']} did not finish within {JOB_TIMEOUT:.0f} s")


def main(argv: list[str]) -> int:
    base = (argv[1] if len(argv) > 1 else DEFAULT_URL).rstrip("/")
    try:
        wait_for(base, "/health/live", START_TIMEOUT)
        print("live: GET /health/live answered 200")
        wait_for(base, "/health/ready", START_TIMEOUT)
        print("ready: GET /health/ready answered 200")
        {%- if cookiecutter.auth == "jwt" %}
        if not os.environ.get("SMOKE_JWT"):
            status, payload, _ = call(base, "POST", "/reports", {"rows": 1})
            if status != 401:
                raise SmokeError(f"POST /reports without a token answered {status}: {payload}")
            print("auth: POST /reports without a token answered 401 (set SMOKE_JWT to run a job)")
            return 0
        {%- endif %}
        job = run_job(base)
        print(f"job: {job['id']} succeeded with {json.dumps(job['result'])}")
    except SmokeError as error:
        print(f"smoke test failed: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
