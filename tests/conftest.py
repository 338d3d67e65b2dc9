"""Helpers for the template's own tests: baking, running tools, the shared environment.

Baking takes about a second; installing a generated project's dependencies takes a
minute. So every bake runs its `ruff`, `mypy` and `pytest` from ONE shared virtualenv
(`project_env`), with its own package put on the path by `PYTHONPATH=<bake>/src`, and
only `test_fresh_install.py` pays for real per-project installs.
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from cookiecutter.main import cookiecutter  # type: ignore[import-untyped]

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATE_DIR = REPO_ROOT
PROJECT_TEMPLATE = TEMPLATE_DIR / "{{cookiecutter.project_slug}}"
HOOKS_DIR = TEMPLATE_DIR / "hooks"

# Generous ceilings, only there so that a hung tool fails its test instead of the CI run.
INSTALL_TIMEOUT = 1200.0
TOOL_TIMEOUT = 900.0

# Outer-pytest variables that must not leak into a bake's own pytest (xdist worker ids,
# PYTEST_ADDOPTS with `-n 2` for a pytest that has no xdist...) and paths we set ourselves.
_DROPPED_ENV_PREFIXES = ("PYTEST_",)
_DROPPED_ENV_NAMES = frozenset({"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"})


# --------------------------------------------------------------------------- pytest hooks


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "heavy(seconds): a slow test and a rough estimate of its duration; "
        "the slowest tests run first so that both xdist workers finish together",
    )
    # xdist's default `load` scheduling hands each worker a block of consecutive tests up
    # front: with the heavy tests sorted first, one worker would get nearly all of them.
    # Handing out one test at a time turns the sort into longest-first greedy scheduling.
    if getattr(config.option, "maxschedchunk", "absent") is None:
        config.option.maxschedchunk = 1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """What tests measured (their `measured` user properties, which xdist carries back
    from its workers), and the container lane's timings (tests/podman.py), when it ran
    in this process."""
    measured = [
        f"{report.nodeid}: {value}"
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", None) == "teardown"
        for name, value in getattr(report, "user_properties", ())
        if name == "measured"
    ]
    if measured:
        terminalreporter.section("measured")
        for line in measured:
            terminalreporter.write_line(line)
    lane = sys.modules.get("podman")
    timings = getattr(lane, "TIMINGS", None)
    if timings:
        terminalreporter.section("container lane timings")
        for step, seconds in timings.items():
            terminalreporter.write_line(f"{seconds:7.1f} s  {step}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest tests first (stable, so every xdist worker collects the same order)."""

    def estimated_seconds(item: pytest.Item) -> float:
        marker = item.get_closest_marker("heavy")
        return float(marker.kwargs.get("seconds", 60)) if marker else 0.0

    items.sort(key=estimated_seconds, reverse=True)


# --------------------------------------------------------------------------- baking


@cache
def cookiecutter_config() -> Path:
    """A private cookiecutter config, so bakes never write replay files into $HOME and
    concurrent xdist workers never race on the same replay file."""
    home = Path(tempfile.mkdtemp(prefix="cookiecutter-home-"))
    atexit.register(shutil.rmtree, home, True)
    config = home / "config.yaml"
    config.write_text(
        json.dumps(  # JSON is YAML; no need for a YAML writer
            {
                "cookiecutters_dir": str(home / "cookiecutters"),
                "replay_dir": str(home / "replay"),
            }
        )
    )
    return config


def bake(tmp_path: Path, **answers: Any) -> Path:
    """Generate one project from the template into `tmp_path`; return the project dir."""
    project = cookiecutter(
        str(TEMPLATE_DIR),
        no_input=True,
        output_dir=str(tmp_path),
        extra_context=answers,
        config_file=str(cookiecutter_config()),
    )
    return Path(project)


@dataclass(frozen=True)
class Case:
    """One set of answers baked once per session and checked by many tests."""

    id: str
    answers: Mapping[str, Any]
    slug: str  # the project_slug these answers must produce
    package: str | None = None  # the package_name they must produce, when not the slug's
    # The generated test files to run instead of the whole suite, for a case that only
    # renames a combination another case runs in full (empty: the whole suite).
    suite: tuple[str, ...] = ()

    @property
    def package_name(self) -> str:
        derived = self.package or self.slug.replace("-", "_")
        return str(self.answers.get("package_name", derived))

    @property
    def job_backend(self) -> str:
        return str(self.answers.get("job_backend", "celery"))

    @property
    def auth(self) -> str:
        return str(self.answers.get("auth", "none"))

    @property
    def opentelemetry(self) -> bool:
        return self.answers.get("use_opentelemetry", False) is True


DEFAULT_SLUG = "orders-service"

CASES: tuple[Case, ...] = (
    *(
        Case(
            id=f"{backend}-{auth}",
            answers={"job_backend": backend, "auth": auth},
            slug=DEFAULT_SLUG,
        )
        for backend, auth in (
            ("celery", "token"),
            ("celery", "none"),
            # The one Celery case auth=jwt adds, on RabbitMQ (issue 13): with the
            # unicode-name case, every Celery test runs on both brokers.
            ("celery-rabbitmq", "jwt"),
            ("inprocess", "token"),
            ("inprocess", "none"),
            # inprocess x jwt: the long-name case below
        )
    ),
    Case(
        id="long-name",
        answers={
            # 62 characters: long titles must not break wrapped lines, TOML or the slug.
            "project_name": "Northwind Logistics Realtime Shipment Tracking Gateway Service",
            "job_backend": "inprocess",
            # The JWT code must wrap under a long package name too.
            "auth": "jwt",
            # Tracing (issue 9): its in-process bake, long imports included.
            "use_opentelemetry": True,
            # The edge cases also cover the other choices of the remaining options.
            "ci_provider": "none",
            "license": "Proprietary",
        },
        slug="northwind-logistics-realtime-shipment-tracking-gateway-service",
    ),
    Case(
        id="unicode-name",
        answers={
            "project_name": "Café Ünïcode Service",
            # RabbitMQ as the broker, with tracing across it.
            "job_backend": "celery-rabbitmq",
            "auth": "token",
            # Tracing (issue 9): its Celery bake, with token auth.
            "use_opentelemetry": True,
            "ci_provider": "gitlab",
            "license": "BSD-3-Clause",
        },
        slug="cafe-unicode-service",
    ),
    Case(
        # A leading digit: valid in the slug, not in an import name, which gets `app_`.
        id="digit-slug",
        answers={
            "project_name": "2FA Service",
            "job_backend": "celery",
            "auth": "none",
            "python_version": "3.13",
        },
        # celery-none renamed: its full suite would repeat celery-none's five minutes.
        # These run the name through what derives from it: the Celery app and task
        # names with a real worker, beat's keys in Redis, the settings, the metrics'
        # files, the OpenAPI document.
        suite=(
            "tests/test_jobs.py",
            "tests/test_celery_beat.py",
            "tests/test_settings.py",
            "tests/test_metrics.py",
            "tests/test_openapi.py",
        ),
        slug="2fa-service",
        package="app_2fa_service",
    ),
)

# The answers whose dependency set is the largest: every other bake's is a subset.
SUPERSET_ANSWERS: Mapping[str, Any] = {
    "job_backend": "celery-rabbitmq",
    "auth": "jwt",
    "use_opentelemetry": True,
}


@dataclass(frozen=True)
class Baked:
    case: Case
    path: Path
    # Files as generated, listed before any tool ran, so caches the tools write
    # (.mypy_cache, __pycache__...) are never mistaken for generated files.
    files: tuple[Path, ...]


@dataclass
class Bakery:
    """Bakes each case once per session (per xdist worker) and hands out the result."""

    root: Path
    _baked: dict[str, Baked] = field(default_factory=dict)

    def get(self, case: Case) -> Baked:
        if case.id not in self._baked:
            out = self.root / case.id
            out.mkdir()
            path = bake(out, **case.answers)
            self._baked[case.id] = Baked(case, path, project_files(path))
        return self._baked[case.id]


@pytest.fixture(scope="session")
def bakery(tmp_path_factory: pytest.TempPathFactory) -> Bakery:
    return Bakery(tmp_path_factory.mktemp("bakes"))


# --------------------------------------------------------------------------- reading bakes

# The record of the answers (for `cruft update`) names every option with its value: a line
# like `"auth": "none",` records a choice, it implements nothing.
ANSWER_RECORD = Path(".cruft.json")
OPTION_NAMES = frozenset(
    key
    for key in json.loads((TEMPLATE_DIR / "cookiecutter.json").read_text(encoding="utf-8"))
    if not key.startswith("_")
)
_RECORDED_ANSWER_RE = re.compile(r'^\s*"(\w+)":')


def project_files(root: Path) -> tuple[Path, ...]:
    """Every file under `root`, relative to it."""
    return tuple(sorted(path.relative_to(root) for path in root.rglob("*") if path.is_file()))


def read_text(path: Path) -> str | None:
    """The file's text, or None for a binary file (one holding a NUL byte)."""
    data = path.read_bytes()
    if b"\0" in data:
        return None
    return data.decode("utf-8")  # a generated text file that is not UTF-8 is a bug


def text_files(root: Path, files: Sequence[Path]) -> Iterator[tuple[Path, str]]:
    for relative in files:
        text = read_text(root / relative)
        if text is not None:
            yield relative, text


def _records_an_answer(relative: Path, line: str) -> bool:
    match = _RECORDED_ANSWER_RE.match(line)
    return relative == ANSWER_RECORD and match is not None and match.group(1) in OPTION_NAMES


def mentions(
    root: Path,
    files: Sequence[Path],
    pattern: re.Pattern[str],
    *,
    skip_recorded_answers: bool = True,
) -> list[str]:
    """`path: reason` for every file name and line of text under `root` matching `pattern`;
    the answers record's option lines are skipped unless asked (see ANSWER_RECORD)."""
    found = [f"{path}: (file name)" for path in files if pattern.search(str(path))]
    for relative, text in text_files(root, files):
        for number, line in enumerate(text.splitlines(), start=1):
            if not pattern.search(line):
                continue
            if skip_recorded_answers and _records_an_answer(relative, line):
                continue
            found.append(f"{relative}:{number}: {line.strip()}")
    return found


def load_hook(name: str) -> ModuleType:
    """Import `hooks/<name>.py` as a plain module (its template literal is only used
    under `if __name__ == "__main__"`)."""
    return load_module(HOOKS_DIR / f"{name}.py", f"template_hook_{name}")


def load_module(path: Path, name: str) -> ModuleType:
    """Import the Python file at `path` as module `name` (hooks and scripts are not
    packages)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look the defining module up in sys.modules while building a class.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- running tools


@dataclass(frozen=True)
class Ran:
    """What a command did; `report()` is what a failing assertion shows."""

    args: tuple[str, ...]
    cwd: Path
    returncode: int
    output: str = field(repr=False)  # shown by report(), not in pytest's assert introspection
    timed_out: bool
    # Processes it started were still alive after it exited (they have been killed).
    leaked: bool

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def report(self, head: int = 8_000, tail: int = 12_000) -> str:
        """The command and its output; a long output keeps its start (the first failure)
        and its end (the summary)."""
        output = self.output
        if len(output) > head + tail:
            skipped = len(output) - head - tail
            output = f"{output[:head]}\n[... {skipped} characters ...]\n{output[-tail:]}"
        status = "timed out" if self.timed_out else f"exit {self.returncode}"
        return f"$ {' '.join(self.args)}  (in {self.cwd}; {status})\n{output}"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - only a foreign process could own it
        return True
    return True


def _kill_group(pgid: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def run(
    args: Sequence[str | Path],
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = TOOL_TIMEOUT,
) -> Ran:
    """Run a command in its own process group, output (stdout and stderr) to a file.

    A file rather than a pipe: a server a test forgot to stop would hold a pipe open and
    hang the read. The process group lets us find and kill such leftovers.
    """
    argv = [str(arg) for arg in args]
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        timed_out = False
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(process.pid)
            process.wait()
        except BaseException:  # interrupted (Ctrl-C, SIGTERM): take the command down too
            _kill_group(process.pid)
            process.wait()
            raise
        leaked = False
        deadline = time.monotonic() + 3.0  # let children that are shutting down finish
        while _group_alive(process.pid):
            if time.monotonic() > deadline:
                leaked = True
                _kill_group(process.pid)
                break
            time.sleep(0.1)
        out.seek(0)
        output = out.read().decode("utf-8", "replace")
    return Ran(tuple(argv), cwd, process.returncode, output, timed_out, leaked)


def clean_env(venv: Path | None = None, **extra: str) -> dict[str, str]:
    """The outer environment (REQUIRE_REDIS, TEST_REDIS_URL, CI... pass through) minus
    pytest's own variables and interpreter paths, optionally "activating" `venv`."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in _DROPPED_ENV_NAMES and not name.startswith(_DROPPED_ENV_PREFIXES)
    }
    if venv is not None:
        env["VIRTUAL_ENV"] = str(venv)
        env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", os.defpath)])
    env.update(extra)
    return env


# --------------------------------------------------------------------------- shared env


@dataclass(frozen=True)
class ProjectEnv:
    """A virtualenv holding every dependency (runtime and dev) of a superset bake.

    Sharing it is honest: every bake's pyproject lists the template's dependencies minus
    those of unchosen features (see `test_dependencies_within_shared_env`), so each uses
    the same set or a subset. A bake's own pyproject is not trusted here to be complete:
    `test_fresh_install.py` installs real bakes into brand-new virtualenvs to prove it.
    """

    venv: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def run(self, project: Path, *args: str | Path, timeout: float = TOOL_TIMEOUT) -> Ran:
        """Run `args` in `project` with this env active and `project/src` importable."""
        env = clean_env(self.venv, PYTHONPATH=str(project / "src"), PYTHONDONTWRITEBYTECODE="1")
        return run(args, cwd=project, env=env, timeout=timeout)


def _env_key() -> str:
    """Rebuild the shared env whenever the template's dependencies or Python change."""
    digest = hashlib.sha256()
    digest.update((PROJECT_TEMPLATE / "pyproject.toml").read_bytes())
    digest.update(sys.version.encode())
    return digest.hexdigest()


def _env_cache_dir(config: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pytest's cache dir (kept between runs, git-ignored by pytest), else a temp dir
    shared by the xdist workers of this run."""
    cache_ = getattr(config, "cache", None)
    if isinstance(cache_, pytest.Cache):
        return cache_.mkdir("bake-env")
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if "PYTEST_XDIST_WORKER" in os.environ else base
    path = shared / "bake-env"
    path.mkdir(exist_ok=True)
    return path


@contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """An flock: xdist workers wait for each other, and a crashed holder releases it."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _checked(ran: Ran, what: str) -> None:
    if not ran.ok:
        raise RuntimeError(f"building the shared bake env failed at {what}:\n{ran.report()}")


def _build_env(venv: Path, work: Path) -> None:
    shutil.rmtree(venv, ignore_errors=True)
    _checked(run([sys.executable, "-m", "venv", str(venv)], cwd=work), "venv")
    python = venv / "bin" / "python"
    source = bake(work, **SUPERSET_ANSWERS)
    env = clean_env(venv)
    install: list[str | Path] = [python, "-m", "pip", "install", "-e", f"{source}[dev]"]
    _checked(run(install, cwd=source, env=env, timeout=INSTALL_TIMEOUT), "pip install")
    # Keep the dependencies, drop the project itself: each bake brings its own package via
    # PYTHONPATH, and none may import this copy by accident.
    uninstall: list[str | Path] = [python, "-m", "pip", "uninstall", "--yes", source.name]
    _checked(run(uninstall, cwd=work, env=env), "pip uninstall")


@pytest.fixture(scope="session")
def project_env(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> ProjectEnv:
    root = _env_cache_dir(request.config, tmp_path_factory)
    venv = root / "venv"
    key_file = root / "key"
    key = _env_key()
    failure_file = root / "failed"
    # Shared by the xdist workers of one run: a build that failed is not tried again in
    # the same run, but is in the next one.
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID", str(os.getpid()))
    with _exclusive_lock(root / "lock"):
        if failure_file.is_file():
            failed_run, _, report = failure_file.read_text().partition("\n")
            if failed_run == run_id:
                raise RuntimeError(report)
            failure_file.unlink()
        fresh = key_file.is_file() and key_file.read_text() == key
        if not (fresh and (venv / "bin" / "python").exists()):
            key_file.unlink(missing_ok=True)  # a half-built env must never look valid
            try:
                _build_env(venv, tmp_path_factory.mktemp("bake-env-source"))
            except RuntimeError as error:
                failure_file.write_text(f"{run_id}\n{error}")
                raise
            key_file.write_text(key)
    return ProjectEnv(venv)
