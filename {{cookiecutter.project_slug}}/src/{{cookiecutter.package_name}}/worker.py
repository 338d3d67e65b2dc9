"""The Celery worker entry point: `celery -A <package>.worker worker`.

Run as many workers as you like, on as many machines, all with the same `REDIS_URL`.
"""

from typing import Any

from celery import signals

from .jobs.celery_app import create_celery_app
from .logs import configure_logging
{%- if cookiecutter.use_opentelemetry %}
from .observability.tracing import setup_worker_tracing
{%- endif %}
from .settings import SettingsError, load_settings

try:
    settings = load_settings()
except SettingsError as error:
    raise SystemExit(f"{__package__}: {error}") from None
app = create_celery_app(settings, worker=True)


@signals.setup_logging.connect
def _configure_logging(**_: Any) -> None:
    # Connecting to this signal stops Celery from configuring logging itself: the worker
    # logs in the service's format, with the request id of the task on each line.
    configure_logging(settings.log_level, settings.log_format)
{%- if cookiecutter.use_opentelemetry %}


@signals.worker_process_init.connect
def _trace_jobs(**_: Any) -> None:
    # In each pool process, after the fork: the export thread and the instrumentation's
    # hooks must live where the tasks run (prefork).
    setup_worker_tracing(settings)
{%- endif %}
