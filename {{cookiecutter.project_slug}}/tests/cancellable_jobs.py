"""Jobs for the cancel tests, registered on import{% if cookiecutter.job_backend != "inprocess" %}: by the tests, and by a worker
started with `--include tests.cancellable_jobs`{% endif %}."""

import time
from pathlib import Path
from typing import Any

from {{ cookiecutter.package_name }}.jobs import models, registry

# A report every tenth of a second: a cancel stops the job within about that.
TICK_SECONDS = 0.1


def tidy(params: dict[str, Any], report_progress: models.ProgressReporter) -> dict[str, Any]:
    """Runs `params["seconds"]`, reporting progress each tick; when cancelled, writes
    `params["marker"]` (its clean-up) and re-raises, as a job that holds resources does."""
    ticks = int(params["seconds"] / TICK_SECONDS)
    try:
        for tick in range(ticks):
            time.sleep(TICK_SECONDS)
            report_progress(tick * 100 // ticks)
    except models.JobCancelledError:
        Path(params["marker"]).write_text("cleaned up")
        raise
    return {"ticks": ticks}


def stubborn(params: dict[str, Any], report_progress: models.ProgressReporter) -> dict[str, Any]:
    """Sleeps `params["seconds"]` without a progress report: it never sees a cancel."""
    time.sleep(params["seconds"])
    return {"slept": params["seconds"]}


def flaky_when_cancelled(
    params: dict[str, Any], report_progress: models.ProgressReporter
) -> dict[str, Any]:
    """Like `tidy`, but it turns its cancel into a transient error, worth a retry."""
    ticks = int(params["seconds"] / TICK_SECONDS)
    try:
        for tick in range(ticks):
            time.sleep(TICK_SECONDS)
            report_progress(tick * 100 // ticks)
    except models.JobCancelledError as exc:
        raise models.TransientJobError("the downstream service went away") from exc
    return {"ticks": ticks}


registry.JOBS.update(tidy=tidy, stubborn=stubborn, flaky_when_cancelled=flaky_when_cancelled)
