"""The generated image and compose stack, built and run: for a Celery bake and an
in-process bake, the image builds from its uv.lock, serves `/health/live` and
`POST /reports` through a port published on loopback, runs as a non-root user and passes
its own HEALTHCHECK; the compose stack comes up, the smoke test the generated CI runs
(`scripts/smoke.py`) passes against it, a job submitted to the API is finished by a worker
container, `--scale worker=2` spreads jobs over both workers, and stopping a worker
mid-job lets the job finish.

What this proves, plainly: this machine reaches no container registry, so where
`python:3.11-slim` and `redis:7-alpine` cannot be pulled, the lane builds stand-ins for
them from Debian's packages (debootstrap bookworm: its python3 is 3.11; redis-server
without protected mode, as the official image has it) and imports them under those
names. What is proven then is the Dockerfile's own steps (uv from PyPI, `uv sync
--locked`, the non-root user, the HEALTHCHECK, the command) and the compose wiring (one
image for api and worker, Redis, ports, restart policies, stop grace period, scaling)
on a stand-in base, not the official images' contents. Where the official images can be
pulled, the lane uses them. The engine is podman (with podman-compose), not Docker.

It runs where containers can (Linux, podman as root) and skips saying why elsewhere,
unless REQUIRE_CONTAINERS=1 (set by .ci/run), which makes that a failure. Everything it
makes lives in a private podman state folder, removed at the end (tests/podman.py).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import bake, run
from podman import TIMINGS, BaseImages, Podman, base_images, unavailable_reason

PYTHON_BASE = "python:3.11-slim"  # the template's default python_version
REDIS_BASE = "redis:7-alpine"
BACKENDS = ("celery", "inprocess")
START_TIMEOUT = 90.0
JOB_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any
    headers: dict[str, str]


def call(port: int, method: str, path: str, body: Any = None) -> Answer:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json"} if data else {},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, raw, headers = response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        status, raw, headers = error.code, error.read(), dict(error.headers)
    return Answer(status, json.loads(raw) if raw else None, headers)


def wait_until_answers(port: int, path: str, timeout: float = START_TIMEOUT) -> Answer:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            answer = call(port, "GET", path)
        except OSError as error:  # not listening yet
            last = error
        else:
            if answer.status == 200:
                return answer
            last = answer
        time.sleep(0.5)
    raise AssertionError(f"GET {path} on port {port} never answered 200: {last}")


def submit_report(port: int, simulate_seconds: float) -> str:
    answer = call(port, "POST", "/reports", {"rows": 50, "simulate_seconds": simulate_seconds})
    assert answer.status == 202, answer
    assert answer.headers.get("location") or answer.headers.get("Location")
    return str(answer.body["id"])


def wait_for_status(port: int, job_id: str, wanted: set[str], timeout: float = JOB_TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    job = None
    while time.monotonic() < deadline:
        job = call(port, "GET", f"/jobs/{job_id}").body
        if job["status"] in wanted:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never reached {sorted(wanted)}: {job}")


# --------------------------------------------------------------------------- fixtures


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def podman() -> Iterator[Podman]:
    reason = unavailable_reason()
    if reason is not None:
        if os.environ.get("REQUIRE_CONTAINERS") == "1":
            pytest.fail(f"REQUIRE_CONTAINERS=1 but {reason}")
        pytest.skip(reason)
    lane = Podman.create()
    # `.ci/run` stops the lane with SIGTERM when it is interrupted: turn that into the
    # KeyboardInterrupt pytest tears fixtures down for, so nothing is left behind.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield lane
    finally:
        signal.signal(signal.SIGTERM, previous)
        started = time.monotonic()
        lane.close()
        TIMINGS["clean-up"] = time.monotonic() - started


@pytest.fixture(scope="session")
def bases(podman: Podman, request: pytest.FixtureRequest) -> BaseImages:
    cache = request.config.cache
    assert cache is not None
    found = base_images(podman, [PYTHON_BASE, REDIS_BASE], cache.mkdir("container-bases"))
    TIMINGS["base images" + (" (stand-ins)" if found.stand_in else " (pulled)")] = found.seconds
    print(f"container lane: {found.note}", file=sys.stderr)
    return found


@dataclass(frozen=True)
class Built:
    backend: str
    project: Path
    tag: str
    build_log: str


@pytest.fixture(scope="module")
def built(
    request: pytest.FixtureRequest,
    podman: Podman,
    bases: BaseImages,
    tmp_path_factory: pytest.TempPathFactory,
) -> Built:
    backend = str(request.param)
    project = bake(tmp_path_factory.mktemp(f"image-{backend}"), job_backend=backend)
    # The name compose.yaml gives the image, so that compose finds it built.
    tag = project.name
    started = time.monotonic()
    ran = podman.build(project, tag)
    TIMINGS[f"{backend}: image build (cold)"] = time.monotonic() - started
    assert ran.ok, ran.report()
    return Built(backend, project, tag, ran.output)


# --------------------------------------------------------------------------- the image


@pytest.mark.heavy(seconds=120)
@pytest.mark.parametrize("built", BACKENDS, indirect=True)
def test_image_serves_as_non_root_and_passes_its_healthcheck(podman: Podman, built: Built) -> None:
    assert "uv sync --locked" in built.build_log  # dependencies came from the lock
    port = free_port()
    name = f"api-{built.backend}"
    started = time.monotonic()
    # In-process jobs: the image runs on its own here; compose adds Redis and workers.
    podman.ok(
        "run", "--detach", "--name", name, "--publish", f"127.0.0.1:{port}:8000",
        "--env", "JOBS_BACKEND=inprocess", built.tag,
    )  # fmt: skip
    try:
        wait_until_answers(port, "/health/live")
        job_id = submit_report(port, simulate_seconds=0)
        job = wait_for_status(port, job_id, {"succeeded", "failed"})
        assert job["status"] == "succeeded", job
        assert job["result"]["rows"] == 50

        uid = podman.ok("exec", name, "id", "-u").output.strip()
        assert uid.isdigit(), uid
        assert uid != "0", "the API runs as root"
        assert podman.ok("inspect", "--format", "{{.Config.User}}", name).output.strip() == "app"

        # podman schedules no healthchecks without systemd: run the image's own check.
        checked = podman("healthcheck", "run", name, timeout=60)
        assert checked.ok, checked.report()
    finally:
        logs = podman("logs", name).output
        podman("rm", "--force", "--time", "0", name)
    TIMINGS[f"{built.backend}: API container checks"] = time.monotonic() - started
    assert "Traceback" not in logs, logs

    # The check can fail: a container of the image that serves nothing is unhealthy.
    idle = f"idle-{built.backend}"
    podman.ok("run", "--detach", "--name", idle, built.tag, "sleep", "60")
    try:
        assert not podman("healthcheck", "run", idle, timeout=60).ok
    finally:
        podman("rm", "--force", "--time", "0", idle)


# --------------------------------------------------------------------------- compose


class Stack:
    """One compose project of a bake, under a name of its own."""

    def __init__(self, podman: Podman, built: Built) -> None:
        self.podman = podman
        self.built = built
        self.name = f"lane{built.backend}"
        self.port = free_port()

    def compose(self, *args: str, timeout: float = 600.0) -> str:
        ran = self.podman.compose(
            self.built.project, self.name, *args, env={"API_PORT": str(self.port)}, timeout=timeout
        )
        assert ran.ok, ran.report()
        return ran.output

    def containers(self, service: str | None = None, *, running_only: bool = True) -> list[str]:
        """This project's containers (of one service), by name."""
        args = ["ps", "--format", "{{.Names}}"]
        if not running_only:
            args.append("--all")
        label = f"label=io.podman.compose.project={self.name}"
        listed = self.podman.ok(*args, "--filter", label)
        names = [line.strip() for line in listed.output.splitlines() if line.strip()]
        prefix = f"{self.name}_{service}_" if service else f"{self.name}_"
        return sorted(name for name in names if name.startswith(prefix))

    def inspect(self, container: str, template: str) -> str:
        return self.podman.ok("inspect", "--format", template, container).output.strip()

    def healthy(self, container: str) -> None:
        checked = self.podman("healthcheck", "run", container, timeout=60)
        assert checked.ok, f"{container} is unhealthy\n{checked.report()}"

    def smoke(self) -> None:
        """The generated CI's smoke test, run here against the published port."""
        ran = run(
            [sys.executable, "scripts/smoke.py", f"http://127.0.0.1:{self.port}"],
            cwd=self.built.project,
        )
        assert ran.ok, ran.report()


@pytest.fixture
def stack(podman: Podman, built: Built) -> Iterator[Stack]:
    up = Stack(podman, built)
    try:
        yield up
    finally:
        up.podman.compose(built.project, up.name, "down", "--volumes", timeout=600)
        # podman-compose's `down` forgets containers added by `--scale`.
        for container in up.containers(running_only=False):
            podman("rm", "--force", "--time", "0", container)


def worker_logs(stack: Stack) -> dict[str, str]:
    return {name: stack.podman("logs", name).output for name in stack.containers("worker")}


@pytest.mark.heavy(seconds=90)
@pytest.mark.parametrize("built", BACKENDS, indirect=True)
def test_compose_stack_runs_jobs(stack: Stack) -> None:
    started = time.monotonic()
    # --build: compose's own build section, cached after the image test's build.
    stack.compose("up", "--detach", "--build")
    stack.smoke()
    TIMINGS[f"{stack.built.backend}: compose up + smoke test"] = time.monotonic() - started

    services = ("api", "worker", "beat", "redis") if stack.built.backend == "celery" else ("api",)
    for service in services:
        (container,) = stack.containers(service)
        # The worker and beat run the API's image: its HEALTHCHECK must see a worker (a
        # beat holding its lock), not HTTP.
        stack.healthy(container)
        assert stack.inspect(container, "{{.HostConfig.RestartPolicy.Name}}") == "unless-stopped"
    if stack.built.backend == "inprocess":
        return

    (api,) = stack.containers("api")
    (worker,) = stack.containers("worker")
    # One image, built once, for both.
    assert stack.inspect(api, "{{.Image}}") == stack.inspect(worker, "{{.Image}}")
    job_id = submit_report(stack.port, simulate_seconds=0)
    assert wait_for_status(stack.port, job_id, {"succeeded", "failed"})["status"] == "succeeded"
    assert f"[{job_id}] succeeded" in worker_logs(stack)[worker]


@pytest.mark.heavy(seconds=90)
@pytest.mark.parametrize("built", ["celery"], indirect=True)
def test_compose_workers_share_jobs_and_finish_them_when_stopped(stack: Stack) -> None:
    stack.compose("up", "--detach")
    wait_until_answers(stack.port, "/health/ready")

    # A worker stopped mid-job finishes it first (warm shutdown within stop_grace_period).
    started = time.monotonic()
    long_job = submit_report(stack.port, simulate_seconds=6)
    wait_for_status(stack.port, long_job, {"running"})
    (worker,) = stack.containers("worker")
    stopping = time.monotonic()
    stack.compose("stop", "worker")
    stop_seconds = time.monotonic() - stopping
    job = call(stack.port, "GET", f"/jobs/{long_job}").body
    assert job["status"] == "succeeded", job
    assert stack.inspect(worker, "{{.State.ExitCode}}") == "0"
    TIMINGS["celery: worker stopped mid-job (its stop took)"] = stop_seconds
    TIMINGS["celery: stop mid-job, whole check"] = time.monotonic() - started

    # Two workers: jobs spread over both.
    started = time.monotonic()
    stack.compose("up", "--detach", "--scale", "worker=2")
    workers = stack.containers("worker")
    assert len(workers) == 2, workers
    for name in workers:
        wait = time.monotonic() + START_TIMEOUT
        while not stack.podman("healthcheck", "run", name, timeout=60).ok:
            assert time.monotonic() < wait, f"{name} never answered a ping"
            time.sleep(1)
    job_ids = [submit_report(stack.port, simulate_seconds=1.5) for _ in range(8)]
    for job_id in job_ids:
        done = wait_for_status(stack.port, job_id, {"succeeded", "failed"})
        assert done["status"] == "succeeded", done
    logs = worker_logs(stack)
    ran_by = {
        name: sum(f"[{job_id}] succeeded" in text for job_id in job_ids)
        for name, text in logs.items()
    }
    assert sum(ran_by.values()) == len(job_ids), ran_by
    assert all(count > 0 for count in ran_by.values()), f"jobs per worker: {ran_by}"
    print(f"container lane: jobs per worker {ran_by}", file=sys.stderr)
    TIMINGS["celery: scale to 2 workers, 8 jobs"] = time.monotonic() - started
