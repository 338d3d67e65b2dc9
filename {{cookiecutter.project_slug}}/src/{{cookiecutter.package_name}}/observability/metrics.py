"""Prometheus metrics, set up once per process from settings: `setup_metrics` for the
API{% if cookiecutter.job_backend != "inprocess" %}, `setup_worker_metrics` for the Celery worker{% endif %}.

Several processes, one view. prometheus-client's multiprocess mode keeps each
process's values in files of one directory, and a scrape sums them; it must be chosen
before prometheus-client is first imported (`PROMETHEUS_MULTIPROC_DIR`), so this module
imports it (through `metric_families`) only after deciding.
- API with several server workers (`WEB_CONCURRENCY` > 1): every worker computes the
  same directory, named after the uvicorn supervisor (their common parent) and its start
  time, so a restarted service never adds up an earlier run's files; directories of
  supervisors that are gone are removed when a worker starts. Each worker makes it on
  its own: uvicorn's supervisor never imports the app, so nothing else could.
{%- if cookiecutter.job_backend != "inprocess" %}
- Worker: its main process makes a fresh directory before it forks the pool, serves
  the sum on `WORKER_METRICS_PORT`, and removes the directory when it exits.
{%- endif %}
- `PROMETHEUS_MULTIPROC_DIR` set by the operator wins; then emptying it before each
  start is theirs to do (prometheus-client's rule).
A process that imported prometheus-client before (a test process) counts alone.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from ..settings import Settings

if TYPE_CHECKING:
{%- if cookiecutter.job_backend != "inprocess" %}
    from wsgiref.simple_server import WSGIServer
{% endif %}
    from .metric_families import ServiceMetrics

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PACKAGE = __package__.partition(".")[0] if __package__ else "service"


def setup_metrics(settings: Settings) -> ServiceMetrics:
    """The API process's metrics: HTTP, job submissions (and in-process jobs' runs)."""
    directory = operator_directory()
    if directory is None and settings.web_concurrency > 1:
        directory = claim(server_workers_directory())
    from .metric_families import ServiceMetrics

    return ServiceMetrics(directory, http=True)


def operator_directory() -> Path | None:
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


def claim(directory: Path) -> Path | None:
    """Use `directory` for this process's metrics, if it is not too late to."""
    if "prometheus_client" in sys.modules:
        logger.warning("metrics: prometheus-client was imported first; this process counts alone")
        return None
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(directory)
    return directory


def server_workers_directory() -> Path:
    """`<tmp>/<package>-metrics-<uid>/<supervisor pid>-<its start time>`, the same in
    every worker of one uvicorn supervisor; removes those of supervisors now gone."""
    root = Path(tempfile.gettempdir()) / f"{PACKAGE}-metrics-{getattr(os, 'getuid', int)()}"
    supervisor = os.getppid()
    if root.is_dir():
        remove_stale(root.iterdir(), "")
    return root / f"{supervisor}-{start_time(supervisor)}"


def remove_stale(directories: Iterable[Path], prefix: str) -> None:
    """Remove each `<prefix><pid>-...` directory whose process is gone."""
    for directory in directories:
        pid = directory.name.removeprefix(prefix).partition("-")[0]
        if pid.isdigit() and not process_exists(int(pid)):
            shutil.rmtree(directory, ignore_errors=True)


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's
    return True


def start_time(pid: int) -> str:
    """When the process started (clock ticks since boot, Linux), or "0" if unknown:
    with the pid, it names one run of the supervisor."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "0"
    # Field 22; the command name (field 2) may hold spaces, so count after its ')'.
    return stat.rpartition(")")[2].split()[19]
{%- if cookiecutter.job_backend != "inprocess" %}


class WorkerMetrics:
    """The worker's metrics and their listener: made in the main process (`start`),
    counted in each pool process, served by the main one. It is the worker's
    `JobEvents` too; until `start`, it counts nothing, so a process that only imports
    the worker module (`celery inspect`, the image's health check) makes no files."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.metrics: ServiceMetrics | None = None
        self.made_directory: Path | None = None
        self.owner = 0
        self._server: WSGIServer | None = None

    def start(self) -> None:
        """Call it in the main process before the pool forks (Celery's `worker_init`)."""
        directory = operator_directory()
        if directory is None:
            # Named after this process, so that a later worker can tell whether the
            # directory of a killed one (which could not remove it) is stale.
            prefix = f"{PACKAGE}-worker-metrics-"
            remove_stale(Path(tempfile.gettempdir()).glob(f"{prefix}*"), prefix)
            directory = claim(Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-")))
            self.made_directory = directory
        from .metric_families import ServiceMetrics

        self.metrics = ServiceMetrics(directory, http=False)
        self.owner = os.getpid()

    def submitted(self, name: str) -> None:
        return None  # the API counts submissions

    def started(self, name: str) -> None:
        if self.metrics is not None:
            self.metrics.jobs.started(name)

    def ended(self, name: str, outcome: str, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.jobs.ended(name, outcome, seconds)

    def serve(self) -> None:
        """Listen on all interfaces (call it in the main process, once the pool runs)."""
        from prometheus_client import start_http_server

        assert self.metrics is not None, "start() first"
        registry = self.metrics.exposition.registry
        try:
            self._server, _ = start_http_server(self.port, registry=registry)
        except OSError as exc:  # another worker on this host has the port
            logger.error(
                "worker metrics not served: port %d (WORKER_METRICS_PORT): %s", self.port, exc
            )
            return
        logger.info("worker metrics on port %d", self.port)

    def close(self) -> None:
        if os.getpid() != self.owner:
            return  # a pool process: the main one owns the listener and the files
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self.made_directory is not None:
            shutil.rmtree(self.made_directory, ignore_errors=True)
            self.made_directory = None


def setup_worker_metrics(settings: Settings) -> WorkerMetrics | None:
    """The worker's metrics, or None when `WORKER_METRICS_PORT` is 0."""
    if settings.worker_metrics_port == 0:
        return None
    return WorkerMetrics(settings.worker_metrics_port)
{%- endif %}
