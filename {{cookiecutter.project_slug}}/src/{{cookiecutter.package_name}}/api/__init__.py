"""HTTP routes, one module per concern."""

from fastapi import APIRouter

from . import health, jobs, notifications
from .responses import INTERNAL{% if cookiecutter.use_bearer_auth %}, UNAUTHORIZED{% endif %}

api_router = APIRouter(responses=INTERNAL)
api_router.include_router(health.router)
{%- if cookiecutter.use_bearer_auth %}
api_router.include_router(notifications.router, responses=UNAUTHORIZED)
api_router.include_router(jobs.router, responses=UNAUTHORIZED)
{%- else %}
api_router.include_router(notifications.router)
api_router.include_router(jobs.router)
{%- endif %}
