"""What a job is, as the API and both backends see it."""

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# A job is a function `(params, report_progress) -> result`, JSON in and out.
ProgressReporter = Callable[[int], None]
JobFunction = Callable[[dict[str, Any], ProgressReporter], dict[str, Any]]


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


# A job in one of these never changes again (a retry is a new job).
FINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
# Only these can be retried: a succeeded job has its result, and a live one is not over.
RETRYABLE_STATUSES = frozenset({JobStatus.FAILED, JobStatus.CANCELLED})


class JobState(BaseModel):
    """A job as `GET /jobs/{id}` shows it."""

    # pydantic keeps the strings it reads from JSON in a process-wide cache, which job
    # ids, each read a few times at most, only fill: 1.25 MB after 30,000 reads of
    # finished in-process jobs (tracemalloc), and nothing with keys alone.
    model_config = ConfigDict(cache_strings="keys")

    id: str
    status: JobStatus
    progress: int = Field(default=0, ge=0, le=100, description="Percent done, 0 to 100.")
    result: dict[str, Any] | None = None
    error: str | None = Field(default=None, description="Why the job failed, when it did.")
    retried_as: str | None = Field(
        default=None, description="The id of the job that retried this one, once retried."
    )


@dataclass(frozen=True)
class JobRequest:
    """One submission: which registered job to run, with which parameters.

    `params` must be JSON-serialisable: a backend may send it over the wire.
    """

    id: str
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    request_id: str | None = None
    subject: str | None = None  # who submitted it, for the worker's log lines


class TransientJobError(Exception):
    """Raise from a job for a failure worth retrying (a flaky downstream service).

    A backend that retries jobs retries these, with backoff, a few times; any other
    error fails the job at once.
    """


class JobInputError(ValueError):
    """Raise from a job that refuses its params (they fail its own validation).

    The job fails, and is not retried, like any other error; but the mistake is the
    submitter's, not a bug, so error reporting leaves it out (observability/errors.py).
    """


class JobFailedError(Exception):
    """A job's own error, reduced to its description ("ValueError: ...").

    A backend that stores errors elsewhere keeps this one: any exception type can be
    rebuilt from its message, where a library's own exception often cannot.
    """


class JobCancelledError(Exception):
    """Raised by `report_progress` once the job was cancelled (`DELETE /jobs/{id}`).

    Cancellation is cooperative: a job stops at its next progress report. A job may
    catch this to clean up (close files, roll back), and must then re-raise it; the
    job ends `cancelled`.
    {%- if cookiecutter.job_backend != "inprocess" %} On Celery, a job that reports no progress for longer than
    `JOB_CANCEL_GRACE_SECONDS` after the cancel is terminated.
    {%- endif %}
    """


class JobConflictError(Exception):
    """The job's state forbids the request (cancel a finished job, retry a running
    one): the API answers 409 with `detail` and the job's `state`."""

    def __init__(self, detail: str, state: JobState) -> None:
        super().__init__(detail)
        self.detail = detail
        self.state = state


def cancel_conflict(state: JobState) -> JobConflictError:
    return JobConflictError(f"the job has ended ({state.status}): nothing to cancel", state)


def retry_conflict(state: JobState) -> JobConflictError | None:
    """Why `state` cannot be retried, or None when it can."""
    if state.status not in RETRYABLE_STATUSES:
        detail = f"only a failed or cancelled job can be retried; this one is {state.status}"
        return JobConflictError(detail, state)
    if state.retried_as is not None:
        return JobConflictError(f"the job was retried already, as {state.retried_as}", state)
    return None


class JobBackendUnavailableError(Exception):
    """The backend cannot take jobs now (its broker is down); worth retrying later."""


@dataclass(frozen=True)
class IdempotencyClaim:
    """What a submission with an `Idempotency-Key` asks the backend to hold for the
    retention period: `key` (the client's key, scoped to its subject and hashed, so
    two clients never share one) names the first job, whose request had `request_hash`."""

    key: str
    request_hash: str


class QueueFullError(Exception):
    """`MAX_QUEUED_JOBS` jobs wait already: the submission was refused, nothing queued."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"{limit} jobs are waiting already (MAX_QUEUED_JOBS)")
        self.limit = limit


class IdempotencyKeyReusedError(Exception):
    """An `Idempotency-Key` came back with another request than the one it first made."""


# What a client reads for an error whose own text would name internal hosts and ports.
UNREACHABLE = "a service the job needs could not be reached"


def describe_error(
    exc: BaseException, connection_errors: tuple[type[BaseException], ...] = (OSError,)
) -> str:
    """The `error` text of a failed job, as clients read it: the exception type and its
    message, except for connection errors, whose message names internal addresses
    (`Error 111 connecting to 10.0.3.7:6379`): those say only what kind of error it
    was. The log keeps the full text."""
    name = type(exc).__name__
    if isinstance(exc, connection_errors):
        return f"{name}: {UNREACHABLE}"
    message = str(exc)
    return f"{name}: {message}" if message else name
