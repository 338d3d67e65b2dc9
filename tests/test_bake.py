"""Bake every option combination and edge answer; check each bake is a finished project.

Each case is baked once per session (see `Bakery`); every check is its own test so a
failure names exactly what is wrong with which bake.
"""

from __future__ import annotations

import json
import re
import stat
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]
from conftest import (
    CASES,
    SUPERSET_ANSWERS,
    TEMPLATE_DIR,
    Baked,
    Bakery,
    Case,
    ProjectEnv,
    bake,
    mentions,
    text_files,
)

# Jinja left unrendered. GitHub Actions' `${{ ... }}` is legitimate output.
LEFTOVER_RE = re.compile(r"(?<!\$)\{\{|\{%|\{#")
CELERY_RE = re.compile(r"celery|redis|rabbit|amqp", re.IGNORECASE)
# What each auth answer must not leave behind in a bake of another answer.
ANY_AUTH_RE = re.compile(r"api_token|bearer|jwt|jwks", re.IGNORECASE)
JWT_RE = re.compile(r"jwt|jwks|require_scopes", re.IGNORECASE)
STATIC_TOKEN_RE = re.compile(r"api_token|bearer_auth|BearerAuthMiddleware|TokenHolder|fingerprint")
OTEL_RE = re.compile(r"opentelemetry|otel_|traceparent|trace_id|span_id|tracing", re.IGNORECASE)
# FastAPI itself depends on the OpenTelemetry API (for its own optional telemetry), so
# every lock names that one package; nothing else of OpenTelemetry may be there.
FASTAPI_OTEL_API_RE = re.compile(r'"opentelemetry-api"|opentelemetry_api-')
REQUIREMENT_NAME_RE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
MAX_LISTED = 40  # offending lines shown in a failure message


def case_params(
    predicate: Callable[[Case], bool] = lambda case: True,
    seconds: Callable[[Case], float] | None = None,
) -> list[Any]:
    """One param per case that `predicate` accepts; `seconds` estimates a heavy test's
    duration per case, for the longest-first ordering in conftest."""
    return [
        pytest.param(
            case,
            id=case.id,
            marks=[pytest.mark.heavy(seconds=seconds(case))] if seconds else [],
        )
        for case in CASES
        if predicate(case)
    ]


def suite_seconds(case: Case) -> float:
    """Measured in CI (2 cores, both xdist workers busy): a Celery bake's whole suite, with
    real workers, beat and Redis outages, about 290 s; an in-process one about 100 s."""
    if case.suite:
        return 60
    return 290 if case.job_backend != "inprocess" else 100


def files_text(baked: Baked) -> Iterator[tuple[Path, str]]:
    return text_files(baked.path, baked.files)


def listing(lines: list[str]) -> str:
    shown = "\n".join(lines[:MAX_LISTED])
    more = len(lines) - MAX_LISTED
    return shown + (f"\n... and {more} more" if more > 0 else "")


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dependency_names(pyproject: Path) -> set[str]:
    """Every distribution named in [project] dependencies and optional-dependencies."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    requirements = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        requirements.extend(extra)
    names = set()
    for requirement in requirements:
        match = REQUIREMENT_NAME_RE.match(requirement)
        assert match, f"unparsable requirement {requirement!r} in {pyproject}"
        names.add(normalized(match.group(1)))
    return names


# --------------------------------------------------------------------------- generation


@pytest.mark.parametrize("case", case_params())
def test_generation_succeeds(bakery: Bakery, case: Case) -> None:
    baked = bakery.get(case)
    assert baked.path.name == case.slug
    assert baked.path.name.isascii()
    assert (baked.path / "pyproject.toml").is_file()
    assert (baked.path / "src" / case.package_name / "__init__.py").is_file()


@pytest.mark.parametrize("case", case_params())
def test_no_template_leftovers(bakery: Bakery, case: Case) -> None:
    baked = bakery.get(case)
    # Recorded answers included: a leftover there would be an unrendered default.
    leftovers = mentions(baked.path, baked.files, LEFTOVER_RE, skip_recorded_answers=False)
    assert not leftovers, "unrendered template syntax:\n" + listing(leftovers)


PARSERS: dict[str, Callable[[str], object]] = {
    ".toml": tomllib.loads,
    ".yaml": lambda text: list(yaml.safe_load_all(text)),
    ".yml": lambda text: list(yaml.safe_load_all(text)),
    ".json": json.loads,
}


@pytest.mark.parametrize("case", case_params())
def test_structured_files_parse(bakery: Bakery, case: Case) -> None:
    errors = []
    for relative, text in files_text(bakery.get(case)):
        parse = PARSERS.get(relative.suffix)
        if parse is None:
            continue
        try:
            parse(text)
        except Exception as error:  # each parser has its own error type
            errors.append(f"{relative}: {type(error).__name__}: {error}")
    assert not errors, "files that do not parse:\n" + "\n".join(errors)


@pytest.mark.parametrize("case", case_params())
def test_dependencies_within_shared_env(bakery: Bakery, tmp_path: Path, case: Case) -> None:
    """What makes sharing `project_env` honest: no bake needs a package it lacks."""
    superset = bake(tmp_path, **SUPERSET_ANSWERS) / "pyproject.toml"
    extra = dependency_names(bakery.get(case).path / "pyproject.toml") - dependency_names(superset)
    assert not extra, f"dependencies missing from the shared env: {sorted(extra)}"


# --------------------------------------------------------------------------- tools


@pytest.mark.parametrize("case", case_params())
def test_ruff_check(bakery: Bakery, project_env: ProjectEnv, case: Case) -> None:
    ran = project_env.run(bakery.get(case).path, project_env.venv / "bin" / "ruff", "check", ".")
    assert ran.ok, ran.report()


@pytest.mark.parametrize("case", case_params())
def test_ruff_format(bakery: Bakery, project_env: ProjectEnv, case: Case) -> None:
    ruff = project_env.venv / "bin" / "ruff"
    ran = project_env.run(bakery.get(case).path, ruff, "format", "--check", ".")
    assert ran.ok, ran.report()


@pytest.mark.parametrize("case", case_params(seconds=lambda case: 15))
def test_mypy(bakery: Bakery, project_env: ProjectEnv, case: Case) -> None:
    ran = project_env.run(bakery.get(case).path, project_env.python, "-m", "mypy")
    assert ran.ok, ran.report()


@pytest.mark.parametrize("case", case_params(seconds=suite_seconds))
def test_generated_tests_pass(bakery: Bakery, project_env: ProjectEnv, case: Case) -> None:
    """Through the generated Makefile (`make test` runs `pytest`), so its target is
    exercised too. REQUIRE_REDIS and TEST_REDIS_URL pass through from our environment."""
    # A case with a suite of its own runs its files through pytest, as `make test` does.
    pytest_bin = str(project_env.venv / "bin" / "pytest")
    command = (pytest_bin, *case.suite) if case.suite else ("make", "test")
    ran = project_env.run(bakery.get(case).path, *command)
    assert ran.ok, ran.report()
    assert not ran.leaked, "the generated tests left processes running\n" + ran.report()


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize("case", case_params(lambda case: case.job_backend == "inprocess"))
def test_inprocess_has_no_celery_or_redis(bakery: Bakery, case: Case) -> None:
    """Contract: inprocess generates no Celery or Redis code, dependency, setting, doc line
    or compose service."""
    baked = bakery.get(case)
    found = mentions(baked.path, baked.files, CELERY_RE)
    assert not found, "Celery/Redis traces in an inprocess bake:\n" + listing(found)


def auth_mentions(baked: Baked, pattern: re.Pattern[str]) -> list[str]:
    """`mentions`, less the template's own location in `.cruft.json` (a checkout may sit
    in a folder named after a branch, such as `jwt`)."""
    location = str(TEMPLATE_DIR)
    return [line for line in mentions(baked.path, baked.files, pattern) if location not in line]


@pytest.mark.parametrize("case", case_params(lambda case: case.auth == "none"))
def test_no_auth_traces_without_auth(bakery: Bakery, case: Case) -> None:
    baked = bakery.get(case)
    found = auth_mentions(baked, ANY_AUTH_RE)
    assert not found, "auth traces with auth=none:\n" + listing(found)


@pytest.mark.parametrize("case", case_params(lambda case: case.auth == "token"))
def test_no_jwt_traces_with_token_auth(bakery: Bakery, case: Case) -> None:
    baked = bakery.get(case)
    found = auth_mentions(baked, JWT_RE)
    assert not found, "JWT traces with auth=token:\n" + listing(found)


@pytest.mark.parametrize("case", case_params(lambda case: case.auth == "jwt"))
def test_no_static_token_traces_with_jwt_auth(bakery: Bakery, case: Case) -> None:
    baked = bakery.get(case)
    found = auth_mentions(baked, STATIC_TOKEN_RE)
    assert not found, "static-token traces with auth=jwt:\n" + listing(found)


@pytest.mark.parametrize("case", case_params(lambda case: not case.opentelemetry))
def test_no_opentelemetry_traces(bakery: Bakery, case: Case) -> None:
    """Contract: without use_opentelemetry, no OpenTelemetry code, dependency or doc line."""
    baked = bakery.get(case)
    found = [
        line
        for line in mentions(baked.path, baked.files, OTEL_RE)
        if not (line.startswith("uv.lock:") and FASTAPI_OTEL_API_RE.search(line))
    ]
    assert not found, "OpenTelemetry traces with use_opentelemetry=false:\n" + listing(found)


def api_token(project: Path) -> str:
    env_file = project / ".env"
    assert env_file.is_file(), f"no .env in {project}"
    mode = stat.S_IMODE(env_file.stat().st_mode)
    assert mode == 0o600, f".env has mode {mode:o}, expected 600"
    tokens = [
        line.partition("=")[2].strip()
        for line in env_file.read_text(encoding="utf-8").splitlines()
        if line.startswith("API_TOKEN=")
    ]
    assert len(tokens) == 1, f".env should set API_TOKEN once:\n{env_file.read_text()}"
    return tokens[0]


@pytest.mark.parametrize("case", case_params(lambda case: case.auth == "token"))
def test_bearer_auth_env_file(bakery: Bakery, tmp_path: Path, case: Case) -> None:
    baked = bakery.get(case)
    token = api_token(baked.path)
    assert len(token) >= 32, f"API_TOKEN is only {len(token)} characters"
    other = api_token(bake(tmp_path, **case.answers))
    assert token != other, "two bakes got the same API_TOKEN"


@pytest.mark.parametrize("case", case_params())
def test_secrets_file_is_private(bakery: Bakery, case: Case) -> None:
    """Whatever secrets a bake gets, they are readable by the owner only and never committed."""
    baked = bakery.get(case)
    env_file = baked.path / ".env"
    if not env_file.exists():
        return
    mode = stat.S_IMODE(env_file.stat().st_mode)
    assert mode == 0o600, f".env has mode {mode:o}, expected 600"
    ignored = (baked.path / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert ".env" in ignored, "the secret .env is not git-ignored"


def test_project_name_with_apostrophe_bakes(tmp_path: Path) -> None:
    """An apostrophe is allowed by the hook; it must not break quoting anywhere."""
    project = bake(tmp_path, project_name="O'Reilly's Service")
    assert project.name == "o-reilly-s-service"
    tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))
    for source in project.rglob("*.py"):
        compile(source.read_text(encoding="utf-8"), str(source), "exec")
