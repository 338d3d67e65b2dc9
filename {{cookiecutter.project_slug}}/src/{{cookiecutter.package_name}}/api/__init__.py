"""HTTP routes, one module per concern."""

from fastapi import APIRouter

from . import health, jobs, notifications

api_router = APIRouter()
api_router.include_router(health.router)
api_router.include_router(notifications.router)
api_router.include_router(jobs.router)
