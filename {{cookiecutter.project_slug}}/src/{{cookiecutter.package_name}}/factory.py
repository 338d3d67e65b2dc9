"""`create_app`: builds the service from its settings. Tests call it with their own."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from .api import api_router
from .api.errors import install_error_handlers
from .jobs import JobBackend, build_job_backend
from .logs import configure_logging
from .middleware import StackedFastAPI, middleware_stack
from .settings import Settings, load_settings

logger = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    backend: JobBackend = app.state.job_backend
    if backend.name == "inprocess" and settings.web_concurrency > 1:
        logger.warning(
            "in-process jobs with %d server workers: each worker keeps its own jobs, so "
            "GET /jobs/{id} can miss a job another worker runs"
            {%- if cookiecutter.job_backend == "celery" %}
            "; use JOBS_BACKEND=celery"
            {%- endif %},
            settings.web_concurrency,
        )
    for warning in await backend.warnings():
        logger.warning("%s", warning)
    logger.info("service started; heavy jobs run on the %s backend", backend.name)
    app.state.started = True
    try:
        yield
    finally:
        app.state.started = False
        await backend.aclose()
        logger.info("service stopped")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings if settings is not None else load_settings()
    configure_logging(settings.log_level, settings.log_format)
    app = StackedFastAPI(
        title="{{ cookiecutter.project_name }}",
        version="{{ cookiecutter.version }}",
        lifespan=lifespan,
        # FastAPI's own limit: 413 from Content-Length or while a chunked body streams.
        max_body_size=settings.max_request_body_bytes,
        outer_middleware=middleware_stack(settings),
    )
    app.state.settings = settings
    app.state.job_backend = build_job_backend(settings)
    install_error_handlers(app)
    app.include_router(api_router)
    return app
