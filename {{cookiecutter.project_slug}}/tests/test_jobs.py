"""The job API, the same tests on every backend, against a real server: `TestClient`
waits for background tasks before it returns, which would hide whether the response
waited for the job."""

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx2 as httpx
import pytest
from fastapi import APIRouter, Response

from {{ cookiecutter.package_name }}.api import dependencies
from {{ cookiecutter.package_name }}.factory import create_app
from tests.support import AUTH_HEADERS, LogCapture, live_server, make_settings

JOB_BACKENDS = ["inprocess"{% if cookiecutter.job_backend != "inprocess" %}, "celery"{% endif %}]
FINAL = {"succeeded", "failed"}
# Four rows of synthetic amounts (see jobs/reports.py): 0, 7919, 5838 and 3757 cents.
FOUR_ROW_REPORT = {
    "rows": 4,
    "total_cents": 17514,
    "mean_cents": 4378.5,
    "min_cents": 0,
    "max_cents": 7919,
}


def broken_job_router() -> APIRouter:
    """Submits a job whose parameters only the job itself rejects: a job that fails."""
    router = APIRouter()

    @router.post("/test/broken-report", status_code=202)
    async def broken_report(jobs: dependencies.JobQueueDep, response: Response) -> dict[str, str]:
        job_id = await jobs.submit("build_report", {"rows": 0})
        response.headers["Location"] = f"/jobs/{job_id}"
        return {"id": job_id}

    return router


@dataclass
class JobsApi:
    http: httpx.Client
    backend: str
    # The log lines written where the job ran: this process, or the worker.
    job_log: Callable[[], list[dict[str, Any]]]

    def follow(self, job_id: str, timeout: float = 30) -> list[dict[str, Any]]:
        """Every state `GET /jobs/{id}` reports until the job ends."""
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = self.http.get(f"/jobs/{job_id}")
            assert response.status_code == 200, response.text
            seen.append(response.json())
            if seen[-1]["status"] in FINAL:
                return seen
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} did not finish in {timeout}s: {seen[-1]}")


@pytest.fixture(params=JOB_BACKENDS)
def jobs_api(request: pytest.FixtureRequest, logs: LogCapture) -> Iterator[JobsApi]:
    overrides: dict[str, Any] = {"jobs_backend": request.param}
    job_log = logs.records
    {%- if cookiecutter.job_backend != "inprocess" %}
    if request.param == "celery":
        worker = request.getfixturevalue("celery_worker")
        overrides["redis_url"] = worker.redis_url
        job_log = worker.records
    {%- endif %}
    app = create_app(make_settings(**overrides))
    logs.install()
    app.include_router(broken_job_router())
    with (
        live_server(app) as url,
        httpx.Client(base_url=url, headers=AUTH_HEADERS, timeout=10) as http,
    ):
        yield JobsApi(http, request.param, job_log)


def test_a_report_is_accepted_at_once_and_runs_to_success(jobs_api: JobsApi) -> None:
    response = jobs_api.http.post("/reports", json={"rows": 4, "simulate_seconds": 1.5})
    assert response.status_code == 202
    job = response.json()
    assert job == {"id": job["id"], "status": "queued"}
    assert response.headers["location"] == f"/jobs/{job['id']}"

    states = jobs_api.follow(job["id"])
    # The response came back while the job had most of its 1.5 s still to go.
    assert states[0]["status"] in ("queued", "running")
    statuses = [s["status"] for s in states]
    order = ["queued", "running", "succeeded"]
    assert statuses == sorted(statuses, key=order.index), statuses
    assert any(s["status"] == "running" and 0 < s["progress"] < 100 for s in states), states
    progress = [s["progress"] for s in states]
    assert progress == sorted(progress)
    assert states[-1] == {
        "id": job["id"],
        "status": "succeeded",
        "progress": 100,
        "result": FOUR_ROW_REPORT,
        "error": None,
        "retried_as": None,
    }


def test_a_failing_job_ends_failed_with_its_error_logged_with_the_request_id(
    jobs_api: JobsApi,
) -> None:
    response = jobs_api.http.post("/test/broken-report", headers={"X-Request-ID": "trace-broken"})
    assert response.status_code == 202
    job_id = response.json()["id"]
    final = jobs_api.follow(job_id)[-1]
    assert final["status"] == "failed"
    assert final["result"] is None
    assert final["error"].startswith("JobInputError:")
    assert "rows" in final["error"]
    failure_lines = [
        r for r in jobs_api.job_log() if job_id in r["message"] and r["level"] == "ERROR"
    ]
    assert failure_lines, f"no error line for job {job_id}"
    assert {r["request_id"] for r in failure_lines} == {"trace-broken"}


@pytest.mark.parametrize("job_id", ["0123456789abcdef0123456789abcdef", "not-a-job"])
def test_an_id_never_issued_is_a_404(jobs_api: JobsApi, job_id: str) -> None:
    response = jobs_api.http.get(f"/jobs/{job_id}")
    assert response.status_code == 404
    assert response.json() == {"detail": "No job with this id"}


@pytest.mark.parametrize(
    "body",
    [
        {"rows": 0},
        {"rows": -5},
        {"rows": 1_000_001},
        {"rows": "many"},
        {"simulate_seconds": 1},
        {"rows": 10, "simulate_seconds": 60.5},
        {"rows": 10, "simulate_seconds": -1},
    ],
)
def test_bad_report_parameters_are_a_422(jobs_api: JobsApi, body: dict[str, Any]) -> None:
    response = jobs_api.http.post("/reports", json=body)
    assert response.status_code == 422
    assert response.json()["detail"]


def test_the_access_log_names_the_job_the_request_queued(
    jobs_api: JobsApi, logs: LogCapture
) -> None:
    job_id = jobs_api.http.post("/reports", json={"rows": 1}).json()["id"]
    jobs_api.follow(job_id)
    access = [r for r in logs.records() if r["logger"].endswith(".access")]
    (line,) = [r for r in access if r["http"]["path"] == "/reports"]
    assert line["http"]["job_id"] == job_id
