"""Unit tests of the hooks' pure functions, and of the feature manifest against the template."""

from __future__ import annotations

import json
import keyword
import os
import re
import stat
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from conftest import HOOKS_DIR, PROJECT_TEMPLATE, TEMPLATE_DIR, load_hook
from cookiecutter.environment import StrictEnvironment  # type: ignore[import-untyped]
from cookiecutter.prompt import render_variable  # type: ignore[import-untyped]

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


# --------------------------------------------------------------------------- derived defaults


def derived(option: str, **earlier: str) -> str:
    """The default cookiecutter offers for `option` at its prompt, rendered by cookiecutter's
    own code from cookiecutter.json, given the answers before it."""
    env = StrictEnvironment(context={"cookiecutter": OPTIONS})
    return str(render_variable(env, OPTIONS[option], dict(earlier)))


def derived_names(project_name: str) -> tuple[str, str]:
    slug = derived("project_slug", project_name=project_name)
    return slug, derived("package_name", project_name=project_name, project_slug=slug)


# Import names a package must not take; only those a slug can turn into matter here.
RESERVED_NAMES = sorted(
    name
    for name in {*keyword.kwlist, *PRE.DEPENDENCY_IMPORT_NAMES, *sys.stdlib_module_names}
    if PRE.PACKAGE_RE.match(name) and not name.startswith("_")
)


@pytest.mark.parametrize(
    ("project_name", "slug", "package"),
    [
        ("Orders Service", "orders-service", "orders_service"),
        ("Payments API", "payments-api", "payments_api"),
        ("2FA Service", "2fa-service", "app_2fa_service"),
        ("42", "42", "app_42"),
        ("Email", "email", "email_service"),
        ("Celery", "celery", "celery_service"),
        ("Class", "class", "class_service"),
        ("Tests", "tests", "tests_service"),
        ("Café Ünïcode Service", "cafe-unicode-service", "cafe_unicode_service"),
        ("  --Über   Service 2026!--  ", "uber-service-2026", "uber_service_2026"),
    ],
)
def test_derived_defaults(project_name: str, slug: str, package: str) -> None:
    assert derived_names(project_name) == (slug, package)
    assert PRE.check_project_slug(slug) is None
    assert PRE.check_package_name(package) is None


def test_derived_slug_of_the_longest_name_fits() -> None:
    name = "Northwind Logistics Realtime Shipment Tracking Gateway Service Plus Xtra"
    assert len(name) == PRE.MAX_NAME_LENGTH
    assert PRE.check_project_name(name) is None
    slug, package = derived_names(name)
    assert slug == "northwind-logistics-realtime-shipment-tracking-gateway-service"
    assert PRE.check_project_slug(slug) is None
    assert PRE.check_package_name(package) is None


@pytest.mark.parametrize(
    ("slug", "package"),
    [("payments api", "payments_api"), ("orders-service", "orders_service"), ("Orders", "orders")],
)
def test_package_name_derived_from_a_typed_slug(slug: str, package: str) -> None:
    """Even from a slug the user typed wrong (reported first, see test_bad_answers) the
    offered package name is an identifier, never `payments api`."""
    assert derived("package_name", project_slug=slug) == package


def test_every_reserved_name_as_slug_derives_a_valid_package_name() -> None:
    """Keywords, standard-library modules and dependencies: cookiecutter.json's list must
    hold every name the hook rejects, or its default would be rejected."""
    assert "json" in RESERVED_NAMES
    assert "celery" in RESERVED_NAMES
    rejected = {}
    for name in RESERVED_NAMES:
        package = derived("package_name", project_slug=name.replace("_", "-"))
        problem = PRE.check_package_name(package)
        if problem is not None:
            rejected[name] = f"{package}: {problem}"
    assert not rejected, f"derived defaults the hook rejects: {rejected}"


def test_user_typed_package_names_are_still_checked() -> None:
    """The derived default is only a default: what the user types goes through the rules."""
    errors = {
        name: PRE.first_error(answers(package_name=name))
        for name in ("2fa_service", "email", "celery", "payments api")
    }
    assert all(error is not None and error.startswith("package_name=") for error in errors.values())


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
        "auth": "token",
        "license": "Proprietary",
    },
    "celery-auth-bsd": {
        "job_backend": "celery",
        "auth": "token",
        "license": "BSD-3-Clause",
    },
    "other-package": {"package_name": "billing", "job_backend": "inprocess"},
    "celery-jwt": {"job_backend": "celery", "auth": "jwt"},
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


def test_each_auth_choice_keeps_its_own_files_only() -> None:
    token_files = {"src/orders_service/middleware/bearer_auth.py", "tests/test_bearer_auth.py"}
    jwt_files = {"src/orders_service/middleware/jwt_auth.py", "tests/test_jwt_auth.py"}
    shared = {"src/orders_service/api/security.py"}
    removed = {choice: set(POST.paths_to_remove(answers(auth=choice))) for choice in AUTHS}
    assert token_files | jwt_files | shared <= removed["none"]
    assert jwt_files <= removed["token"]
    assert not (token_files | shared) & removed["token"]
    assert token_files <= removed["jwt"]
    assert not (jwt_files | shared) & removed["jwt"]
    assert "pyjwt" in POST.dependencies_to_remove(answers(auth="token"))
    assert "pyjwt" not in POST.dependencies_to_remove(answers(auth="jwt"))


AUTHS = ("none", "token", "jwt")


OTEL_DEPENDENCIES = [
    "opentelemetry-exporter-otlp-proto-http",
    "opentelemetry-instrumentation-asgi",
    "opentelemetry-instrumentation-celery",
    "opentelemetry-sdk",
]


def test_dependencies_to_remove() -> None:
    # The defaults: Celery, no auth (so no JWT library), no tracing.
    removed = POST.dependencies_to_remove(GOOD_ANSWERS)
    assert sorted(removed) == sorted(["pyjwt", *OTEL_DEPENDENCIES])
    assert POST.dependencies_to_remove(answers(auth="jwt", use_opentelemetry=True)) == []
    removed = POST.dependencies_to_remove(answers(job_backend="inprocess", use_opentelemetry=True))
    assert sorted(removed) == [
        "celery",
        "celery-redbeat",
        "celery-types",
        "opentelemetry-instrumentation-celery",
        "pyjwt",
        "redis",
    ]


def test_the_celery_instrumentation_needs_both_celery_and_opentelemetry() -> None:
    """It belongs to two features, and stays only where both are chosen."""
    for backend, traced in (("celery", False), ("inprocess", True), ("inprocess", False)):
        removed = POST.dependencies_to_remove(
            answers(job_backend=backend, use_opentelemetry=traced)
        )
        assert "opentelemetry-instrumentation-celery" in removed


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
    assert POST.local_env_file(answers(job_backend="inprocess", auth="none")) is None
    assert POST.local_env_file(answers(job_backend="inprocess", auth="jwt")) is None


def test_local_env_file_has_a_fresh_api_token() -> None:
    lean = answers(job_backend="inprocess", auth="token")
    tokens = [
        token for _ in range(2) for token in env_values(POST.local_env_file(lean), "API_TOKEN")
    ]
    assert len(tokens) == 2
    assert all(len(token) >= 32 for token in tokens)
    assert tokens[0] != tokens[1]


def test_local_env_file_has_no_api_token_without_bearer_auth() -> None:
    for backend in ("celery", "inprocess"):
        text = POST.local_env_file(answers(job_backend=backend, auth="none"))
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
    celery = POST.local_env_file({"job_backend": "celery", "auth": "none"})
    assert celery is not None
    assert re.search(r"^FLOWER_PASSWORD=\S{24,}$", celery, flags=re.MULTILINE)
    assert POST.local_env_file({"job_backend": "inprocess", "auth": "none"}) is None


def test_update_record_keeps_answers_and_drops_private_keys() -> None:
    answers = {
        "project_name": "Orders",
        "_template": ".",
        "_template_version": "0.1.0",
        "_output_dir": "/tmp/out",
        "_repo_dir": ".",
        "_checkout": None,
    }
    source = POST.TemplateSource(location="/templates/fastapi", commit="a" * 40, directory=None)
    record = POST.update_record(answers, source)
    assert list(record) == ["template", "commit", "checkout", "context", "directory", "skip"]
    assert record["template"] == "/templates/fastapi"
    assert record["commit"] == "a" * 40
    # As cruft records it: the answers, then the template's location and commit.
    assert record["context"]["cookiecutter"] == {
        "project_name": "Orders",
        "_template_version": "0.1.0",
        "_template": "/templates/fastapi",
        "_commit": "a" * 40,
    }
    assert record["skip"] == [".env"]


def test_record_text_is_laid_out_as_cruft_writes_it() -> None:
    from cruft._commands.utils.cruft import json_dumps  # type: ignore[import-untyped]

    source = POST.TemplateSource(location="/t", commit="b" * 40, directory=None)
    record = POST.update_record({"project_name": "Café", "_template": "."}, source)
    assert POST.record_text(record) == json_dumps(record)


def test_answers_are_put_back_in_template_order() -> None:
    sorted_answers = {"a": 1, "b": 2, "z": 3, "_template": "."}
    assert list(POST.in_template_order(sorted_answers, ["z", "a", "b"])) == [
        "z",
        "a",
        "b",
        "_template",
    ]


def git_in(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=T", "-c", "user.email=t@example.com", "-C", str(repo), *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


PROJECT_DIR_NAME = "{" * 2 + "cookiecutter.project_slug" + "}" * 2


def make_template(folder: Path, version: str = "0.1.0") -> Path:
    """The files that make a folder this template, as the hook recognises it."""
    (folder / "hooks").mkdir(parents=True)
    (folder / "hooks" / "post_gen_project.py").write_text("# hook\n")
    (folder / "cookiecutter.json").write_text(json.dumps({"_template_version": version}))
    (folder / PROJECT_DIR_NAME).mkdir()
    (folder / PROJECT_DIR_NAME / "README.md").write_text("v1\n")
    (folder / "README.md").write_text("the template's own notes\n")
    return folder


def committed_template(folder: Path) -> tuple[Path, str]:
    make_template(folder)
    git_in(folder, "init", "--quiet")
    git_in(folder, "add", "--all")
    git_in(folder, "commit", "--quiet", "--message", "v1")
    return folder, git_in(folder, "rev-parse", "HEAD")


def test_template_source_of_a_clean_git_checkout(tmp_path: Path) -> None:
    template, head = committed_template(tmp_path / "tpl")
    source = POST.template_source({"_template": "."}, template)
    assert source == POST.TemplateSource(location=str(template), commit=head, directory=None)


def test_template_source_of_a_checkout_with_uncommitted_changes(tmp_path: Path) -> None:
    """The bake holds the changes, the commit does not: record HEAD and say so."""
    template, head = committed_template(tmp_path / "tpl")
    (template / "README.md").write_text("edited, but it does not shape a project\n")
    assert POST.template_source({"_template": "."}, template).notes == ()

    (template / PROJECT_DIR_NAME / "README.md").write_text("v2, not committed\n")
    source = POST.template_source({"_template": "."}, template)
    assert source.commit == head
    assert len(source.notes) == 1
    assert "uncommitted changes" in source.notes[0]
    assert head[:12] in source.notes[0]

    git_in(template, "checkout", "--quiet", "--", ".")
    (template / "hooks" / "pre_gen_project.py").write_text("# new, untracked\n")
    assert "uncommitted" in POST.template_source({"_template": "."}, template).notes[0]


def test_template_source_of_a_template_inside_a_larger_repository(tmp_path: Path) -> None:
    """cruft clones the repository and renders its `directory`."""
    repo = tmp_path / "monorepo"
    make_template(repo / "templates" / "fastapi")
    git_in(repo, "init", "--quiet")
    git_in(repo, "add", "--all")
    git_in(repo, "commit", "--quiet", "--message", "v1")
    source = POST.template_source(
        {"_template": "templates/fastapi"}, repo / "templates" / "fastapi"
    )
    assert source.location == str(repo)
    assert source.directory == "templates/fastapi"
    assert source.commit == git_in(repo, "rev-parse", "HEAD")


def test_template_source_of_a_folder_that_is_not_a_git_checkout(tmp_path: Path) -> None:
    template = make_template(tmp_path / "tpl")
    source = POST.template_source({"_template": "."}, template)
    assert source.location == str(template)  # absolute, so a later `cruft link` can use it
    assert source.commit is None
    assert len(source.notes) == 1
    assert "not a git checkout" in source.notes[0]
    assert "cruft" in source.notes[0]


def test_template_source_keeps_what_cruft_passes_when_it_renders_again(tmp_path: Path) -> None:
    template, _head = committed_template(tmp_path / "clone")
    answers = {"_template": "/home/me/template", "_commit": "c" * 40}
    source = POST.template_source(answers, template)
    assert (source.location, source.commit) == ("/home/me/template", "c" * 40)


def test_template_source_of_a_remote_template(tmp_path: Path) -> None:
    clone, head = committed_template(tmp_path / "cookiecutters" / "template")
    source = POST.template_source({"_template": "gh:acme/fastapi-template"}, clone)
    assert source.location == "https://github.com/acme/fastapi-template.git"
    assert source.commit == head


@pytest.mark.parametrize(
    ("typed", "location"),
    [
        ("gh:acme/t", "https://github.com/acme/t.git"),
        ("gl:acme/t", "https://gitlab.com/acme/t.git"),
        ("bb:acme/t", "https://bitbucket.org/acme/t"),
        ("git+https://example.com/t.git", "https://example.com/t.git"),
        ("https://example.com/t.git", "https://example.com/t.git"),
        ("git@example.com:acme/t.git", "git@example.com:acme/t.git"),
    ],
)
def test_remote_template_locations(typed: str, location: str) -> None:
    assert POST.is_remote(typed)
    assert POST.remote_location(typed) == location


@pytest.mark.parametrize("typed", [".", "..", "../template", "/abs/template", "template"])
def test_local_template_paths_are_not_remote(typed: str) -> None:
    assert not POST.is_remote(typed)


def test_rendered_template_dir_from_a_relative_path(tmp_path: Path) -> None:
    """`cookiecutter .`: `_repo_dir` is ".", the hook runs inside the new project."""
    template = make_template(tmp_path / "tpl")
    other = make_template(tmp_path / "other-checkout")
    answers = {"_repo_dir": ".", "_template_version": "0.1.0"}
    # cookiecutter's own working directory (Linux) wins over a stale $PWD.
    assert POST.rendered_template_dir(answers, template, str(other)) == template
    # Without it, the shell's $PWD, joined with what was typed.
    assert POST.rendered_template_dir(answers, None, str(template)) == template
    relative = {"_repo_dir": "../tpl", "_template_version": "0.1.0"}
    (tmp_path / "elsewhere").mkdir()
    assert POST.rendered_template_dir(relative, None, str(tmp_path / "elsewhere")) == template
    # A folder that is not this template (another template version) is never taken.
    assert POST.rendered_template_dir(answers, tmp_path, str(tmp_path)) is None
    newer = {"_repo_dir": ".", "_template_version": "0.2.0"}
    assert POST.rendered_template_dir(newer, template, str(template)) is None
    # An absolute `_repo_dir` (a remote template's clone) is what was rendered.
    clone = {"_repo_dir": str(other), "_template_version": "0.1.0"}
    assert POST.rendered_template_dir(clone, template, str(template)) == other


def test_parent_cwd_is_the_working_directory_of_the_parent_process(tmp_path: Path) -> None:
    if not Path("/proc/self/cwd").exists():
        pytest.skip("no /proc on this system: the hook falls back to $PWD")
    script = f"import runpy; m = runpy.run_path({str(HOOKS_DIR / 'post_gen_project.py')!r}); "
    script += "print(m['parent_cwd']())"
    # A parent in tmp_path starts the child elsewhere, as cookiecutter starts its hooks.
    parent = (
        "import subprocess, sys; "
        f"subprocess.run([sys.executable, '-c', {script!r}], cwd='/', check=True)"
    )
    done = subprocess.run(
        [sys.executable, "-c", parent], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == str(tmp_path.resolve())


# --------------------------------------------------------------------------- .env


def test_env_file_is_created_owner_only_not_narrowed_afterwards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The post-generation step writes `.env` with the mode set when the file is created:
    with a umask of 0 and every later chmod disabled, it is still 0600, so the secrets are
    never readable by others, not even for a moment."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text('dependencies = [\n    "fastapi",\n]\n')
    chosen = answers(
        auth="token", job_backend="celery", ci_provider="github", use_opentelemetry=True
    )
    for removed in POST.paths_to_remove(chosen):  # what the unchosen features own
        (project / removed).parent.mkdir(parents=True, exist_ok=True)
        (project / removed).write_text("")
    locks = project / POST.LOCKS_DIR  # the hook keeps the chosen answers' lock
    locks.mkdir()
    (locks / POST.lock_name(chosen)).write_text("")
    for module, name in ((os, "chmod"), (os, "lchmod"), (Path, "chmod")):
        if hasattr(module, name):
            monkeypatch.setattr(module, name, lambda *_args, **_kwargs: None)
    old_umask = os.umask(0)
    try:
        POST.apply(project, chosen)
    finally:
        os.umask(old_umask)
    env_file = project / ".env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert re.search(r"^API_TOKEN=\S{32,}$", env_file.read_text(), flags=re.MULTILINE)


def test_env_file_is_0600_under_a_umask_that_keeps_owner_bits(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)
    try:
        POST.write_secret_file(tmp_path / ".env", "API_TOKEN=x\n")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / ".env").stat().st_mode) == 0o600


def test_existing_env_file_and_its_secrets_are_kept(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("API_TOKEN=the-team-s-own\n")
    assert POST.write_secret_file(env_file, "API_TOKEN=new\n") is False
    assert env_file.read_text() == "API_TOKEN=the-team-s-own\n"
