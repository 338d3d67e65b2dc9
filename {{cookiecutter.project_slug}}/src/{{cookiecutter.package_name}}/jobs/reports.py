"""The example heavy job: build a small report from synthetic rows.

A job is a plain function `(params, report_progress) -> result` with JSON in and out,
so either backend can run it and a re-run with the same params gives the same result
(it writes nothing elsewhere, so running it twice duplicates nothing).
"""

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .models import JobInputError, ProgressReporter

MAX_ROWS = 1_000_000
MAX_SIMULATE_SECONDS = 60.0
BATCHES = 20


class ReportParams(BaseModel):
    # Strict: `true` or `"5"` for rows is a client's bug, not a number to guess at.
    model_config = ConfigDict(strict=True, extra="forbid")

    rows: int = Field(ge=1, le=MAX_ROWS, description="How many synthetic rows to summarise.")
    simulate_seconds: float = Field(
        default=0.0,
        ge=0.0,
        le=MAX_SIMULATE_SECONDS,
        allow_inf_nan=False,
        description="Make the job last at least this long, reporting progress as it goes.",
    )


def row_amount(index: int) -> int:
    """The synthetic amount, in cents, of row `index`: deterministic, no I/O."""
    return (index * 7919) % 10_000


def build_report(params: dict[str, Any], report_progress: ProgressReporter) -> dict[str, Any]:
    try:
        request = ReportParams.model_validate(params)
    except ValidationError as exc:
        raise JobInputError(str(exc)) from exc
    batch_size = -(-request.rows // BATCHES)  # ceiling division
    pause = request.simulate_seconds / -(-request.rows // batch_size)
    total = 0
    smallest = largest = row_amount(0)
    for start in range(0, request.rows, batch_size):
        for index in range(start, min(start + batch_size, request.rows)):
            amount = row_amount(index)
            total += amount
            smallest = min(smallest, amount)
            largest = max(largest, amount)
        time.sleep(pause)
        report_progress(min(start + batch_size, request.rows) * 100 // request.rows)
    return {
        "rows": request.rows,
        "total_cents": total,
        "mean_cents": round(total / request.rows, 2),
        "min_cents": smallest,
        "max_cents": largest,
    }
