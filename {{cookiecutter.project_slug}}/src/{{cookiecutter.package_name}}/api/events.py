"""`GET /jobs/{id}/events`: a job's state as Server-Sent Events, each time it changes.

sse-starlette writes the stream (framing, the heartbeat comments, the client leaving),
rather than framing of our own. The stream goes through the pure-ASGI stack untouched:
each event is sent as it happens, the access line is written when the stream ends (with
its true duration), and a client that leaves cancels the stream at once, which stops
following the job (tests/test_job_events.py checks each). An access line written after
`call_next` in Starlette's base HTTP middleware class would come when the stream starts,
not when it ends.

A browser's `EventSource` reconnects whenever a stream ends: close it on a final status.
"""

import logging
from collections.abc import AsyncIterator

from fastapi import APIRouter, HTTPException, Request
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask

from ..jobs import JobBackendUnavailableError
from ..jobs.watch import JobWatch
from ..middleware.access_log import add_access_log_fields
from .dependencies import JobQueueDep
from .responses import NOT_FOUND, UNAVAILABLE, Responses

logger = logging.getLogger(__name__)

router = APIRouter(tags=["jobs"])

# A comment line this often keeps proxies and load balancers from closing a quiet stream
# (many drop idle connections after 30 to 60 s).
HEARTBEAT_SECONDS = 15.0

EVENTS: Responses = {
    200: {
        "description": (
            "`text/event-stream`: one event per change, its `data` the job's state as "
            "`GET /jobs/{id}` returns it; a comment line every 15 s while nothing changes; "
            "the stream ends after the final state (`succeeded`, `failed`, `cancelled`)."
        ),
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


@router.get(
    "/jobs/{job_id}/events",
    response_class=EventSourceResponse,
    responses={**EVENTS, **NOT_FOUND, **UNAVAILABLE},
)
async def job_events(job_id: str, request: Request, jobs: JobQueueDep) -> EventSourceResponse:
    # Followed before the response starts: an unknown id is a plain 404, a store that
    # is down a plain 503.
    watch = await jobs.follow(job_id)
    if watch is None:
        raise HTTPException(status_code=404, detail="No job with this id")
    add_access_log_fields(request, job_id=job_id)
    return EventSourceResponse(
        state_events(watch),
        ping=HEARTBEAT_SECONDS,
        # Also closed when the stream never starts (a HEAD request sends headers only).
        background=BackgroundTask(watch.close),
    )


async def state_events(watch: JobWatch) -> AsyncIterator[ServerSentEvent]:
    try:
        async for state in watch.states():
            yield ServerSentEvent(data=state.model_dump_json())
    except JobBackendUnavailableError as exc:
        # The store went away mid-stream: end it; the client's EventSource reconnects.
        logger.warning("job events: stream ended: %s", exc)
    finally:
        watch.close()  # on every way out: the end, an error, the client leaving (cancelled)
