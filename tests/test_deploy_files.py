"""The files that ship a generated service: container image, compose stack, CI, task
runner and pre-commit, checked for every bake against the options it was baked with.

Here they are checked by reading them: the right services for the options, health
checks, a non-root user, pinned actions. tests/test_containers.py builds and runs the
image and the stack.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
import rabbitmq_node
import yaml  # type: ignore[import-untyped]
from conftest import (
    CASES,
    DEFAULT_SLUG,
    REPO_ROOT,
    Bakery,
    Case,
    ProjectEnv,
    mentions,
    run,
)

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


# One bake per job_backend answer, whatever CASES holds: the broker's deploy files are
# checked for each of them here (CASES may or may not carry a celery-rabbitmq case).
BACKENDS = ("celery", "celery-rabbitmq", "inprocess")
BACKEND_CASES = tuple(
    Case(
        id=f"deploy-{backend}-{ci}",
        answers={"job_backend": backend, "auth": "jwt", "ci_provider": ci},
        slug=DEFAULT_SLUG,
    )
    for backend in BACKENDS
    for ci in ("github", "gitlab")
)


def backend_params(ci: str = "github") -> list[Any]:
    return [pytest.param(case, id=case.id) for case in BACKEND_CASES if ci_provider(case) == ci]


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


@pytest.mark.parametrize("case", case_params() + backend_params())
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
    healthy = {"condition": "service_healthy"}
    if case.job_backend == "celery-rabbitmq":
        assert set(services) == {"api", "worker", "beat", "redis", "rabbitmq", "flower"}
        # Jobs go through RabbitMQ, their states through Redis: both must be up first.
        for name in ("api", "worker", "beat"):
            assert services[name]["depends_on"] == {"redis": healthy, "rabbitmq": healthy}
        assert services["flower"]["depends_on"] == {"rabbitmq": healthy}
    else:
        assert set(services) == {"api", "worker", "beat", "redis", "flower"}
        for name in ("api", "worker", "beat", "flower"):
            assert services[name]["depends_on"] == {"redis": healthy}
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


@pytest.mark.parametrize(
    "case", [c for c in case_params() if ci_provider(c.values[0]) == "github"] + backend_params()
)
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
    assert_ci_runs_the_broker_tests(case, job.get("services", {}), job.get("env", {}), "localhost")
    # GitHub's own expressions survive rendering.
    assert "${{ github.ref }}" in workflow_path.read_text()

    # Offline linters from PyPI: the GitHub workflow schema, and zizmor's security audit
    # (injection, over-broad permissions, credentials left in the checkout).
    validate(root, "vendor.github-workflows", workflow_path)
    validate(root, "vendor.dependabot", root / ".github" / "dependabot.yml")
    audited = run([tool("zizmor"), "--offline", str(workflow_path)], cwd=root)
    assert audited.ok, audited.report()


@pytest.mark.parametrize(
    "case",
    [c for c in case_params() if ci_provider(c.values[0]) == "gitlab"] + backend_params("gitlab"),
)
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
    services = {service["alias"]: service for service in pipeline["check"].get("services", [])}
    assert_ci_runs_the_broker_tests(case, services, pipeline["variables"], "rabbitmq")


def assert_ci_runs_the_broker_tests(
    case: Case, services: Mapping[str, Any], env: Mapping[str, Any], broker_host: str
) -> None:
    """A RabbitMQ project's CI runs its RabbitMQ tests against a RabbitMQ service, and
    cannot skip them (REQUIRE_BROKER); other projects start no broker they do not use."""
    if case.job_backend == "celery-rabbitmq":
        rabbitmq = services["rabbitmq"]
        # GitHub names the image `image`, GitLab `name`.
        # The management image: the tests make their vhosts through its API.
        assert rabbitmq.get("image", rabbitmq.get("name")) == "rabbitmq:3.13-management-alpine"
        assert env["REQUIRE_BROKER"] == "1"
        assert env["TEST_BROKER_URL"] == f"amqp://guest:guest@{broker_host}:5672"
    else:
        assert "rabbitmq" not in services
        assert "REQUIRE_BROKER" not in env
        assert "TEST_BROKER_URL" not in env


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


# --------------------------------------------------------------------------- the broker

AMQP_IN_COMPOSE = "amqp://guest:guest@rabbitmq:5672//"
BROKER_WORDS_RE = re.compile(r"rabbit|amqp", re.IGNORECASE)
# Compose's `${NAME:-default}` and `${NAME}`, the forms compose.yaml uses.
COMPOSE_VARIABLE_RE = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """What compose makes of `value` with `env` as the shell environment (and `.env`)."""
    return COMPOSE_VARIABLE_RE.sub(lambda m: env.get(m[1]) or (m[2] or ""), value)


def compose_of(bakery: Bakery, case: Case) -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load((bakery.get(case).path / "compose.yaml").read_text())
    return compose


def backend_case(backend: str, ci: str = "github") -> Case:
    return next(c for c in BACKEND_CASES if c.job_backend == backend and ci_provider(c) == ci)


@pytest.mark.parametrize("case", backend_params())
def test_compose_runs_rabbitmq_only_for_the_rabbitmq_answer(bakery: Bakery, case: Case) -> None:
    compose = compose_of(bakery, case)
    services: dict[str, Any] = compose["services"]
    environments = {name: service.get("environment", {}) for name, service in services.items()}
    if case.job_backend != "celery-rabbitmq":
        # Redis is the broker (BROKER_URL unset means REDIS_URL), or there is none.
        assert "rabbitmq" not in services
        assert all("BROKER_URL" not in env for env in environments.values()), environments
        assert not BROKER_WORDS_RE.search((bakery.get(case).path / "compose.yaml").read_text())
        return
    rabbitmq = services["rabbitmq"]
    assert rabbitmq["image"] == "rabbitmq:3.13-management-alpine"
    # The node's data directory is named after the host: a fixed one keeps the queues
    # when the container is recreated.
    assert rabbitmq["hostname"] == "rabbitmq"
    assert rabbitmq["volumes"] == ["rabbitmq-data:/var/lib/rabbitmq"]
    assert "rabbitmq-data" in compose["volumes"]
    assert rabbitmq["healthcheck"]["test"] == [
        "CMD",
        "rabbitmq-diagnostics",
        "-q",
        "check_port_connectivity",
    ]
    assert rabbitmq["restart"] == "unless-stopped"
    assert "ports" not in rabbitmq  # only the services on its network reach it
    # Every process that publishes or consumes jobs talks to it; Redis keeps the states.
    for name in ("api", "worker", "beat"):
        assert environments[name]["BROKER_URL"] == AMQP_IN_COMPOSE, name
        assert environments[name]["REDIS_URL"] == "redis://redis:6379/0", name
    flower = services["flower"]
    assert flower["environment"]["BROKER_URL"] == AMQP_IN_COMPOSE
    assert '--broker="$$BROKER_URL"' in flower["entrypoint"][-1]


@pytest.mark.parametrize("answer", [None, "3600", "45"])
def test_compose_gives_rabbitmq_and_the_service_the_same_consumer_timeout(
    bakery: Bakery, answer: str | None
) -> None:
    """RABBITMQ_CONSUMER_TIMEOUT_SECONDS (from the shell or `.env`) sets RabbitMQ's
    consumer_timeout, in ms, and is what the API and the worker check their time limit
    against; unset, both get the documented default."""
    case = backend_case("celery-rabbitmq")
    services = compose_of(bakery, case)["services"]
    env = {} if answer is None else {"RABBITMQ_CONSUMER_TIMEOUT_SECONDS": answer}
    seconds = answer or documented_default(bakery, case, "RABBITMQ_CONSUMER_TIMEOUT_SECONDS")
    erl_args = interpolate(
        services["rabbitmq"]["environment"]["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"], env
    )
    assert erl_args.split() == ["-rabbit", "consumer_timeout", f"{int(seconds) * 1000}"]
    for name in ("api", "worker", "beat"):
        told = services[name]["environment"]["RABBITMQ_CONSUMER_TIMEOUT_SECONDS"]
        assert interpolate(str(told), env) == seconds, name


def documented_default(bakery: Bakery, case: Case, name: str) -> str:
    """The value `.env.example` gives a setting; the README's settings table must agree."""
    root = bakery.get(case).path
    lines = (root / ".env.example").read_text().splitlines()
    values = [line.split("=", 1)[1] for line in lines if line.startswith(f"{name}=")]
    assert len(values) == 1, f".env.example sets {name} {len(values)} times"
    assert f"| `{name}` | `{values[0]}` |" in (root / "README.md").read_text()
    return values[0]


@pytest.mark.parametrize("case", backend_params())
def test_broker_settings_are_documented_for_the_answer(bakery: Bakery, case: Case) -> None:
    baked = bakery.get(case)
    env_example = (baked.path / ".env.example").read_text()
    readme = (baked.path / "README.md").read_text()
    settings = ("BROKER_URL", "RABBITMQ_CONSUMER_TIMEOUT_SECONDS")
    # Every bake says what it cannot do across hosts, or how it does it.
    assert "\n## Scaling out\n" in readme
    if case.job_backend == "inprocess":
        found = mentions(baked.path, baked.files, BROKER_WORDS_RE)
        assert not found, "RabbitMQ traces in an in-process bake:\n" + "\n".join(found)
        return
    for name in settings:
        assert re.search(rf"^\| `{name}` \| `[^`]+` \| \S", readme, flags=re.MULTILINE), name
    assert "### Redis or RabbitMQ as the broker" in readme
    # consumer_timeout is the server's setting: the README says how to raise it there.
    assert "`consumer_timeout = 3600000` (ms) in `rabbitmq.conf`" in readme
    if case.job_backend == "celery-rabbitmq":
        assert documented_default(bakery, case, "BROKER_URL") == (
            "amqp://guest:guest@localhost:5672//"
        )
        assert documented_default(bakery, case, "RABBITMQ_CONSUMER_TIMEOUT_SECONDS") == "1800"
    else:
        # Optional with Redis: shown commented out, so that copying the file changes nothing.
        for name in settings:
            assert re.search(rf"^# {name}=", env_example, flags=re.MULTILINE), name
            assert not re.search(rf"^{name}=", env_example, flags=re.MULTILINE), name


@pytest.mark.parametrize("case", case_params() + backend_params() + backend_params("gitlab"))
def test_rendered_deploy_files_have_no_blank_line_runs(bakery: Bakery, case: Case) -> None:
    """What the template's conditions leave behind: never two blank lines in a row, nor a
    file starting with a blank line."""
    root = bakery.get(case).path
    names = ("README.md", "compose.yaml", ".env.example", "Makefile", ".gitlab-ci.yml")
    paths = [root / name for name in names] + [root / ".github" / "workflows" / "ci.yml"]
    for path in paths:
        if path.exists():
            text = path.read_text()
            assert "\n\n\n" not in text, f"{path.name}: two blank lines in a row"
            assert not text.startswith("\n"), f"{path.name} starts with a blank line"


# --------------------------------------------------------------------------- a RabbitMQ node


def free_ports(count: int) -> list[int]:
    """Ports nothing listens on now, distinct (all held open until every one is picked)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


@contextmanager
def private_rabbitmq(tmp_path: Path, erl_args: str) -> Iterator[tuple[str, dict[str, str]]]:
    """A RabbitMQ node of this test's own, with `erl_args` as compose passes them: its
    own name, ports (AMQP, distribution, epmd), directories, cookie and (empty) config,
    all on loopback; never the machine's node. Yields its name and the environment its
    CLI tools need; stops it (rabbitmqctl stop, then its pid) and its epmd after."""
    server = rabbitmq_node.script("rabbitmq-server")
    if server is None:
        if os.environ.get("REQUIRE_BROKER") == "1":
            pytest.fail("REQUIRE_BROKER=1 but rabbitmq-server is not installed")
        pytest.skip("rabbitmq-server is not installed (REQUIRE_BROKER=1 makes this a failure)")
    amqp_port, dist_port, epmd_port = free_ports(3)
    node = f"deploy{os.getpid()}@localhost"
    files = rabbitmq_node.own_files(tmp_path / "node")
    cli_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))},
        "HOME": files["HOME"],  # the Erlang cookie is made there
        "ERL_EPMD_PORT": str(epmd_port),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
    }
    server_env = {
        **cli_env,
        "RABBITMQ_NODENAME": node,
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(amqp_port),
        "RABBITMQ_DIST_PORT": str(dist_port),
        **files,
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": erl_args,
        # Distribution on loopback only, as the machine's own node is set up here.
        "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
    }
    with (tmp_path / "server.log").open("wb") as log:
        process = subprocess.Popen(
            [server],
            cwd=tmp_path,
            env=server_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield node, cli_env
    finally:
        ctl = rabbitmq_node.script("rabbitmqctl")
        if ctl is not None and process.poll() is None:
            run([ctl, "-n", node, "stop"], cwd=tmp_path, env=cli_env, timeout=60)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        epmd = shutil.which("epmd")
        if epmd is not None:  # the epmd on our own port: started by our node, for it only
            run([epmd, "-port", str(epmd_port), "-kill"], cwd=tmp_path, env=cli_env, timeout=30)


@pytest.mark.heavy(seconds=30)
def test_rabbitmq_runs_with_the_consumer_timeout_compose_sets(
    bakery: Bakery, tmp_path: Path
) -> None:
    """A real RabbitMQ started with compose's arguments (consumer timeout asked as 45 s)
    has that consumer_timeout, and passes compose's healthcheck once booted. RabbitMQ
    checks the timeout about once a minute (3.10), so the test reads the setting rather
    than waiting for a redelivery."""
    case = backend_case("celery-rabbitmq")
    rabbitmq = compose_of(bakery, case)["services"]["rabbitmq"]
    erl_args = interpolate(
        rabbitmq["environment"]["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"],
        {"RABBITMQ_CONSUMER_TIMEOUT_SECONDS": "45"},
    )
    ctl = rabbitmq_node.script("rabbitmqctl")
    diagnostics = rabbitmq_node.script("rabbitmq-diagnostics")
    with private_rabbitmq(tmp_path, erl_args) as (node, env):
        assert ctl is not None
        assert diagnostics is not None
        # compose's healthcheck, pointed at this node: it fails until the node has booted.
        kind, tool, *arguments = rabbitmq["healthcheck"]["test"]
        assert (kind, tool) == ("CMD", Path(diagnostics).name)
        healthcheck = [diagnostics, "-n", node, *arguments]
        deadline = time.monotonic() + 90
        while not (healthy := run(healthcheck, cwd=tmp_path, env=env, timeout=30)).ok:
            server_log = (tmp_path / "server.log").read_text(errors="replace")
            assert time.monotonic() < deadline, healthy.report() + "\n" + server_log[-4000:]
            time.sleep(1)
        got = run(
            [ctl, "-n", node, "eval", "application:get_env(rabbit, consumer_timeout)."],
            cwd=tmp_path,
            env=env,
            timeout=60,
        )
        assert got.ok, got.report()
        assert got.output.strip() == "{ok,45000}", got.report()
