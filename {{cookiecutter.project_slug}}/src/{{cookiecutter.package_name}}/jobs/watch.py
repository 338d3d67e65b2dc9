"""Following one job as it changes: what `GET /jobs/{id}/events` streams, on any backend.

A backend's `follow(job_id)` subscribes to the job's changes first and reads its state
after, so no change between the two is lost, and hands back a `JobWatch`. The backend
wakes the watch through its `ChangeSlot`: in-process, the store does when a job thread
updates it
{%- if cookiecutter.job_backend != "inprocess" %}; with Celery, the process's one Redis subscriber does for each state the
result store publishes (`redis_watch.py`)
{%- endif %}.

A slot holds the newest change only: a client slower than its job sees the latest
state, never a backlog that grows with the job's progress reports.
"""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from .models import FINAL_STATUSES, JobState

# What a slot holds: a new state, or RESYNC: "something changed, read it again" (what
# the in-process store says{% if cookiecutter.job_backend != "inprocess" %}, and the Celery subscriber after it reconnected and may
# have missed messages{% endif %}).
RESYNC = None
Change = JobState | None


class ChangeSlot:
    """The newest change for one follower, and a wake-up for it; `put` is called on
    the event loop (from another thread, through `loop.call_soon_threadsafe`)."""

    __slots__ = ("_change", "_changed")

    def __init__(self) -> None:
        self._change: Change = RESYNC
        self._changed = asyncio.Event()

    def put(self, change: Change) -> None:
        self._change = change
        self._changed.set()

    async def take(self) -> Change:
        await self._changed.wait()
        self._changed.clear()
        change, self._change = self._change, RESYNC
        return change


def is_behind(state: JobState, shown: JobState) -> bool:
    """Whether `state` is older than the one already shown: the same status with less
    progress. Not shown: a follower never sees progress go back within one status.
    {%- if cookiecutter.job_backend != "inprocess" %}

    A Celery subscriber can receive, just after it read the current state, a message
    published before that read (pub/sub and the read are two connections): it is not
    shown. A job that really starts again (retried) goes through `queued` first, so it
    is shown; one redelivered after its worker died shows its old progress until it
    passes it.
    {%- endif %}"""
    return state.status is shown.status and state.progress < shown.progress


class JobWatch:
    """One client following one job, already subscribed: iterate `states()`; call
    `close()` when done (idempotent, and synchronous, so it runs even in a cancelled
    task: a client that disconnects cancels the stream)."""

    def __init__(
        self,
        first: JobState,
        slot: ChangeSlot,
        read: Callable[[], Awaitable[JobState | None]],
        close: Callable[[], None],
    ) -> None:
        self._first = first
        self._slot = slot
        self._read = read
        self._close = close
        self.closed = False

    async def states(self) -> AsyncIterator[JobState]:
        """The current state, then each change, ending after a final state (or when the
        job is forgotten: its retention passed)."""
        shown = self._first
        yield shown
        while shown.status not in FINAL_STATUSES:
            change = await self._slot.take()
            state = change if change is not None else await self._read()
            if state is None:
                return
            if state == shown or is_behind(state, shown):
                continue
            shown = state
            yield shown
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._close()
