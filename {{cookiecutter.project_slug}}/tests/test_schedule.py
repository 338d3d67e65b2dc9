"""Periodic jobs run by the service itself, on the in-process backend: each run goes
through the job API (an id, `GET /jobs/{id}`), carries a log id of its own, and with
several server workers on one host only one of them runs the schedule."""

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from {{ cookiecutter.package_name }}.factory import create_app
from {{ cookiecutter.package_name }}.jobs import periodic
from {{ cookiecutter.package_name }}.jobs.periodic import (
    check_schedule,
    next_run,
)
from {{ cookiecutter.package_name }}.jobs.schedule import (
    ScheduledJob,
    ScheduleError,
)
from {{ cookiecutter.package_name }}.settings import SettingsError
from tests.scheduled_runs import (
    EVERY_SECOND,
    assert_one_run_per_tick,
    assert_own_log_ids,
    at_least,
    queued_runs,
)
from tests.support import (
    AUTH_ENV,
    AUTH_HEADERS,
    SOURCE_ROOT,
    LogCapture,
    free_port,
    json_log_lines,
    make_settings,
    messages_of,
    wait_until,
    with_source_on_path,
)


def test_a_one_second_schedule_runs_its_job_repeatedly_through_the_job_api(
    tmp_path: Path, logs: LogCapture
) -> None:
    app = create_app(make_settings(schedule_lock_file=tmp_path / "schedule.lock"))
    logs.install()
    app.state.schedule = (EVERY_SECOND,)
    with TestClient(app, headers=AUTH_HEADERS) as client:
        runs = wait_until(at_least(3, logs.records), 10, "three scheduled runs")
        for run in runs:

            def finished(job_id: str = run["job_id"]) -> dict[str, Any] | None:
                response = client.get(f"/jobs/{job_id}")
                assert response.status_code == 200, response.text
                state: dict[str, Any] = response.json()
                return state if state["status"] == "succeeded" else None

            assert wait_until(finished, 10, "the scheduled job to succeed")["result"]["rows"] == 10
    assert_one_run_per_tick(runs)
    # Each run's lines carry its own log id: the queued line, the job's start and end.
    assert_own_log_ids(runs)
    for run in runs:
        assert sorted(logs.messages(run["log_id"])) == [
            f"job {run['job_id']} (build_report) started",
            f"job {run['job_id']} (build_report) succeeded",
            f"scheduled every-second: job {run['job_id']} (build_report) queued",
        ]


def test_an_empty_schedule_runs_nothing_and_holds_no_lock(tmp_path: Path, logs: LogCapture) -> None:
    lock = tmp_path / "schedule.lock"
    app = create_app(make_settings(schedule_lock_file=lock))
    logs.install()
    assert app.state.schedule == ()  # the template's schedule: its one example is a comment
    with TestClient(app, headers=AUTH_HEADERS):
        time.sleep(1.5)
    assert not [m for m in logs.messages() if "periodic jobs" in m or "scheduled " in m]
    assert not lock.exists()


class ServedWithWorkers:
    """`uvicorn tests.scheduled_app:app --workers 2`: real server worker processes, each
    with the app and its one-second schedule, sharing one lock file."""

    def __init__(self, tmp_path: Path, lock: Path) -> None:
        self.log_path = tmp_path / "server.log"
        command = [
            sys.executable, "-m", "uvicorn", "tests.scheduled_app:app", "--workers", "2",
            "--host", "127.0.0.1", "--port", str(free_port()),
        ]  # fmt: skip
        env = {
            **with_source_on_path(os.environ),
            # `tests.scheduled_app`, from the project root, beside the service's source.
            "PYTHONPATH": os.pathsep.join([str(SOURCE_ROOT), str(SOURCE_ROOT.parent)]),
            "JOBS_BACKEND": "inprocess",
            "LOG_FORMAT": "json",
            "SCHEDULE_LOCK_FILE": str(lock),
            **AUTH_ENV,
        }
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, cwd=tmp_path, env=env, stdout=log, stderr=log, start_new_session=True
            )

    def records(self) -> list[dict[str, Any]]:
        return json_log_lines(self.log_path)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


def test_with_two_server_workers_one_runs_the_schedule_and_the_other_takes_over(
    tmp_path: Path,
) -> None:
    """The flock keeps the schedule to one process of the host; when that process dies
    (SIGKILL: no clean-up runs), the kernel drops its lock and the other worker takes
    over within LOCK_RETRY_SECONDS."""
    lock = tmp_path / "schedule.lock"
    server = ServedWithWorkers(tmp_path, lock)
    try:
        wait_until(at_least(4, server.records), 30, "four scheduled runs")
        messages = messages_of(server.records())
        assert len([m for m in messages if "runs the schedule: every-second" in m]) == 1
        assert len([m for m in messages if m.endswith("this one stands by")]) == 1
        holder = int(lock.read_text())
        os.kill(holder, signal.SIGKILL)
        killed_at = time.time()

        def taken_over() -> bool:
            return any(
                "runs the schedule: every-second" in m and f"({holder})" not in m
                for m in messages_of(server.records())
            )

        wait_until(taken_over, periodic.LOCK_RETRY_SECONDS + 10, "another worker to take over")
        runs_after = wait_until(
            lambda: [r for r in queued_runs(server.records()) if r["at"] > killed_at][2:] or None,
            periodic.LOCK_RETRY_SECONDS + 15,
            "three runs after the take-over",
        )
        first_after = min(r["at"] for r in queued_runs(server.records()) if r["at"] > killed_at)
        print(f"schedule taken over {first_after - killed_at:.1f}s after its holder was killed")
        assert runs_after
        assert int(lock.read_text()) != holder
    finally:
        server.stop()  # SIGTERM: the schedule stops with the first signal
    assert_one_run_per_tick(queued_runs(server.records()))
    assert server.process.returncode == 0
    assert not [m for m in messages_of(server.records()) if "not queued" in m]


def test_a_bad_entry_stops_start_up_with_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ScheduleError, match="'twice': give every_seconds or cron, one"):
        ScheduledJob("twice", job="build_report", every_seconds=60, cron="* * * * *")
    with pytest.raises(ScheduleError, match="'hourly': cron '61 \\* \\* \\* \\*' is not"):
        ScheduledJob("hourly", job="build_report", cron="61 * * * *")
    with pytest.raises(ScheduleError, match="'fast': every_seconds must be 1 or more"):
        ScheduledJob("fast", job="build_report", every_seconds=0.1)
    with pytest.raises(ScheduleError, match="'friday-13th': restrict day-of-month or day-of-week"):
        ScheduledJob("friday-13th", job="build_report", cron="0 12 13 * fri")
    with pytest.raises(ScheduleError, match="'daily': cron takes five fields"):
        ScheduledJob("daily", job="build_report", cron="@daily")
    with pytest.raises(ScheduleError, match="a name is 1 to 64 letters"):
        ScheduledJob("no spaces", job="build_report", every_seconds=60)
    with pytest.raises(ScheduleError, match="'typo': no job 'build_reprot' in the registry"):
        check_schedule([ScheduledJob("typo", job="build_reprot", every_seconds=60)])
    with pytest.raises(ScheduleError, match="'a': two entries have this name"):
        check_schedule([ScheduledJob("a", job="build_report", every_seconds=5)] * 2)
    # At start-up, the error is a SettingsError: main.py stops with its one line.
    monkeypatch.setattr(
        "{{ cookiecutter.package_name }}.factory.SCHEDULE",
        (ScheduledJob("typo", job="build_reprot", every_seconds=60),),
    )
    with pytest.raises(SettingsError, match="scheduled job 'typo'"):
        create_app(make_settings())


@pytest.mark.parametrize(
    ("cron", "after", "expected"),
    [
        ("0 3 * * *", "2026-12-02T14:07:00", "2026-12-03T03:00:00"),
        ("*/15 * * * *", "2026-12-02T14:07:30", "2026-12-02T14:15:00"),
        ("*/15 * * * *", "2026-12-02T14:15:00", "2026-12-02T14:30:00"),  # strictly after
        ("30 9 * * mon-fri", "2026-12-04T10:00:00", "2026-12-07T09:30:00"),  # Friday to Monday
    ],
)
def test_cron_entries_run_at_their_times_in_utc(cron: str, after: str, expected: str) -> None:
    entry = ScheduledJob("cron", job="build_report", cron=cron)
    start = datetime.fromisoformat(after).replace(tzinfo=UTC).timestamp()
    assert datetime.fromtimestamp(next_run(entry, start), UTC) == datetime.fromisoformat(
        expected
    ).replace(tzinfo=UTC)
