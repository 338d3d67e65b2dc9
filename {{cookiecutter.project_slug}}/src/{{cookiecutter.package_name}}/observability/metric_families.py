"""The service's Prometheus metrics, on `prometheus-client`.

Import this module only through `metrics.setup_metrics` / `setup_worker_metrics`:
prometheus-client picks, once, when it is first imported, whether values live in this
process or in files shared by several processes (`PROMETHEUS_MULTIPROC_DIR`), and the
setup decides that first.

Label values are bounded by construction: a route's template (never the raw path), a
method from a fixed set, a status code, a registered job's name. Children are cached
per label set, so a request pays one dict lookup, not `labels()`.
"""

import glob
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..settings import HTTP_METHODS
from .metrics import process_exists

# Seconds. An API answers in milliseconds; the tail is what a slow dependency costs.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Seconds. Jobs run from a fraction of a second up to the time limit (300 s default).
JOB_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
OTHER_METHOD = "other"
IN_FLIGHT = "http_requests_in_flight"
IN_FLIGHT_HELP = "Requests being answered now."


class HttpMetrics:
    """`observe` once a response is sent; `active` and `shared_in_flight` around it."""

    def __init__(self, registry: CollectorRegistry, *, multiprocess_mode: bool) -> None:
        self.requests = Counter(
            "http_requests",
            "HTTP requests answered, by method, route template and status code.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "http_request_duration_seconds",
            "Time from the request to the last byte of its response.",
            ["method", "route"],
            buckets=HTTP_BUCKETS,
            registry=registry,
        )
        # Requests in flight: a plain count, read at scrape time, which costs a request
        # about 1,400 instructions against 8,500 for a Gauge's inc and dec (its lock and
        # checks; callgrind). Only the event loop's thread changes it. Several server
        # workers need the Gauge: its files are what adds their counts up.
        self.active = 0
        self.shared_in_flight: Gauge | None = None
        if multiprocess_mode:
            self.shared_in_flight = Gauge(
                IN_FLIGHT,
                IN_FLIGHT_HELP,
                registry=registry,
                # Summed over the live workers; a dead worker's requests are over.
                multiprocess_mode="livesum",
            )
        else:
            registry.register(InFlight(self))
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        if method not in HTTP_METHODS:  # any token is a method: bound it, and this cache
            method = OTHER_METHOD
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            children = (
                self.requests.labels(method, route, str(status)),
                self.duration.labels(method, route),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)


class InFlight(Collector):
    def __init__(self, http: HttpMetrics) -> None:
        self.http = http

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(IN_FLIGHT, IN_FLIGHT_HELP, self.http.active)


class JobMetrics:
    """The job counters: a `jobs.JobEvents` (it has its three calls)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, what: str) -> Counter:
            return Counter(name, what, ["job"], registry=registry)

        self.submitted_total = counter("jobs_submitted", "Jobs accepted by the API.")
        self.started_total = counter("jobs_started", "Job runs started (a retry is a new run).")
        self.ended_total = {
            "succeeded": counter("jobs_succeeded", "Job runs that succeeded."),
            "failed": counter("jobs_failed", "Job runs that failed for good."),
            "retried": counter("jobs_retried", "Job runs that failed and will run again."),
            "cancelled": counter("jobs_cancelled", "Job runs stopped by a cancel."),
        }
        self.duration = Histogram(
            "job_duration_seconds",
            "Time a job run took, by how it ended.",
            ["job", "outcome"],
            buckets=JOB_BUCKETS,
            registry=registry,
        )

    def submitted(self, name: str) -> None:
        self.submitted_total.labels(name).inc()

    def started(self, name: str) -> None:
        self.started_total.labels(name).inc()

    def ended(self, name: str, outcome: str, seconds: float) -> None:
        self.ended_total[outcome].labels(name).inc()
        self.duration.labels(name, outcome).observe(seconds)


class WaitingJobs(Collector):
    """`jobs_waiting`, read at scrape time: the value given to `Exposition.render`."""

    def __init__(self) -> None:
        self.value: int | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self.value is not None:  # unknown (the store is down): no sample, not a lie
            yield GaugeMetricFamily(
                "jobs_waiting", "Jobs submitted and not started yet.", self.value
            )


class SummedFiles(multiprocess.MultiProcessCollector):
    """prometheus-client's sum over every process's files, leaving out the files that
    hold nothing yet.

    A process makes its file with `open(..., "a+b")` and only then sizes it: a scrape
    that reads it in between fails on an empty file (`struct.error`), and the scrape
    answered 500 (seen in CI with `uvicorn --workers 2`, a worker's first request
    counted just as the other scraped). A file only grows from empty, so one that is
    not empty when looked at stays readable; one that is empty holds no value.
    """

    def collect(self) -> Iterable[Metric]:
        files = []
        for path in glob.glob(os.path.join(self._path, "*.db")):
            try:
                if os.path.getsize(path) > 0:
                    files.append(path)
            except FileNotFoundError:
                pass  # a dead process's live gauge, just removed (mark_process_dead)
        merged: Iterable[Metric] = self.merge(files, accumulate=True)  # type: ignore[no-untyped-call]
        return merged


class Exposition:
    """The text a scrape gets: this process's metrics, or with `directory`, the sum
    over every process that writes there (server workers, or a worker's pool)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry, directory: Path | None) -> None:
        self.directory = directory
        self.waiting = WaitingJobs()
        if directory is None:
            self.registry = registry
        else:
            self.registry = CollectorRegistry()
            SummedFiles(self.registry, path=str(directory))  # type: ignore[no-untyped-call]
        self.registry.register(self.waiting)

    def render(self, waiting_jobs: int | None = None) -> bytes:
        if self.directory is not None:
            forget_dead_processes(self.directory)
        self.waiting.value = waiting_jobs
        return generate_latest(self.registry)


def forget_dead_processes(directory: Path) -> None:
    """Drop the live gauges (requests in flight) of processes that are gone, a killed
    one too; their counters stay, so totals never go down."""
    for path in directory.glob("gauge_live*_*.db"):
        pid = int(path.stem.rpartition("_")[2])
        if not process_exists(pid):
            multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


class ServiceMetrics:
    """Everything one process counts, on a registry of its own (each app a test makes
    has its own too, with no clash between them)."""

    def __init__(self, directory: Path | None, *, http: bool) -> None:
        # No `_created` series beside each counter and histogram: they doubled the
        # scrape, and Prometheus needs none (multiprocess mode has none either).
        disable_created_metrics()  # type: ignore[no-untyped-call]
        registry = CollectorRegistry()
        shared = directory is not None
        self.http = HttpMetrics(registry, multiprocess_mode=shared) if http else None
        self.jobs = JobMetrics(registry)
        self.exposition = Exposition(registry, directory)
