"""Bad answers stop generation in the pre-generation hook: one line naming the option, the
value and the rule, and nothing left in the output folder. Also how cookiecutter's real
command line hands booleans to the template."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    TEMPLATE_DIR,
    bake,
    clean_env,
    cookiecutter_config,
    load_hook,
    mentions,
    project_files,
    run,
)
from cookiecutter.exceptions import FailedHookException  # type: ignore[import-untyped]

PRE = load_hook("pre_gen_project")
POST = load_hook("post_gen_project")
RULES: dict[str, Callable[[str], str | None]] = dict(PRE.CHECKS)

# (id, answers, option reported, value reported, a word of the rule a person would expect)
BAD_ANSWERS: list[tuple[str, dict[str, Any], str, str, str]] = [
    ("slug-uppercase", {"project_slug": "Orders"}, "project_slug", "Orders", "lowercase"),
    ("slug-underscore", {"project_slug": "orders_api"}, "project_slug", "orders_api", "dash"),
    ("slug-leading-dash", {"project_slug": "-orders"}, "project_slug", "-orders", "dash"),
    # The example: the offered package name is now `payments_api`, but the slug the
    # user typed is still wrong, and is what the message names.
    ("slug-space", {"project_slug": "payments api"}, "project_slug", "payments api", "dash"),
    ("package-keyword", {"package_name": "class"}, "package_name", "class", "keyword"),
    ("package-stdlib", {"package_name": "json"}, "package_name", "json", "standard"),
    ("package-celery", {"package_name": "celery"}, "package_name", "celery", "dependency"),
    ("package-fastapi", {"package_name": "fastapi"}, "package_name", "fastapi", "dependency"),
    ("package-redis", {"package_name": "redis"}, "package_name", "redis", "dependency"),
    ("package-digit", {"package_name": "1orders"}, "package_name", "1orders", "digit"),
    ("package-typed-2fa", {"package_name": "2fa_service"}, "package_name", "2fa_service", "digit"),
    ("email", {"author_email": "not-an-email"}, "author_email", "not-an-email", "@"),
    ("version", {"version": "one.two"}, "version", "one.two", "version"),
]


def hook_lines(capfd: pytest.CaptureFixture[str]) -> list[str]:
    captured = capfd.readouterr()
    return [line for line in (captured.out + captured.err).splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("answers", "option", "value", "rule_word"),
    [pytest.param(*rest, id=case_id) for case_id, *rest in BAD_ANSWERS],
)
def test_bad_answer_stops_generation(
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    answers: dict[str, Any],
    option: str,
    value: str,
    rule_word: str,
) -> None:
    with pytest.raises(FailedHookException):
        bake(tmp_path, **answers)
    assert list(tmp_path.iterdir()) == [], "generation left files behind"
    lines = hook_lines(capfd)
    assert len(lines) == 1, "expected one line:\n" + "\n".join(lines)
    message = lines[0]
    rule = RULES[option](value)
    assert rule is not None, f"the hook's own rule accepts {option}={value!r}"
    assert option in message
    assert value in message
    assert rule in message
    assert rule_word in message.lower()


def test_bad_slug_is_reported_before_the_package_name_it_derives(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """ "Bad_Slug" derives the invalid package "Bad_Slug": name what the user typed."""
    with pytest.raises(FailedHookException):
        bake(tmp_path, project_slug="Bad_Slug")
    assert list(tmp_path.iterdir()) == []
    lines = hook_lines(capfd)
    assert len(lines) == 1, "expected one line:\n" + "\n".join(lines)
    assert "project_slug" in lines[0]
    assert "Bad_Slug" in lines[0]
    assert "package_name" not in lines[0]


@pytest.mark.parametrize(
    ("answers", "slug", "package"),
    [
        pytest.param({"project_name": "Email"}, "email", "email_service", id="stdlib-name"),
        pytest.param({"project_slug": "celery"}, "celery", "celery_service", id="dependency-slug"),
    ],
)
def test_derived_names_pass_the_hook_in_a_real_bake(
    tmp_path: Path, answers: dict[str, Any], slug: str, package: str
) -> None:
    """A name whose plain derivation the hook would reject (`email` shadows the standard
    library, `celery` a dependency) gets a valid default instead of a failed generation.
    The leading-digit case (`2FA Service`) is a full bake in conftest.CASES."""
    project = bake(tmp_path, job_backend="inprocess", **answers)
    assert project.name == slug
    assert (project / "src" / package / "__init__.py").is_file()
    recorded = json.loads((project / ".cruft.json").read_text())["context"]["cookiecutter"]
    assert (recorded["project_slug"], recorded["package_name"]) == (slug, package)


def bearer_paths(project: Path, package_name: str) -> list[Path]:
    feature = next(f for f in POST.FEATURES if f.option == "auth" and f.values == ("token",))
    return [project / path.format(package_name=package_name) for path in feature.paths]


@pytest.mark.parametrize("choice", ["none", "token"])
def test_command_line_auth_choice(tmp_path: Path, choice: str) -> None:
    """`auth=token` typed on the command line picks the token files, `auth=none` none of
    them (the choice replaced the boolean `use_bearer_auth`)."""
    args: list[str | Path] = [
        sys.executable,
        "-m",
        "cookiecutter",
        "--no-input",
        "--config-file",
        cookiecutter_config(),
        "-o",
        tmp_path,
        TEMPLATE_DIR,
        f"auth={choice}",
        "job_backend=inprocess",
    ]
    ran = run(args, cwd=tmp_path, env=clean_env(), timeout=120)
    assert ran.ok, ran.report()
    project = tmp_path / "orders-service"
    paths = [*bearer_paths(project, "orders_service"), project / ".env"]
    if choice == "token":
        missing = [str(path) for path in paths if not path.exists()]
        assert not missing, f"bearer-auth files missing: {missing}"
        return
    present = [str(path) for path in paths if path.exists()]
    assert not present, f"bearer-auth files generated with auth=none: {present}"
    found = mentions(project, project_files(project), re.compile(r"api_token|bearer", re.I))
    assert not found, "bearer-auth traces with auth=none:\n" + "\n".join(found)
