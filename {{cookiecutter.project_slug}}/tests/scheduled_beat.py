"""Celery beat with a one-second schedule of its own, for the tests that run it
(`celery -A tests.scheduled_beat beat`): the service's beat, another schedule."""

from {{ cookiecutter.package_name }}.beat import app
from {{ cookiecutter.package_name }}.jobs.celery_beat import (
    beat_schedule,
)
from tests.scheduled_runs import EVERY_SECOND

app.conf.beat_schedule = beat_schedule((EVERY_SECOND,))

__all__ = ["app"]
