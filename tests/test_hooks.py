"""Unit tests of the hooks' pure functions, and of the feature manifest against the template."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
from conftest import PROJECT_TEMPLATE, TEMPLATE_DIR, load_hook

PRE = load_hook("pre_gen_project")
POST = load_hook("post_gen_project")

OPTIONS: dict[str, Any] = json.loads(
    (TEMPLATE_DIR / "cookiecutter.json").read_text(encoding="utf-8")
)


def default_answers() -> dict[str, Any]:
    """What a `--no-input` bake answers: the first choice of each list, plain defaults,
    and the derived names rendered by hand (options added later are picked up here)."""
    answers = {
        key: value[0] if isinstance(value, list) else value
        for key, value in OPTIONS.items()
        if not key.startswith("_")
    }
    answers.update(project_slug="orders-service", package_name="orders_service")
    return answers


GOOD_ANSWERS = default_answers()
REQUIREMENT_NAME_RE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def owned_paths(answers: dict[str, Any], chosen: bool) -> set[str]:
    """The manifest's paths (package name filled in) of the features that these answers
    choose (`chosen=True`) or do not choose."""
    return {
        path.format(package_name=answers["package_name"])
        for feature in POST.FEATURES
        if (answers.get(feature.option) in feature.values) is chosen
        for path in feature.paths
    }


def answers(**changes: Any) -> dict[str, Any]:
    return {**GOOD_ANSWERS, **changes}


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(pyproject_text: str) -> list[str]:
    project = tomllib.loads(pyproject_text)["project"]
    requirements = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        requirements.extend(extra)
    names = []
    for requirement in requirements:
        match = REQUIREMENT_NAME_RE.match(requirement)
        assert match, f"unparsable requirement {requirement!r}"
        names.append(normalized(match.group(1)))
    return names


# --------------------------------------------------------------------------- pre_gen_project


@pytest.mark.parametrize("slug", ["orders", "orders-service", "service-42", "a", "42", "a" * 64])
def test_good_slugs(slug: str) -> None:
    assert PRE.check_project_slug(slug) is None


@pytest.mark.parametrize(
    "slug",
    ["", "Orders", "orders_service", "-orders", "orders-", "orders--api", "orders api", "a" * 65],
)
def test_bad_slugs(slug: str) -> None:
    assert PRE.check_project_slug(slug) is not None


@pytest.mark.parametrize("name", ["orders_service", "service_42", "_orders", "app"])
def test_good_package_names(name: str) -> None:
    assert PRE.check_package_name(name) is None


@pytest.mark.parametrize(
    ("name", "rule_word"),
    [
        ("", "identifier"),
        ("42orders", "digit"),
        ("Orders", "lowercase"),
        ("orders-service", "identifier"),
        ("class", "keyword"),
        ("import", "keyword"),
        ("json", "standard"),
        ("logging", "standard"),
        ("celery", "dependency"),
        ("redis", "dependency"),
        ("fastapi", "dependency"),
        ("starlette", "dependency"),
        ("pydantic", "dependency"),
        ("test", "shadow"),
        ("tests", "shadow"),
    ],
)
def test_bad_package_names(name: str, rule_word: str) -> None:
    problem = PRE.check_package_name(name)
    assert problem is not None
    assert rule_word in problem


@pytest.mark.parametrize("email", ["you@example.com", "first.last+tag@mail.example.org"])
def test_good_emails(email: str) -> None:
    assert PRE.check_email(email) is None


@pytest.mark.parametrize("email", ["", "you", "you@", "@example.com", "you@example", "a b@c.de"])
def test_bad_emails(email: str) -> None:
    assert PRE.check_email(email) is not None


@pytest.mark.parametrize("version", ["0.1.0", "1", "1.2", "2.0.0rc1", "1.0.post1", "1.0.dev3"])
def test_good_versions(version: str) -> None:
    assert PRE.check_version(version) is None


@pytest.mark.parametrize("version", ["", "v1.0", "one.two", "1.2.3.4.5", "1.0-beta", "1..0"])
def test_bad_versions(version: str) -> None:
    assert PRE.check_version(version) is not None


def test_first_error_accepts_good_answers() -> None:
    assert PRE.first_error(GOOD_ANSWERS) is None


def test_first_error_names_option_value_and_rule_on_one_line() -> None:
    message = PRE.first_error(answers(package_name="json"))
    assert message is not None
    assert "\n" not in message
    assert message.startswith("package_name=")
    assert "'json'" in message
    assert PRE.check_package_name("json") in message


def test_first_error_reports_the_slug_before_its_derived_package_name() -> None:
    message = PRE.first_error(answers(project_slug="Bad_Slug", package_name="Bad_Slug"))
    assert message is not None
    assert message.startswith("project_slug=")


def test_first_error_rejects_non_text() -> None:
    message = PRE.first_error(answers(version=1))
    assert message is not None
    assert message.startswith("version=")


def test_pre_hook_main_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert PRE.main(GOOD_ANSWERS) == 0
    assert PRE.main(answers(author_email="nope")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "author_email" in err


# --------------------------------------------------------------------------- post_gen_project


ANSWER_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "inprocess-auth-proprietary": {
        "job_backend": "inprocess",
        "use_bearer_auth": True,
        "license": "Proprietary",
    },
    "celery-auth-bsd": {
        "job_backend": "celery",
        "use_bearer_auth": True,
        "license": "BSD-3-Clause",
    },
    "other-package": {"package_name": "billing", "job_backend": "inprocess"},
}


@pytest.mark.parametrize("changes", [pytest.param(v, id=k) for k, v in ANSWER_SETS.items()])
def test_paths_to_remove_is_what_unchosen_features_own(changes: dict[str, Any]) -> None:
    chosen = answers(**changes)
    removed = POST.paths_to_remove(chosen)
    assert len(removed) == len(set(removed)), f"a path is removed twice: {removed}"
    assert set(removed) == owned_paths(chosen, chosen=False) - owned_paths(chosen, chosen=True)


def test_paths_to_remove_spot_checks() -> None:
    """Literal paths, so the manifest cannot drift away from what the options promise."""
    default = POST.paths_to_remove(GOOD_ANSWERS)
    assert "src/orders_service/middleware/bearer_auth.py" in default
    assert "src/orders_service/worker.py" not in default
    assert "LICENSE" not in default
    lean = POST.paths_to_remove(answers(**ANSWER_SETS["inprocess-auth-proprietary"]))
    assert "src/orders_service/worker.py" in lean
    assert "LICENSE" in lean
    assert "src/orders_service/middleware/bearer_auth.py" not in lean
    assert "src/billing/worker.py" in POST.paths_to_remove(answers(**ANSWER_SETS["other-package"]))


def test_string_boolean_does_not_count_as_chosen() -> None:
    """Only a real boolean switches a feature on; cookiecutter must deliver one."""
    assert "tests/test_bearer_auth.py" in POST.paths_to_remove(answers(use_bearer_auth="true"))
    env_text = POST.local_env_file(answers(use_bearer_auth="true")) or ""
    assert "API_TOKEN" not in env_text


def test_dependencies_to_remove() -> None:
    assert POST.dependencies_to_remove(GOOD_ANSWERS) == []
    removed = POST.dependencies_to_remove(answers(job_backend="inprocess"))
    assert sorted(removed) == ["celery", "celery-types", "redis"]


SAMPLE_PYPROJECT = """\
[project]
name = "x"
# celery is the default job backend
dependencies = [
    "fastapi>=0.165,<1",
    "celery[redis]>=5.7,<6",
    "Redis>=8.1",
    "redis-om>=1",
]

[project.optional-dependencies]
dev = [
    "pytest==9.2.0",
    "celery-types==0.26.0",
]
"""


def test_without_dependencies_removes_only_named_lines() -> None:
    result = POST.without_dependencies(SAMPLE_PYPROJECT, ["celery", "redis", "celery-types"])
    assert requirement_names(result) == ["fastapi", "redis-om", "pytest"]
    assert "# celery is the default job backend" in result  # comments are not dependencies


def test_without_dependencies_nothing_to_remove() -> None:
    assert POST.without_dependencies(SAMPLE_PYPROJECT, []) == SAMPLE_PYPROJECT


def test_without_dependencies_on_the_template_pyproject() -> None:
    template = (PROJECT_TEMPLATE / "pyproject.toml").read_text(encoding="utf-8")
    removed = POST.dependencies_to_remove(answers(job_backend="inprocess"))
    before = requirement_names(template)
    after = requirement_names(POST.without_dependencies(template, removed))
    assert after == [name for name in before if name not in {normalized(r) for r in removed}]


def env_values(text: str | None, name: str) -> list[str]:
    lines = (text or "").splitlines()
    return [line.removeprefix(f"{name}=") for line in lines if line.startswith(f"{name}=")]


def test_local_env_file_without_secrets() -> None:
    assert POST.local_env_file(answers(job_backend="inprocess", use_bearer_auth=False)) is None


def test_local_env_file_has_a_fresh_api_token() -> None:
    lean = answers(job_backend="inprocess", use_bearer_auth=True)
    tokens = [
        token for _ in range(2) for token in env_values(POST.local_env_file(lean), "API_TOKEN")
    ]
    assert len(tokens) == 2
    assert all(len(token) >= 32 for token in tokens)
    assert tokens[0] != tokens[1]


def test_local_env_file_has_no_api_token_without_bearer_auth() -> None:
    for backend in ("celery", "inprocess"):
        text = POST.local_env_file(answers(job_backend=backend, use_bearer_auth=False))
        assert env_values(text, "API_TOKEN") == []


# --------------------------------------------------------------------------- the manifest


def template_path(path: str) -> str:
    return path.format(package_name="{{cookiecutter.package_name}}")


@pytest.mark.parametrize(
    "path", [pytest.param(p, id=p) for feature in POST.FEATURES for p in feature.paths]
)
def test_feature_path_exists_in_template(path: str) -> None:
    assert (PROJECT_TEMPLATE / template_path(path)).exists(), f"{path} is not in the template"


@pytest.mark.parametrize(
    "dependency",
    [pytest.param(d, id=d) for feature in POST.FEATURES for d in feature.dependencies],
)
def test_feature_dependency_is_in_template_pyproject(dependency: str) -> None:
    template = (PROJECT_TEMPLATE / "pyproject.toml").read_text(encoding="utf-8")
    assert normalized(dependency) in requirement_names(template)


def test_feature_options_match_cookiecutter_json() -> None:
    for feature in POST.FEATURES:
        assert feature.option in OPTIONS, f"{feature.option} is not a template option"
        default = OPTIONS[feature.option]
        allowed = default if isinstance(default, list) else [True, False]
        unknown = [value for value in feature.values if value not in allowed]
        assert not unknown, f"{feature.option}: values {unknown} are not among {allowed}"


def test_project_name_length_is_capped() -> None:
    assert PRE.check_project_name("x" * PRE.MAX_NAME_LENGTH) is None
    assert (
        PRE.check_project_name("x" * (PRE.MAX_NAME_LENGTH + 1)) == "must be at most 72 characters"
    )


def test_local_env_file_has_a_flower_password_for_celery_only() -> None:
    celery = POST.local_env_file({"job_backend": "celery", "use_bearer_auth": False})
    assert celery is not None
    assert re.search(r"^FLOWER_PASSWORD=\S{24,}$", celery, flags=re.MULTILINE)
    assert POST.local_env_file({"job_backend": "inprocess", "use_bearer_auth": False}) is None


def test_update_record_keeps_answers_and_drops_private_keys() -> None:
    answers = {
        "project_name": "Orders",
        "_template": "/templates/fastapi",
        "_template_version": "0.1.0",
        "_output_dir": "/tmp/out",
        "_repo_dir": "/tmp/checkout",
        "_checkout": None,
    }
    record = POST.update_record(answers, "a" * 40)
    assert record["template"] == "/templates/fastapi"
    assert record["commit"] == "a" * 40
    assert record["context"]["cookiecutter"] == {
        "project_name": "Orders",
        "_template": "/templates/fastapi",
        "_template_version": "0.1.0",
    }
    assert record["skip"] == [".env"]


def test_template_commit_reads_a_local_git_checkout(tmp_path: Path) -> None:
    assert POST.template_commit(None) is None
    assert POST.template_commit(str(tmp_path)) is None  # not a repository
    identity = ["-c", "user.name=T", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(
        ["git", *identity, "-C", str(tmp_path), "commit", "-q", "--allow-empty", "-m", "v1"],
        check=True,
    )
    head = subprocess.run(
        ["git", "-C", str(tmp_path), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert POST.template_commit(str(tmp_path)) == head
