"""`POST /notifications`: light work, run in this process after the response."""

from fastapi import APIRouter, BackgroundTasks, Depends, Request
from pydantic import BaseModel, Field

from ..notify import deliver_notification, write_audit_line

router = APIRouter(tags=["notifications"])


class Notification(BaseModel):
    email: str = Field(max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    message: str = Field(min_length=1, max_length=5_000)


class NotificationAccepted(BaseModel):
    status: str = "accepted"


def audit(request: Request, background_tasks: BackgroundTasks) -> None:
    """A dependency may queue background tasks too: FastAPI gives it the endpoint's
    BackgroundTasks object, and all of them run, in order, after the response."""
    background_tasks.add_task(write_audit_line, request.method, request.url.path)


@router.post("/notifications", status_code=202, dependencies=[Depends(audit)])
async def create_notification(
    notification: Notification, background_tasks: BackgroundTasks
) -> NotificationAccepted:
    background_tasks.add_task(deliver_notification, notification.email, notification.message)
    return NotificationAccepted()
