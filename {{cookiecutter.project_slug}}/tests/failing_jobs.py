"""Jobs that fail, for the error-reporting tests, registered on import{% if cookiecutter.job_backend != "inprocess" %}: by the tests,
and by a worker started with `--include tests.failing_jobs`{% endif %}."""

from pathlib import Path
from typing import Any

from {{ cookiecutter.package_name }}.jobs import models, registry


def explode(params: dict[str, Any], report_progress: models.ProgressReporter) -> dict[str, Any]:
    raise RuntimeError("the job broke")


def fails_once(params: dict[str, Any], report_progress: models.ProgressReporter) -> dict[str, Any]:
    """A transient failure on the first attempt (`params["marker"]`, a file, says whether
    it was made), then success: what a retry is for."""
    marker = Path(params["marker"])
    if not marker.exists():
        marker.touch()
        raise models.TransientJobError("the first attempt fails")
    return {"attempts": 2}


registry.JOBS.update(explode=explode, fails_once=fails_once)
