"""`create_app`: builds the service from its settings. Tests call it with their own."""

import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from .api import add_service_routes
from .api.errors import install_error_handlers
from .jobs import JobBackend, build_job_backend
from .jobs.periodic import InProcessSchedule, check_schedule
from .jobs.schedule import SCHEDULE, ScheduledJob
from .logs import configure_logging
from .middleware import StackedFastAPI, middleware_stack
from .observability.errors import setup_error_reporting
from .observability.metrics import setup_metrics
{%- if cookiecutter.use_opentelemetry %}
from .observability.tracing import setup_tracing
{%- endif %}
from .settings import Settings, load_settings
from .stop_signals import on_stop_signals

logger = logging.getLogger(__name__)

BOUNDED_PROTOCOL_MODULE = f"{__package__}.http_protocol"


def warn_if_request_heads_are_unbounded() -> None:
    """uvicorn's default parser takes headers of any size; the bounded protocol is a
    `--http` option, so a plain `uvicorn <package>.main:app` is warned about."""
    command = Path(sys.argv[0])  # `uvicorn ...`, or `python -m uvicorn` (.../uvicorn/__main__.py)
    started_by_uvicorn = "uvicorn" in (command.name, command.parent.name)
    if started_by_uvicorn and BOUNDED_PROTOCOL_MODULE not in sys.modules:
        logger.warning(
            "request headers have no size limit: serve with --http "
            "%s:BoundedHttpToolsProtocol (as the Dockerfile does), or behind a proxy "
            "that limits them",
            BOUNDED_PROTOCOL_MODULE,
        )


# CORS, rate limits, proxies (issue 11)
def warn_if_proxies_setting_is_unread(settings: Settings) -> None:
    """uvicorn reads FORWARDED_ALLOW_IPS from the environment only: a value that came
    from `.env` is checked by the settings but never used."""
    uvicorn_default = Settings.model_fields["forwarded_allow_ips"].default
    from_env_file = "FORWARDED_ALLOW_IPS" not in os.environ
    if from_env_file and settings.forwarded_allow_ips != uvicorn_default:
        logger.warning(
            "FORWARDED_ALLOW_IPS is set in .env, which uvicorn does not read: set it in "
            "the environment (compose.yaml passes .env on) or uvicorn trusts only %s",
            uvicorn_default,
        )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    backend: JobBackend = app.state.job_backend
    if backend.name == "inprocess" and settings.web_concurrency > 1:
        logger.warning(
            "in-process jobs with %d server workers: each worker keeps its own jobs, so "
            "GET /jobs/{id} can miss a job another worker runs"
            {%- if cookiecutter.job_backend != "inprocess" %}
            "; use JOBS_BACKEND=celery"
            {%- endif %},
            settings.web_concurrency,
        )
    for warning in await backend.warnings():
        logger.warning("%s", warning)
    warn_if_request_heads_are_unbounded()
    warn_if_proxies_setting_is_unread(settings)
    logger.info("service started; heavy jobs run on the %s backend", backend.name)
    # Periodic jobs: in-process, this process runs them (once per host)
    {%- if cookiecutter.job_backend != "inprocess" %}; on Celery,
    # `celery beat` does, and the API has nothing to do
    {%- endif %}.
    schedule: tuple[ScheduledJob, ...] = app.state.schedule if backend.name == "inprocess" else ()
    {%- if cookiecutter.job_backend != "inprocess" %}
    if app.state.schedule and not schedule:
        logger.info("periodic jobs: run by `celery beat` (%s.beat), not here", __package__)
    {%- endif %}
    periodic = InProcessSchedule(schedule, backend, settings.schedule_lock_file)

    def stop_taking_jobs() -> None:
        periodic.begin_shutdown()
        backend.begin_shutdown()

    app.state.started = True
    try:
        # In-process: queued jobs must not start while the server drains, nor new runs.
        with on_stop_signals(stop_taking_jobs):
            async with periodic.running():
                yield
    finally:
        app.state.started = False
        await backend.aclose()
        logger.info("service stopped")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings if settings is not None else load_settings()
    configure_logging(settings.log_level, settings.log_format)
    # Before the app and its middleware exist: sentry_sdk instruments Starlette's classes.
    setup_error_reporting(settings)
    metrics = setup_metrics(settings)
    {%- if cookiecutter.use_opentelemetry %}
    setup_tracing(settings)
    {%- endif %}
    app = StackedFastAPI(
        title="{{ cookiecutter.project_name }}",
        version="{{ cookiecutter.version }}",
        lifespan=lifespan,
        # DOCS_ENABLED=false: without the document FastAPI serves none of the docs pages.
        openapi_url="/openapi.json" if settings.docs_enabled else None,
        # No `max_body_size`: the edge layer limits bodies, for less (middleware/body_limit.py).
        outer_middleware=middleware_stack(settings, metrics),
        {%- if cookiecutter.use_opentelemetry %}
        # FastAPI's own tracing would add a second server span for every request: the
        # stack's tracing layer makes it (middleware/tracing.py).
        telemetry={"tracing": False},
        {%- endif %}
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.job_backend = build_job_backend(settings, metrics.jobs)
    # Checked here, so that a bad entry stops start-up with one line (a SettingsError);
    # tests may put a schedule of their own here before the lifespan starts.
    check_schedule(SCHEDULE)
    app.state.schedule = SCHEDULE
    install_error_handlers(app)
    add_service_routes(app)
    return app
