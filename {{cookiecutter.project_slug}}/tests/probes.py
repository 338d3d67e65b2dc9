"""Endpoints that exist only in tests, to observe the middleware stack from inside."""

import threading
import time
from typing import Any

import anyio
from fastapi import APIRouter, BackgroundTasks, Request, Response, WebSocket

from {{ cookiecutter.package_name }}.api import dependencies
from {{ cookiecutter.package_name }}.context import request_id_var
from {{ cookiecutter.package_name }}.middleware import access_log


class Recorder:
    """What the probe endpoints and their background tasks saw, with timestamps."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str]] = []
        self.values: dict[str, Any] = {}
        self.release = threading.Event()

    def record(self, what: str, **values: Any) -> None:
        self.events.append((time.monotonic(), what))
        self.values.update(values)

    def names(self) -> list[str]:
        return [name for _, name in self.events]


def probe_router(recorder: Recorder) -> APIRouter:
    router = APIRouter(prefix="/probe")

    async def async_task() -> None:
        recorder.record("task.async", async_task_id=request_id_var.get())

    def sync_task() -> None:
        recorder.record(
            "task.sync",
            sync_task_id=request_id_var.get(),
            sync_task_thread=threading.current_thread().name,
        )

    @router.get("/async")
    async def async_endpoint(background_tasks: BackgroundTasks) -> dict[str, str | None]:
        background_tasks.add_task(async_task)
        background_tasks.add_task(sync_task)
        return {"request_id": request_id_var.get()}

    @router.get("/sync")
    def sync_endpoint() -> dict[str, str | None]:
        return {"request_id": request_id_var.get()}

    @router.get("/state")
    async def state_endpoint(request: Request) -> dict[str, str]:
        access_log.add_access_log_fields(request, probe="from-the-endpoint")
        return {"ok": "yes"}

    @router.get("/boom")
    async def boom() -> None:
        raise RuntimeError("probe failure")

    @router.get("/until-disconnect")
    async def until_disconnect(request: Request) -> dict[str, bool]:
        with anyio.move_on_after(5):
            # Polling is the point: this is how a handler notices the client left.
            while not await request.is_disconnected():  # noqa: ASYNC110
                await anyio.sleep(0.01)
            recorder.record("endpoint.saw-disconnect")
        return {"done": True}

    @router.post("/body")
    async def body_endpoint(payload: dict[str, Any]) -> dict[str, int]:
        recorder.record("endpoint.ran")
        return {"keys": len(payload)}

    @router.post("/slow-task")
    async def slow_task(background_tasks: BackgroundTasks) -> dict[str, str]:
        async def sleep_then_record() -> None:
            await anyio.sleep(recorder.values.get("task_seconds", 0.3))
            recorder.record("task.ran")

        background_tasks.add_task(sleep_then_record)
        return {"queued": "yes"}

    @router.post("/blocking-task")
    async def blocking_task(background_tasks: BackgroundTasks) -> dict[str, str]:
        def wait_for_release() -> None:
            recorder.record("task.started")
            released = recorder.release.wait(timeout=10)
            recorder.record("task.finished" if released else "task.timed-out")

        background_tasks.add_task(wait_for_release)
        return {"queued": "yes"}

    @router.websocket("/ws")
    async def websocket_endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(request_id_var.get() or "")
        await websocket.close()

    return router


def job_router() -> APIRouter:
    """Submits any registered job (the tests' own too) with the request's params, as a
    route of the service would."""
    router = APIRouter()

    @router.post("/test/jobs/{name}", status_code=202)
    async def submit(
        name: str, params: dict[str, Any], jobs: dependencies.JobQueueDep, response: Response
    ) -> dict[str, str]:
        job_id = await jobs.submit(name, params)
        response.headers["Location"] = f"/jobs/{job_id}"
        return {"id": job_id}

    return router
