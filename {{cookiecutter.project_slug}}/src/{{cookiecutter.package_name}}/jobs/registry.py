"""The jobs the service can run, by name; both backends look them up here.

To add a job: write a function `(params, report_progress) -> result` with JSON in and
out that is safe to run twice (a backend may re-run it after a crash), and add it to
`JOBS`.
"""

from .models import JobFunction
from .reports import build_report

JOBS: dict[str, JobFunction] = {
    "build_report": build_report,
}


class UnknownJobError(LookupError):
    pass


def find_job(name: str) -> JobFunction:
    try:
        return JOBS[name]
    except KeyError:
        raise UnknownJobError(name) from None
