"""Reading the runs of the tests' one-second schedule (`every-second`) from JSON log
lines, for the tests of the schedule{% if cookiecutter.job_backend != "inprocess" %}, in-process and on Celery beat{% endif %}."""

import re
from collections.abc import Callable
from datetime import datetime
from itertools import pairwise
from typing import Any

from {{ cookiecutter.package_name }}.jobs.schedule import (
    ScheduledJob,
)

EVERY_SECOND = ScheduledJob(
    "every-second", job="build_report", params={"rows": 10}, every_seconds=1
)
LOG_ID = re.compile(r"schedule:every-second:[0-9a-f]{12}")
QUEUED = re.compile(r"scheduled every-second: job (?P<job_id>[0-9a-f]{32}) \(build_report\) queued")

Records = Callable[[], list[dict[str, Any]]]


def queued_runs(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs in these log lines: job id, log id and when it was queued."""
    runs = []
    for record in records:
        if match := QUEUED.fullmatch(record.get("message", "")):
            runs.append(
                {
                    "job_id": match["job_id"],
                    "log_id": record["request_id"],
                    "at": datetime.fromisoformat(record["time"]).timestamp(),
                }
            )
    return runs


def at_least(count: int, records: Records) -> Callable[[], list[dict[str, Any]] | None]:
    """A condition for `wait_until`: the runs, once there are `count` of them."""

    def enough() -> list[dict[str, Any]] | None:
        runs = queued_runs(records())
        return runs if len(runs) >= count else None

    return enough


def assert_one_run_per_tick(runs: list[dict[str, Any]]) -> None:
    """A one-second schedule run once per tick: no two runs within half a second."""
    times = sorted(run["at"] for run in runs)
    gaps = [round(later - earlier, 3) for earlier, later in pairwise(times)]
    assert all(gap > 0.5 for gap in gaps), f"runs closer than a tick: {gaps}"


def assert_own_log_ids(runs: list[dict[str, Any]]) -> None:
    log_ids = [run["log_id"] for run in runs]
    assert all(LOG_ID.fullmatch(log_id) for log_id in log_ids), log_ids
    assert len(set(log_ids)) == len(log_ids), log_ids
