"""The in-process backend's lifecycle: shutdown, the store's bounds, its stated limits."""

import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import anyio.to_thread
import httpx2 as httpx
import pytest
from fastapi import FastAPI

from {{ cookiecutter.package_name }}.factory import create_app
from {{ cookiecutter.package_name }}.jobs import (
    JobRequest,
    JobStatus,
    build_job_backend,
)
from {{ cookiecutter.package_name }}.jobs.inprocess import (
    NOT_JSON,
    NOT_STARTED_AT_SHUTDOWN,
    InMemoryJobStore,
    InProcessBackend,
)
from tests.asgi import run_lifespan
from tests.support import (
    AUTH_HEADERS,
    BOUNDED_HTTP,
    LogCapture,
    ServerProcess,
    live_server,
    make_settings,
    uvicorn_process,
    wait_until,
)

GRACEFUL = ["--timeout-graceful-shutdown", "20"]


def submit_reports(server: ServerProcess, count: int, simulate_seconds: float) -> list[str]:
    body = {"rows": 4, "simulate_seconds": simulate_seconds}
    with httpx.Client(base_url=server.url, headers=AUTH_HEADERS, timeout=10) as http:
        return [http.post("/reports", json=body).json()["id"] for _ in range(count)]


def job_status(server: ServerProcess, job_id: str) -> str:
    response = httpx.get(f"{server.url}/jobs/{job_id}", headers=AUTH_HEADERS, timeout=10)
    status: str = response.json()["status"]
    return status


def test_at_sigterm_the_running_job_finishes_and_queued_ones_never_start(
    tmp_path: Path,
) -> None:
    """A real `uvicorn <package>.main:app` process, one job running and three queued
    behind it, then SIGTERM: the running one gets the graceful timeout and succeeds;
    the queued ones are failed at the signal, saying why, and never start (before, they
    all started after the signal and shutdown waited for every one)."""
    with uvicorn_process(
        tmp_path, [*BOUNDED_HTTP, *GRACEFUL], INPROCESS_JOB_CONCURRENCY="1"
    ) as server:
        running, *queued = submit_reports(server, 4, simulate_seconds=3)
        wait_until(lambda: job_status(server, running) == "running", 10, "the first job")
        assert {job_status(server, job_id) for job_id in queued} == {"queued"}
        server.process.send_signal(signal.SIGTERM)
        # After its graceful shutdown uvicorn re-raises the signal it caught, so the
        # process ends "killed by SIGTERM"; the log shows what happened.
        assert server.process.wait(timeout=30) in (0, -signal.SIGTERM)
        messages = server.messages()
    assert f"job {running} (build_report) succeeded" in messages
    for job_id in queued:
        assert f"job {job_id} failed: {NOT_STARTED_AT_SHUTDOWN}" in messages
        assert f"job {job_id} (build_report) started" not in messages
    assert "shutting down: 3 queued job(s) will not start" in messages
    assert messages.index(f"job {running} (build_report) succeeded") < messages.index(
        "service stopped"
    )


def test_a_second_sigterm_stops_the_server_at_once(tmp_path: Path) -> None:
    """A 30 s job and a 20 s graceful timeout: the first SIGTERM starts the wait, the
    second ends the process there and then, by that signal (uvicorn alone ignores it)."""
    with uvicorn_process(tmp_path, [*BOUNDED_HTTP, *GRACEFUL]) as server:
        (job_id,) = submit_reports(server, 1, simulate_seconds=30)
        wait_until(lambda: job_status(server, job_id) == "running", 10, "the job to start")
        server.process.send_signal(signal.SIGTERM)
        wait_until(
            lambda: any(m.startswith("SIGTERM received") for m in server.messages()),
            10,
            "the first signal to be logged",
        )
        server.process.send_signal(signal.SIGTERM)
        # Far less than the job's 30 s or the graceful 20 s: it did not wait for either.
        assert server.process.wait(timeout=10) == -signal.SIGTERM
        messages = server.messages()
    assert "second stop signal (SIGTERM): stopping now" in messages
    assert f"job {job_id} (build_report) succeeded" not in messages


def test_jobs_submitted_during_shutdown_get_503() -> None:
    """Once the queued jobs are failed, a submission on a connection still open gets
    503 (retry elsewhere or later), not a job that would never run."""
    backend = InProcessBackend()
    backend.begin_shutdown()
    app: FastAPI = create_app(make_settings())
    app.state.job_backend = backend
    with (
        live_server(app) as url,
        httpx.Client(base_url=url, headers=AUTH_HEADERS, timeout=10) as http,
    ):
        response = http.post("/reports", json={"rows": 2})
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/json"


@pytest.mark.anyio
async def test_shutdown_fails_queued_jobs_in_the_store_and_lets_running_ones_end() -> None:
    """What `GET /jobs/{id}` shows after the stop signal: queued jobs failed with the
    reason, the running one going on to succeed."""
    backend = InProcessBackend(concurrency=1)
    jobs = [
        JobRequest(id=f"job-{n}", name="build_report", params={"rows": 4, "simulate_seconds": 1})
        for n in range(3)
    ]
    async with anyio.create_task_group() as tasks:

        def after_response(run: Callable[[], Awaitable[None]]) -> None:
            async def job_task() -> None:
                await run()

            tasks.start_soon(job_task)

        for job in jobs:
            await backend.submit(job, after_response)

        async def state(job_id: str) -> JobStatus | None:
            found = await backend.get(job_id)
            return found.status if found else None

        with anyio.fail_after(10):
            while True:
                if await state("job-0") is JobStatus.RUNNING:
                    break
                await anyio.sleep(0.02)
        backend.begin_shutdown()
        for job_id in ("job-1", "job-2"):
            failed = await backend.get(job_id)
            assert failed is not None
            assert (failed.status, failed.error) == (JobStatus.FAILED, NOT_STARTED_AT_SHUTDOWN)
    assert await state("job-0") is JobStatus.SUCCEEDED
    assert [await state(job_id) for job_id in ("job-1", "job-2")] == [JobStatus.FAILED] * 2


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def finish(store: InMemoryJobStore, job_id: str) -> None:
    store.add(job_id)
    assert store.start_if_queued(job_id)
    store.update(job_id, status=JobStatus.SUCCEEDED, progress=100, result={"ok": True})


def test_finished_jobs_stay_readable_for_the_retention_time_then_go() -> None:
    clock = FakeClock()
    store = InMemoryJobStore(max_finished=100, retention_seconds=60, clock=clock)
    finish(store, "early")
    clock.now += 30
    finish(store, "later")
    clock.now += 29
    assert store.get("early") is not None
    clock.now += 2  # "early" ended 61 s ago, "later" 31 s ago
    assert store.get("early") is None
    later = store.get("later")
    assert later is not None
    assert later.status is JobStatus.SUCCEEDED


def test_a_burst_of_submissions_does_not_evict_a_job_that_just_finished() -> None:
    """The store once counted queued jobs against its bound: under a burst, a job that
    had just finished was forgotten before its client polled. Only finished jobs count
    now, and the oldest finished go first when there are too many."""
    store = InMemoryJobStore(max_finished=3, retention_seconds=3_600, clock=FakeClock())
    finish(store, "first")
    for n in range(50):
        store.add(f"queued-{n}")
    assert store.get("first") is not None
    assert len(store) == 51
    for n in range(3):
        finish(store, f"next-{n}")
    assert store.get("first") is None  # the fourth finished job pushed out the oldest
    assert all(store.get(f"next-{n}") is not None for n in range(3))
    assert all(store.get(f"queued-{n}") is not None for n in range(50))


def test_twenty_thousand_jobs_leave_no_more_than_the_default_bound_in_memory() -> None:
    """What bench/run.py part 6 measures as RSS, counted: the default bound holds after
    20,000 jobs, the newest stay readable with their results, the oldest are gone."""
    backend = build_job_backend(make_settings())
    assert isinstance(backend, InProcessBackend)
    store = backend.store
    bound = store.max_finished
    assert bound == 5_000  # the README's default: 2.1 MB for the example job
    for n in range(20_000):
        finish(store, f"job-{n}")
    assert len(store) == bound
    assert store.get("job-0") is None
    assert store.get(f"job-{19_999 - bound}") is None
    newest = [store.get(f"job-{n}") for n in range(20_000 - bound, 20_000)]
    assert all(state is not None and state.result == {"ok": True} for state in newest)


def test_a_finished_job_reads_back_as_it_ended() -> None:
    store = InMemoryJobStore()
    result = {"rows": 3, "mean_cents": 12.5, "labels": ["a", "b"], "nested": {"x": None}}
    store.add("job")
    assert store.start_if_queued("job")
    store.update("job", progress=40)
    store.update("job", status=JobStatus.SUCCEEDED, progress=100, result=result)
    state = store.get("job")
    assert state is not None
    assert state.model_dump() == {
        "id": "job", "status": JobStatus.SUCCEEDED, "progress": 100, "result": result,
        "error": None, "retried_as": None,
    }  # fmt: skip
    store.update("job", status=JobStatus.FAILED, error="late")  # an ended job stays ended
    assert store.get("job") == state


def test_a_job_whose_result_is_not_json_fails_saying_so() -> None:
    """Kept as it was, it would make every GET /jobs/{id} of it a 500."""
    store = InMemoryJobStore()
    store.add("job")
    assert store.start_if_queued("job")
    store.update("job", status=JobStatus.SUCCEEDED, progress=100, result={"at": object()})
    state = store.get("job")
    assert state is not None
    assert (state.status, state.result, state.error) == (JobStatus.FAILED, None, NOT_JSON)


def test_the_retention_and_bound_come_from_the_settings() -> None:
    backend = build_job_backend(
        make_settings(job_retention_seconds=120, inprocess_max_finished_jobs=7)
    )
    assert isinstance(backend, InProcessBackend)
    assert (backend.store.retention_seconds, backend.store.max_finished) == (120, 7)


@pytest.mark.anyio
async def test_several_server_workers_are_warned_about_at_start_up(logs: LogCapture) -> None:
    app: FastAPI = create_app(make_settings(web_concurrency=4))
    logs.install()

    async def nothing() -> None:
        return None

    await run_lifespan(app, nothing)
    (warning,) = [r for r in logs.records() if r["level"] == "WARNING"]
    assert warning["message"].startswith("in-process jobs with 4 server workers")


def test_jobs_wait_for_a_slot_of_their_own_and_leave_the_threadpool_free() -> None:
    """Jobs beyond `INPROCESS_JOB_CONCURRENCY` wait, queued; running ones take no thread
    from the pool that sync endpoints and dependencies need, so a burst of long jobs
    cannot hold requests up."""
    app: FastAPI = create_app(make_settings(inprocess_job_concurrency=1))

    @app.get("/test/threadpool")
    async def threadpool() -> dict[str, float]:
        return {"borrowed": anyio.to_thread.current_default_thread_limiter().borrowed_tokens}

    with (
        live_server(app) as url,
        httpx.Client(base_url=url, headers=AUTH_HEADERS, timeout=10) as http,
    ):
        body = {"rows": 4, "simulate_seconds": 1.5}
        first, second = (http.post("/reports", json=body).json()["id"] for _ in range(2))

        def status(job_id: str) -> str:
            state: str = http.get(f"/jobs/{job_id}").json()["status"]
            return state

        wait_until(lambda: status(first) == "running", 5, "the first job to start")
        assert status(second) == "queued"
        assert http.get("/test/threadpool").json() == {"borrowed": 0}
        wait_until(lambda: status(second) == "succeeded", 10, "the second job to end")
        assert status(first) == "succeeded"
