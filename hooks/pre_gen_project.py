"""Validate the answers before cookiecutter writes anything.

Each rule is a small pure function that returns an error message or None, so the
template's tests can call them directly. `main` checks the answers in the order the
user gave them (a bad slug is reported before the package name derived from it) and
ends generation with one line: the option, the value and the rule. cookiecutter then
removes the half-made output folder. No network, no third-party imports.
"""

from __future__ import annotations

import json
import keyword
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any

SLUG_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
PACKAGE_RE = re.compile(r"^[a-z_][a-z0-9_]*$")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")
VERSION_RE = re.compile(r"^\d+(\.\d+){0,2}((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?$")
MAX_SLUG_LENGTH = 64
# The name lands in Python source (the app title); longer would break the line limit.
MAX_NAME_LENGTH = 72

# Import names the generated project installs or uses: a package named like one of
# them would shadow it (`import celery` inside the service would import itself).
DEPENDENCY_IMPORT_NAMES = frozenset(
    {
        "amqp", "annotated_types", "anyio", "billiard", "celery", "click", "dotenv",
        "fastapi", "h11", "httptools", "httpx", "httpx2", "idna", "kombu", "mypy",
        "pydantic", "pydantic_core", "pydantic_settings", "pytest", "redis", "ruff",
        "sniffio", "starlette", "typing_extensions", "uvicorn", "uvloop", "vine",
        "watchfiles", "websockets", "yaml", "tests", "test",
    }
)  # fmt: skip

# Characters that would break the TOML and Markdown files the answers land in.
UNSAFE_TEXT_RE = re.compile(r'["\\\n\r\t]')


def check_project_name(value: str) -> str | None:
    if not value.strip():
        return "must not be empty"
    if UNSAFE_TEXT_RE.search(value):
        return "must be one line without double quotes or backslashes"
    if len(value) > MAX_NAME_LENGTH:
        return f"must be at most {MAX_NAME_LENGTH} characters"
    return None


def check_project_slug(value: str) -> str | None:
    if not SLUG_RE.match(value):
        return (
            "must be lowercase letters, digits and single dashes, "
            "not starting or ending with a dash"
        )
    if len(value) > MAX_SLUG_LENGTH:
        return f"must be at most {MAX_SLUG_LENGTH} characters"
    return None


def check_package_name(value: str) -> str | None:
    if not PACKAGE_RE.match(value):
        return (
            "must be a Python identifier of lowercase letters, digits and "
            "underscores, not starting with a digit"
        )
    if keyword.iskeyword(value):
        return "must not be a Python keyword"
    if value in sys.stdlib_module_names:
        return "must not shadow a standard-library module"
    if value in DEPENDENCY_IMPORT_NAMES:
        return "must not shadow a dependency of the generated project"
    return None


def check_email(value: str) -> str | None:
    return None if EMAIL_RE.match(value) else "must look like name@example.com"


def check_version(value: str) -> str | None:
    return None if VERSION_RE.match(value) else "must be a version like 0.1.0"


def check_one_line(value: str) -> str | None:
    if UNSAFE_TEXT_RE.search(value):
        return "must be one line without double quotes or backslashes"
    return None


# Order matters: the first failing rule is the one reported.
CHECKS: tuple[tuple[str, Callable[[str], str | None]], ...] = (
    ("project_name", check_project_name),
    ("project_slug", check_project_slug),
    ("package_name", check_package_name),
    ("description", check_one_line),
    ("author_name", check_one_line),
    ("author_email", check_email),
    ("version", check_version),
)


def first_error(answers: Mapping[str, Any]) -> str | None:
    """The one-line message for the first bad answer, or None when all are good."""
    for option, check in CHECKS:
        value = answers.get(option)
        if not isinstance(value, str):
            return f"{option}={value!r}: must be text"
        problem = check(value)
        if problem is not None:
            return f"{option}={value!r}: {problem}"
    return None


def main(answers: Mapping[str, Any]) -> int:
    error = first_error(answers)
    if error is not None:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    # cookiecutter renders this file before running it; the answers arrive as JSON in
    # a raw string (tojson escapes every ', so the literal cannot be closed early).
    sys.exit(main(json.loads(r'''{{ cookiecutter | tojson }}''')))  # fmt: skip
