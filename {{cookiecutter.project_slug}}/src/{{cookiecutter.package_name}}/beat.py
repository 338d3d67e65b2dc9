"""The Celery beat entry point: `celery -A <package>.beat beat` runs the schedule of
`jobs/schedule.py` (see `jobs/celery_beat.py`).

Run one. A second one started by mistake waits for the first one's lock in Redis and
sends nothing, so no run is doubled; it takes over when the first one stops.
"""

from typing import Any

from celery import signals

from .jobs.celery_app import create_celery_app
from .jobs.celery_beat import beat_config
from .jobs.periodic import check_schedule
from .jobs.schedule import SCHEDULE
from .logs import configure_logging
from .settings import SettingsError, load_settings

try:
    settings = load_settings()
    if settings.jobs_backend != "celery":
        raise SettingsError(
            "JOBS_BACKEND is not celery: with in-process jobs the API runs the schedule "
            "itself, and celery beat has nothing to do"
        )
    check_schedule(SCHEDULE)
    app = create_celery_app(settings)
    app.conf.update(beat_config(settings, SCHEDULE))
except SettingsError as error:
    raise SystemExit(f"{__package__}: {error}") from None


@signals.setup_logging.connect
def _configure_logging(**_: Any) -> None:
    # Beat logs in the service's format, each run's lines with the run's log id.
    configure_logging(settings.log_level, settings.log_format)
