"""The files that ship a generated service: container image, compose stack, CI, task
runner and pre-commit, checked for every bake against the options it was baked with.

Here they are checked by reading them: the right services for the options, health
checks, a non-root user, pinned actions. tests/test_containers.py builds and runs the
image and the stack.
"""

from __future__ import annotations

import re
import shutil
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]
from conftest import CASES, REPO_ROOT, Bakery, Case, ProjectEnv, run

PINNED_ACTION_RE = re.compile(r"^[\w.-]+/[\w.-]+@[0-9a-f]{40}$")


def tool(name: str) -> str:
    """A linter installed beside this interpreter (requirements-dev.txt)."""
    found = shutil.which(name, path=str(Path(sys.executable).parent))
    assert found, f"{name} is missing: it belongs to requirements-dev.txt"
    return found


def validate(root: Path, schema: str, path: Path) -> None:
    """Validate a file against one of check-jsonschema's bundled schemas (no network)."""
    checked = run([tool("check-jsonschema"), "--builtin-schema", schema, str(path)], cwd=root)
    assert checked.ok, checked.report()


def uv_version() -> str:
    """The uv release requirements-dev.txt pins: the generated files must use the same."""
    for line in (REPO_ROOT / "requirements-dev.txt").read_text().splitlines():
        if line.startswith("uv=="):
            return line.removeprefix("uv==").strip()
    raise AssertionError("requirements-dev.txt pins no uv")


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_uv_is_pinned_to_one_release(bakery: Bakery, case: Case) -> None:
    root = bakery.get(case).path
    dockerfile = (root / "Dockerfile").read_text()
    assert f"ARG UV_VERSION={uv_version()}" in dockerfile
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    assert pyproject["tool"]["uv"]["required-version"] == f">={uv_version()}"


def case_params() -> list[Any]:
    return [pytest.param(case, id=case.id) for case in CASES]


def python_version(case: Case) -> str:
    return str(case.answers.get("python_version", "3.11"))


def ci_provider(case: Case) -> str:
    return str(case.answers.get("ci_provider", "github"))


@pytest.mark.parametrize("case", case_params())
def test_dockerfile_builds_a_slim_non_root_image_with_a_healthcheck(
    bakery: Bakery, case: Case
) -> None:
    text = (bakery.get(case).path / "Dockerfile").read_text()
    assert "ARG PYTHON_VERSION=" + python_version(case) in text
    stages = re.findall(r"^FROM (\S+)(?: AS (\w+))?", text, flags=re.MULTILINE)
    assert stages == [
        ("python:${PYTHON_VERSION}-slim", "build"),
        ("python:${PYTHON_VERSION}-slim", "runtime"),
    ]
    # Dependencies come from the lock, in a layer built before the code is copied in.
    steps = [
        "COPY pyproject.toml uv.lock ./",
        "uv sync --locked --no-dev --no-install-project",
        "COPY src ./src",
        "uv sync --locked --no-dev --no-editable",
    ]
    positions = [text.index(step) for step in steps]
    assert positions == sorted(positions), steps
    assert text.count("--mount=type=cache,target=/root/.cache/uv") == 2
    # No `# syntax=` line: BuildKit would fetch a frontend image from a registry.
    assert not re.search(r"^#\s*syntax=", text, flags=re.MULTILINE | re.IGNORECASE)
    final_stage = text[text.index("AS runtime") :]
    assert re.search(r"^USER (?!root)\w+", final_stage, flags=re.MULTILINE)
    healthcheck = final_stage.split("HEALTHCHECK", 1)[1].splitlines()[1]
    assert f'"{case.package_name}.healthcheck"' in healthcheck
    assert f'"{case.package_name}.main:app"' in final_stage
    # The client address comes from X-Forwarded-For, from FORWARDED_ALLOW_IPS only.
    assert '"--proxy-headers"' in final_stage


@pytest.mark.parametrize("case", case_params())
def test_compose_names_the_services_of_the_options(bakery: Bakery, case: Case) -> None:
    root = bakery.get(case).path
    validate(root, "vendor.compose-spec", root / "compose.yaml")
    compose = yaml.safe_load((root / "compose.yaml").read_text())
    services: dict[str, Any] = compose["services"]
    # Every service runs long: each comes back after a crash, unless stopped on purpose.
    assert {name: service.get("restart") for name, service in services.items()} == {
        name: "unless-stopped" for name in services
    }
    # Published on loopback only.
    for service in services.values():
        assert all(str(port).startswith("127.0.0.1:") for port in service.get("ports", []))
    # uvicorn reads it from the environment; the API passes it on, loopback by default.
    assert services["api"]["environment"]["FORWARDED_ALLOW_IPS"] == (
        "${FORWARDED_ALLOW_IPS:-127.0.0.1,::1}"
    )
    if case.job_backend == "inprocess":
        assert set(services) == {"api"}
        assert "volumes" not in compose
        return
    assert set(services) == {"api", "worker", "beat", "redis", "flower"}
    for name in ("api", "worker", "beat", "flower"):
        assert services[name]["depends_on"] == {"redis": {"condition": "service_healthy"}}
    assert "healthcheck" in services["redis"]
    # One image for the API and the worker; its HEALTHCHECK suits both (healthcheck.py),
    # so the worker needs no override of its own.
    assert services["api"]["image"] == services["worker"]["image"] == case.slug
    assert "healthcheck" not in services["worker"]
    assert "noeviction" in services["redis"]["command"]
    worker = services["worker"]
    assert worker["command"][:3] == ["celery", "-A", f"{case.package_name}.worker"]
    # `docker compose up --scale worker=4` needs a worker without a fixed name or port.
    assert "container_name" not in worker
    assert "ports" not in worker
    # Beat runs the schedule: the same image, its own command, one replica (a second
    # would only wait for the first one's lock), and the image's HEALTHCHECK.
    beat = services["beat"]
    assert beat["image"] == case.slug
    assert beat["command"][:4] == ["celery", "-A", f"{case.package_name}.beat", "beat"]
    assert beat["deploy"]["replicas"] == 1
    assert beat["environment"]["JOBS_BACKEND"] == "celery"
    assert "healthcheck" not in beat
    assert services["flower"]["profiles"] == ["monitoring"]
    assert "FLOWER_PASSWORD" in " ".join(services["flower"]["entrypoint"])


@pytest.mark.parametrize("case", case_params())
def test_ci_files_match_the_ci_option(bakery: Bakery, case: Case) -> None:
    root = bakery.get(case).path
    provider = ci_provider(case)
    assert (root / ".github").exists() == (provider == "github")
    assert (root / ".gitlab-ci.yml").exists() == (provider == "gitlab")


@pytest.mark.parametrize("case", [c for c in case_params() if ci_provider(c.values[0]) == "github"])
def test_github_workflow_is_pinned_least_privilege_and_lints_clean(
    bakery: Bakery, case: Case
) -> None:
    root = bakery.get(case).path
    workflow_path = root / ".github" / "workflows" / "ci.yml"
    workflow = yaml.safe_load(workflow_path.read_text())
    assert workflow["permissions"] == {"contents": "read"}
    assert set(workflow["jobs"]) == {"check", "container"}
    for each in workflow["jobs"].values():
        uses = [step["uses"].split(" ")[0] for step in each["steps"] if "uses" in step]
        assert uses
        assert all(PINNED_ACTION_RE.match(action) for action in uses), uses
    job = workflow["jobs"]["check"]
    runs = " ".join(step.get("run", "") for step in job["steps"])
    assert "uv sync --locked" in runs
    assert all(f"make {verb}" in runs for verb in ("lint", "typecheck", "test"))
    # The image is built and the compose stack smoke-tested, as tests/test_containers.py does.
    container = " ".join(step.get("run", "") for step in workflow["jobs"]["container"]["steps"])
    assert "docker compose build" in container
    assert "docker compose exec -T api python - < scripts/smoke.py" in container
    assert ("API_TOKEN" in container) is (case.auth == "token")
    assert ("JWT_ISSUER" in container) is (case.auth == "jwt")
    assert f'UV_VERSION: "{uv_version()}"' in workflow_path.read_text()
    dependabot = yaml.safe_load((root / ".github" / "dependabot.yml").read_text())
    ecosystems = {update["package-ecosystem"] for update in dependabot["updates"]}
    assert ecosystems == {"uv", "github-actions", "docker"}
    if case.job_backend != "inprocess":
        assert "redis" in job["services"]
        assert job["env"]["REQUIRE_REDIS"] == "1"
    else:
        assert "services" not in job
    # GitHub's own expressions survive rendering.
    assert "${{ github.ref }}" in workflow_path.read_text()

    # Offline linters from PyPI: the GitHub workflow schema, and zizmor's security audit
    # (injection, over-broad permissions, credentials left in the checkout).
    validate(root, "vendor.github-workflows", workflow_path)
    validate(root, "vendor.dependabot", root / ".github" / "dependabot.yml")
    audited = run([tool("zizmor"), "--offline", str(workflow_path)], cwd=root)
    assert audited.ok, audited.report()


@pytest.mark.parametrize("case", [c for c in case_params() if ci_provider(c.values[0]) == "gitlab"])
def test_gitlab_pipeline_runs_the_checks(bakery: Bakery, case: Case) -> None:
    root = bakery.get(case).path
    validate(root, "vendor.gitlab-ci", root / ".gitlab-ci.yml")
    pipeline = yaml.safe_load((root / ".gitlab-ci.yml").read_text())
    script = pipeline["check"]["script"]
    assert script == ["make lint", "make typecheck", "make test"]
    assert "uv sync --locked" in pipeline["check"]["before_script"]
    assert pipeline["variables"]["UV_VERSION"] == uv_version()
    container = pipeline["container"]["script"]
    assert "docker compose build" in container
    assert "docker compose exec -T api python - < scripts/smoke.py" in container
    # GitLab has no Dependabot: Renovate keeps pyproject.toml and uv.lock current.
    validate(root, "vendor.renovate", root / "renovate.json")
    if case.job_backend != "inprocess":
        assert pipeline["variables"]["REQUIRE_REDIS"] == "1"
        assert pipeline["check"]["services"][0]["name"].startswith("redis")


@pytest.mark.parametrize("case", case_params())
def test_pre_commit_runs_the_pinned_tools_from_the_project_env(bakery: Bakery, case: Case) -> None:
    """Local hooks only (nothing to download), each calling a tool the dev extra pins, from
    `.venv` (no activated environment needed). test_fresh_install.py runs them."""
    root = bakery.get(case).path
    config = yaml.safe_load((root / ".pre-commit-config.yaml").read_text())
    dev = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pins = dict(line.split("==") for line in dev["dev"] if "==" in line)
    assert "pre-commit" in pins
    assert [repo["repo"] for repo in config["repos"]] == ["local"]
    hooks = {hook["id"]: hook for hook in config["repos"][0]["hooks"]}
    assert set(hooks) == {"ruff-check", "ruff-format", "mypy"}
    for hook in hooks.values():
        assert hook["language"] in ("unsupported", "system"), hook
        tool = hook["entry"].split()[0]
        assert tool.startswith(".venv/bin/"), hook
        assert tool.removeprefix(".venv/bin/") in pins, f"{tool} is not pinned in the dev extra"
    assert hooks["mypy"]["pass_filenames"] is False  # the whole project, as `make typecheck`


@pytest.mark.parametrize("case", case_params())
def test_make_lint_runs(bakery: Bakery, project_env: ProjectEnv, case: Case) -> None:
    """`make test` runs in test_bake.py; mypy is run there directly, so `make typecheck`
    would only repeat it."""
    ran = project_env.run(bakery.get(case).path, "make", "lint")
    assert ran.ok, ran.report()
