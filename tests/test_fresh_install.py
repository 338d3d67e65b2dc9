"""Install a generated project into a brand-new virtualenv exactly as its README says and
run its tests there: the shared env of the other tests cannot hide a dependency missing
from a bake's own pyproject.toml."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from conftest import INSTALL_TIMEOUT, Ran, bake, clean_env, run

# Distributions an inprocess bake must not pull in, directly or through another package.
CELERY_DISTRIBUTIONS = frozenset({"celery", "celery-types", "kombu", "redis"})


def distribution_names(pip_list_output: str) -> set[str]:
    """Names from `pip list --format=json`, whose output may also hold pip's notices."""
    for line in pip_list_output.splitlines():
        if line.startswith("[{") or line.strip() == "[]":
            return {str(entry["name"]).lower() for entry in json.loads(line)}
    raise AssertionError(f"no JSON in pip list output:\n{pip_list_output}")


def checked(ran: Ran) -> Ran:
    assert ran.ok, ran.report()
    return ran


def not_activated_env(tmp_path: Path) -> dict[str, str]:
    """A shell where no virtual environment is active: no folder on PATH holds ruff, mypy or
    pre-commit, so a hook that found them there would fail. pre-commit's own store and
    git's identity stay inside the test."""
    tools = ("ruff", "mypy", "pre-commit")
    path = [
        folder
        for folder in os.environ.get("PATH", os.defpath).split(os.pathsep)
        if folder and not any(shutil.which(tool, path=folder) for tool in tools)
    ]
    env = clean_env(PATH=os.pathsep.join(path), PRE_COMMIT_HOME=str(tmp_path / "pre-commit"))
    for role in ("AUTHOR", "COMMITTER"):
        env[f"GIT_{role}_NAME"] = "Test"
        env[f"GIT_{role}_EMAIL"] = "test@example.com"
    return env


def check_pre_commit(project: Path, package: str, tmp_path: Path) -> None:
    """The generated README's commands, right after setup, venv not activated: the hooks
    pass on the fresh project, and stop a commit that breaks ruff and mypy."""
    env = not_activated_env(tmp_path)
    assert shutil.which("ruff", path=env["PATH"]) is None
    pre_commit = project / ".venv" / "bin" / "pre-commit"
    checked(run(["git", "init", "--quiet"], project, env))
    checked(run(["git", "add", "--all"], project, env))
    checked(run([pre_commit, "install"], project, env))
    ran = checked(run([pre_commit, "run", "--all-files"], project, env, timeout=INSTALL_TIMEOUT))
    lines = ran.output.splitlines()
    for hook in ("ruff check", "ruff format", "mypy --strict"):
        passed = any(line.startswith(hook) and line.endswith("Passed") for line in lines)
        assert passed, f"{hook} did not run and pass:\n{ran.output}"
    checked(run(["git", "commit", "--quiet", "--message", "generated"], project, env))

    broken = project / "src" / package / "broken.py"
    broken.write_text('import os\n\nANSWER: int = "forty-two"\n')
    checked(run(["git", "add", str(broken)], project, env))
    refused = run(["git", "commit", "--quiet", "--message", "broken"], project, env)
    assert not refused.ok, "the commit hook let a ruff and mypy failure through"
    # ruff's unused import, and mypy's type error.
    assert "F401" in refused.output, refused.report()
    assert "Incompatible types in assignment" in refused.output, refused.report()


# Measured in CI: the install, the pre-commit checks and the whole suite, about 420 s
# for Celery (its suite alone about 290 s) and 200 s in-process.
@pytest.mark.parametrize(
    "job_backend",
    [
        pytest.param("celery", marks=pytest.mark.heavy(seconds=420)),
        pytest.param("inprocess", marks=pytest.mark.heavy(seconds=200)),
    ],
)
def test_fresh_install_runs_its_tests(tmp_path: Path, job_backend: str) -> None:
    project = bake(tmp_path, job_backend=job_backend)
    readme = (project / "README.md").read_text(encoding="utf-8")
    assert 'pip install -e ".[dev]"' in readme, "the README does not give the install command"
    venv = project / ".venv"
    env = clean_env(venv)  # activated: no PYTHONPATH, nothing from our own environment

    # The README's commands: python -m venv .venv && .venv/bin/pip install -e ".[dev]"
    checked(run([sys.executable, "-m", "venv", ".venv"], cwd=project, env=clean_env()))
    install: list[str | Path] = [venv / "bin" / "pip", "install", "-e", ".[dev]"]
    checked(run(install, cwd=project, env=env, timeout=INSTALL_TIMEOUT))

    check_pre_commit(project, "orders_service", tmp_path)

    # REQUIRE_REDIS and TEST_REDIS_URL pass through from our own environment.
    tests = checked(run([venv / "bin" / "pytest", "-q", "-p", "no:cacheprovider"], project, env))
    assert not tests.leaked, "the generated tests left processes running\n" + tests.report()

    listed = checked(run([venv / "bin" / "pip", "list", "--format=json"], project, env))
    installed = distribution_names(listed.output)
    if job_backend == "inprocess":
        unwanted = sorted(installed & CELERY_DISTRIBUTIONS)
        assert not unwanted, f"an inprocess project installed {unwanted}"
    else:
        assert {"celery", "redis"} <= installed


@pytest.mark.heavy(seconds=200)  # measured in CI: uv sync, lint, types, the in-process suite
def test_uv_sync_from_the_lock_and_make_check_without_activation(tmp_path: Path) -> None:
    """The README's uv path: `uv sync --locked` installs exactly the lock (an empty uv
    cache: nothing from this machine), then `make check` (lint, types, tests) runs from
    `.venv` with no environment activated."""
    project = bake(tmp_path, job_backend="inprocess")
    readme = (project / "README.md").read_text(encoding="utf-8")
    assert "uv sync --locked" in readme, "the README does not give the uv command"
    uv = shutil.which("uv", path=str(Path(sys.executable).parent))
    assert uv, "uv is missing: it belongs to requirements-dev.txt"
    env = clean_env(UV_CACHE_DIR=str(tmp_path / "uv-cache"), UV_PYTHON_DOWNLOADS="never")

    checked(run([uv, "sync", "--locked"], cwd=project, env=env, timeout=INSTALL_TIMEOUT))
    checks = checked(run(["make", "check"], cwd=project, env=env, timeout=INSTALL_TIMEOUT))
    assert "passed" in checks.output

    listed = checked(run([uv, "pip", "list", "--format=json"], cwd=project, env=env))
    installed = distribution_names(listed.output)
    assert {"fastapi", "pytest", "mypy", "ruff"} <= installed
    unwanted = sorted(installed & CELERY_DISTRIBUTIONS)
    assert not unwanted, f"an inprocess project installed {unwanted}"
