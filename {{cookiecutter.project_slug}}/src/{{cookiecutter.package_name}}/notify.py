"""Light work that runs after the response with FastAPI `BackgroundTasks`.

These tasks must never raise: a task that raises skips the tasks queued after it for
the same request, and its error would only reach the server log without context.
"""

import logging

logger = logging.getLogger(__name__)


def masked_email(email: str) -> str:
    """`j***@example.com`: enough to tell recipients apart in a log, not to reach
    them. Logs travel to more people and places than the data they describe."""
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}"


def send_notification(email: str, message: str) -> None:
    """The transport. Replace the log line with your mail or push provider's client."""
    logger.info("notification sent to %s (%d characters)", masked_email(email), len(message))


def deliver_notification(email: str, message: str) -> None:
    """Sync on purpose: blocking I/O belongs in the threadpool, where FastAPI runs a
    sync background task, never on the event loop."""
    try:
        send_notification(email, message)
    except Exception:
        logger.exception("notification to %s failed", masked_email(email))


async def write_audit_line(method: str, path: str) -> None:
    """An async task: cheap, non-blocking work may stay on the event loop."""
    logger.info("audit: %s %s accepted", method, path)
