"""`POST /notifications`: light work, run in this process after the response."""

import re
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Depends, Request
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from ..notify import deliver_notification, write_audit_line
from .responses import INVALID

router = APIRouter(tags=["notifications"])

# The shape of an address, not a full RFC 5322 check: the mail provider has the last word.
EMAIL = re.compile(r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+\.[^@\s\x00-\x1f\x7f]+$")
# Lone surrogates are valid in JSON strings but not text: they cannot be encoded.
NOT_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def email_address(value: str) -> str:
    if EMAIL.match(value) is None or not value.isascii():
        raise ValueError("not an e-mail address such as name@example.com")
    return value


def plain_text(value: str) -> str:
    if NOT_TEXT.search(value) is not None:
        raise ValueError("contains control characters or invalid Unicode")
    return value


class Notification(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    email: Annotated[str, Field(max_length=254), AfterValidator(email_address)]
    message: Annotated[str, Field(min_length=1, max_length=5_000), AfterValidator(plain_text)]


class NotificationAccepted(BaseModel):
    status: str = "accepted"


def audit(request: Request, background_tasks: BackgroundTasks) -> None:
    """A dependency may queue background tasks too: FastAPI gives it the endpoint's
    BackgroundTasks object, and all of them run, in order, after the response."""
    background_tasks.add_task(write_audit_line, request.method, request.url.path)


@router.post("/notifications", status_code=202, dependencies=[Depends(audit)], responses=INVALID)
async def create_notification(
    notification: Notification, background_tasks: BackgroundTasks
) -> NotificationAccepted:
    background_tasks.add_task(deliver_notification, notification.email, notification.message)
    return NotificationAccepted()
