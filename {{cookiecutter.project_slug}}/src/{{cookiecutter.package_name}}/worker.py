"""The Celery worker entry point: `celery -A <package>.worker worker`.

Run as many workers as you like, on as many machines, all with the same `REDIS_URL`.
"""

from typing import Any

from celery import signals

from .jobs import NO_JOB_EVENTS
from .jobs.celery_app import create_celery_app
from .logs import configure_logging
from .observability.errors import setup_error_reporting
from .observability.metrics import setup_worker_metrics
{%- if cookiecutter.use_opentelemetry %}
from .observability.tracing import setup_worker_tracing
{%- endif %}
from .settings import SettingsError, load_settings

try:
    settings = load_settings()
except SettingsError as error:
    raise SystemExit(f"{__package__}: {error}") from None
# At import, in the main process: the prefork pool's children inherit it, and each
# starts its own sender thread when it first reports (checked with a real worker).
setup_error_reporting(settings, celery_worker=True)
metrics = setup_worker_metrics(settings)
app = create_celery_app(settings, worker=True, events=metrics or NO_JOB_EVENTS)


@signals.setup_logging.connect
def _configure_logging(**_: Any) -> None:
    # Connecting to this signal stops Celery from configuring logging itself: the worker
    # logs in the service's format, with the request id of the task on each line.
    configure_logging(settings.log_level, settings.log_format)


@signals.worker_init.connect
def _set_up_metrics(**_: Any) -> None:
    # Before the pool forks: its processes inherit where to write their metrics.
    if metrics is not None:
        metrics.start()


@signals.worker_ready.connect
def _serve_metrics(**_: Any) -> None:
    # In the main process, once the pool runs: its children do not inherit the socket.
    if metrics is not None:
        metrics.serve()


@signals.worker_shutdown.connect
def _stop_metrics(**_: Any) -> None:
    if metrics is not None:
        metrics.close()
{%- if cookiecutter.use_opentelemetry %}


@signals.worker_process_init.connect
def _trace_jobs(**_: Any) -> None:
    # In each pool process, after the fork: the export thread and the instrumentation's
    # hooks must live where the tasks run (prefork).
    setup_worker_tracing(settings)
{%- endif %}
