"""Jobs that run on a schedule: registered jobs (`registry.py`), by name, with their
params, every so many seconds or at the times of a crontab line.

To add one, append an entry to `SCHEDULE`:

    ScheduledJob("nightly-report", job="build_report", params={"rows": 1000}, cron="0 3 * * *")
    ScheduledJob("warm-cache", job="build_report", params={"rows": 10}, every_seconds=300)

- `name`: the entry's own name, unique (letters, digits, `-`, `_`); it starts the log id
  of each run (`schedule:<name>:<12 hex digits>`, see `periodic.py`).
- `job` and `params`: what `jobs.submit(job, params)` would take from an endpoint. A run
  goes through `JobQueue.submit` like any submission: a job id, `GET /jobs/{id}`.
- `every_seconds` (1 or more) or `cron` (five fields, minute hour day-of-month month
  day-of-week, in UTC; `*/15`, `1-5`, `mon-fri` as in crontab), not both. Restrict
  day-of-month or day-of-week, not both: schedulers disagree on what that means (cron
  runs on either day, others only on days that are both).
{%- if cookiecutter.job_backend != "inprocess" %}

Who runs it: with `JOBS_BACKEND=celery`, `celery -A <package>.beat beat` (one process; a
second waits for its lock); with `inprocess`, the API process itself, once per host.
A run missed while nothing was running the schedule is not made up later.
{%- else %}

The API process runs it, once per host (`periodic.py` says how). A run missed while the
service was down is not made up later.
{%- endif %}
"""

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cronsim import CronSim, CronSimError

from ..settings import SettingsError

ENTRY_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


class ScheduleError(SettingsError):
    """An entry of the schedule is wrong; the message names it. A SettingsError, so the
    entry points stop with that one line, as for a bad setting."""


@dataclass(frozen=True)
class ScheduledJob:
    name: str
    job: str
    params: dict[str, Any] = field(default_factory=dict)
    every_seconds: float | None = None
    cron: str | None = None

    def __post_init__(self) -> None:
        if not ENTRY_NAME.fullmatch(self.name):
            raise ScheduleError(
                f"scheduled job {self.name!r}: a name is 1 to 64 letters, digits, - or _"
            )
        if (self.every_seconds is None) == (self.cron is None):
            raise ScheduleError(f"scheduled job {self.name!r}: give every_seconds or cron, one")
        if self.every_seconds is not None and not self.every_seconds >= 1:
            raise ScheduleError(f"scheduled job {self.name!r}: every_seconds must be 1 or more")
        if self.cron is not None:
            fields = self.cron.split()
            if len(fields) != 5:
                raise ScheduleError(
                    f"scheduled job {self.name!r}: cron takes five fields, minute hour "
                    "day-of-month month day-of-week"
                )
            if fields[2] != "*" and fields[4] != "*":
                # cron runs on either day; other schedulers only on a day that is both.
                raise ScheduleError(
                    f"scheduled job {self.name!r}: restrict day-of-month or day-of-week, "
                    "not both (schedulers disagree on what that means)"
                )
            try:
                CronSim(self.cron, datetime.now(UTC))
            except CronSimError as exc:
                raise ScheduleError(
                    f"scheduled job {self.name!r}: cron {self.cron!r} is not a crontab line "
                    f"(minute hour day-of-month month day-of-week): {exc}"
                ) from None


SCHEDULE: tuple[ScheduledJob, ...] = (
    # ScheduledJob("nightly-report", job="build_report", params={"rows": 1000}, cron="0 3 * * *"),
)
