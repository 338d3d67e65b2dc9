"""Celery beat (celery-redbeat) as its own process, with a real worker on a real Redis:
a one-second schedule runs its job again and again through the job API, two beats at
once still run each tick once, and each run's lines carry a log id of its own."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from celery.schedules import crontab
from starlette.testclient import TestClient

from {{ cookiecutter.package_name }}.factory import create_app
from {{ cookiecutter.package_name }}.jobs import celery_beat
from {{ cookiecutter.package_name }}.jobs.periodic import next_run
from {{ cookiecutter.package_name }}.jobs.schedule import (
    ScheduledJob,
    ScheduleError,
)
from tests.celery_processes import RedisServer, redis_server, running_worker
from tests.scheduled_runs import (
    EVERY_SECOND,
    assert_one_run_per_tick,
    assert_own_log_ids,
    at_least,
    queued_runs,
)
from tests.support import (
    AUTH_HEADERS,
    PACKAGE,
    SOURCE_ROOT,
    LogCapture,
    broker_env,
    json_log_lines,
    make_settings,
    messages_of,
    wait_until,
    with_source_on_path,
)


class BeatProcess:
    """`celery -A tests.scheduled_beat beat`: the service's beat with the tests'
    one-second schedule, in its own process group, logging JSON to a file."""

    def __init__(self, redis_url: str, name: str, workdir: Path, app: str) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        command = [sys.executable, "-m", "celery", "-A", app, "beat", "--loglevel", "INFO"]
        env = {
            **with_source_on_path(os.environ),
            # `tests.scheduled_beat`, from the project root, beside the service's source.
            "PYTHONPATH": os.pathsep.join([str(SOURCE_ROOT), str(SOURCE_ROOT.parent)]),
            "JOBS_BACKEND": "celery",
            "REDIS_URL": redis_url,
            **broker_env(redis_url),
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
        }
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                cwd=workdir,  # no developer `.env` in there
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def records(self) -> list[dict[str, Any]]:
        return json_log_lines(self.log_path)

    def messages(self) -> list[str]:
        return messages_of(self.records())

    def holds_the_lock(self) -> bool:
        return "beat: Acquired lock" in self.messages()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # beat releases its lock
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


@contextmanager
def running_beat(
    redis_url: str, name: str, workdir: Path, app: str = "tests.scheduled_beat"
) -> Iterator[BeatProcess]:
    beat = BeatProcess(redis_url, name, workdir, app)
    try:
        yield beat
    finally:
        beat.stop()


def test_a_one_second_schedule_runs_its_job_repeatedly_on_a_worker(
    private_redis: RedisServer, tmp_path: Path, logs: LogCapture
) -> None:
    app = create_app(make_settings(jobs_backend="celery", redis_url=private_redis.url))
    logs.install()
    with (
        running_worker(private_redis.url, "scheduled", tmp_path) as worker,
        running_beat(private_redis.url, "beat", tmp_path) as beat,
        TestClient(app, headers=AUTH_HEADERS) as client,
    ):
        runs = wait_until(at_least(4, beat.records), 30, "four scheduled runs")
        # What the image's HEALTHCHECK asks of a beat container.
        assert celery_beat.beat_lock_held(private_redis.url)
        for run in runs:

            def finished(job_id: str = run["job_id"]) -> dict[str, Any] | None:
                response = client.get(f"/jobs/{job_id}")  # the API knows it from the start
                assert response.status_code == 200, response.text
                state: dict[str, Any] = response.json()
                return state if state["status"] == "succeeded" else None

            state = wait_until(finished, 15, "the scheduled job to succeed on the worker")
            assert state["result"]["rows"] == 10
        worker_records = worker.records()
        beat.stop()
        assert not celery_beat.beat_lock_held(private_redis.url)  # released at SIGTERM
    assert_one_run_per_tick(runs)
    assert_own_log_ids(runs)
    # The worker's lines of each run carry the run's log id, from the task's headers:
    # the job's start and end, and Celery's own line for the task.
    for run in runs:
        lines = messages_of(worker_records, run["log_id"])
        assert lines[:2] == [
            f"job {run['job_id']} (build_report) started, attempt 1",
            f"job {run['job_id']} (build_report) succeeded",
        ]
        assert all(run["job_id"] in line for line in lines), lines


def test_two_beats_at_once_run_each_tick_once_and_the_second_takes_over(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    """Both start together; one takes RedBeat's lock and runs the schedule, the other
    waits and sends nothing. Stopped (SIGTERM), the first releases the lock, and the
    second takes over within BEAT_MAX_LOOP_SECONDS."""
    with (
        running_beat(private_redis.url, "beat-a", tmp_path) as beat_a,
        running_beat(private_redis.url, "beat-b", tmp_path) as beat_b,
    ):
        beats = (beat_a, beat_b)

        def all_runs() -> list[dict[str, Any]]:
            return [*beat_a.records(), *beat_b.records()]

        wait_until(at_least(5, all_runs), 30, "five scheduled runs")
        (holder,) = [beat for beat in beats if beat.holds_the_lock()]
        (standby,) = [beat for beat in beats if beat is not holder]
        assert not queued_runs(standby.records())
        holder.stop()
        stopped_at = time.time()
        wait_until(standby.holds_the_lock, celery_beat.BEAT_MAX_LOOP_SECONDS + 10, "a take-over")
        wait_until(at_least(3, standby.records), 15, "three runs of the second beat")
        took_over = min(run["at"] for run in queued_runs(standby.records())) - stopped_at
        print(f"second beat's first run {took_over:.1f}s after the first beat stopped")
        runs = queued_runs(all_runs())
    assert len(runs) >= 8
    assert_one_run_per_tick(runs)
    assert_own_log_ids(runs)


def test_beat_outlives_a_redis_restart(tmp_path: Path) -> None:
    """Redis stopped for 3 s and restarted on its data (append-only file): beat logs
    that it cannot reach Redis, keeps its lock, and runs each tick once again after."""
    with (
        redis_server(tmp_path / "redis", persistent=True) as server,
        running_beat(server.url, "beat", tmp_path) as beat,
    ):
        wait_until(at_least(2, beat.records), 30, "two scheduled runs")
        server.stop()
        time.sleep(3)
        server.start()
        back_at = time.time()

        def runs_since_redis_came_back() -> list[dict[str, Any]]:
            return [run for run in queued_runs(beat.records()) if run["at"] > back_at]

        wait_until(lambda: runs_since_redis_came_back()[2:], 20, "three runs after the restart")
        assert beat.process.poll() is None, "beat exited"
        assert any(m.startswith("beat: Redis unreachable") for m in beat.messages())
        first_run = min(run["at"] for run in runs_since_redis_came_back())
        print(f"beat's first run {first_run - back_at:.1f}s after Redis came back")
        runs = queued_runs(beat.records())
    assert_one_run_per_tick(runs)


def test_the_api_leaves_the_schedule_to_beat_on_the_celery_backend(
    redis_url: str, tmp_path: Path, logs: LogCapture
) -> None:
    app = create_app(make_settings(jobs_backend="celery", redis_url=redis_url))
    logs.install()
    app.state.schedule = (EVERY_SECOND,)
    with TestClient(app, headers=AUTH_HEADERS):
        time.sleep(2.5)
    assert not queued_runs(logs.records())
    assert any("periodic jobs: run by `celery beat`" in m for m in logs.messages())


def test_beat_refuses_to_start_for_in_process_jobs(tmp_path: Path) -> None:
    env = {**with_source_on_path(os.environ), "JOBS_BACKEND": "inprocess"}
    ran = subprocess.run(
        [sys.executable, "-c", f"import {PACKAGE}.beat"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert ran.returncode == 1
    assert ran.stderr.strip().splitlines() == [
        f"{PACKAGE}: JOBS_BACKEND is not celery: with in-process jobs the API runs the "
        "schedule itself, and celery beat has nothing to do"
    ]


def test_beat_refuses_a_cron_line_celery_cannot_read_naming_the_entry() -> None:
    entry = ScheduledJob("sundays", job="build_report", cron="0 4 * * 7")  # cron takes it
    with pytest.raises(ScheduleError, match="'sundays': Celery cannot read cron '0 4 \\* \\* 7'"):
        celery_beat.celery_schedule(entry)


@pytest.mark.parametrize(
    "cron", ["0 3 * * *", "*/15 * * * *", "30 9 * * mon-fri", "0 0 1 * *", "5 4 * * 0"]
)
def test_beat_and_the_in_process_schedule_read_cron_alike(cron: str) -> None:
    entry = ScheduledJob("cron", job="build_report", cron=cron)
    schedule = celery_beat.celery_schedule(entry)
    assert isinstance(schedule, crontab)
    at = datetime(2026, 12, 2, 14, 7, 30, tzinfo=UTC)
    for _ in range(5):
        setattr(schedule, "nowfun", lambda now=at: now)  # noqa: B010 - not in celery-types
        by_celery = at + schedule.remaining_estimate(at)
        assert by_celery == datetime.fromtimestamp(next_run(entry, at.timestamp()), UTC)
        at = by_celery + timedelta(seconds=30)
