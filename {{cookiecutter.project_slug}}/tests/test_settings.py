"""Settings: documented where users look, and validated with a clear message."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

{% if cookiecutter.job_backend != "inprocess" -%}
from {{ cookiecutter.package_name }}.settings import Settings, SettingsError, load_settings
{%- else -%}
from {{ cookiecutter.package_name }}.settings import Settings
{%- endif %}
{%- if cookiecutter.job_backend != "inprocess" and cookiecutter.auth != "none" %}
from tests.celery_processes import RedisServer, running_worker
{%- endif %}
from tests.support import PACKAGE, free_port, make_settings, with_source_on_path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("document", [".env.example", "README.md"])
def test_every_setting_is_documented(document: str) -> None:
    text = (PROJECT_ROOT / document).read_text()
    missing = [name.upper() for name in Settings.model_fields if name.upper() not in text]
    assert missing == [], f"{document} does not mention {missing}"


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_REQUEST_BODY_BYTES", "2048")
    monkeypatch.setenv("LOG_LEVEL", "warning")
    settings = Settings(_env_file=None)
    assert settings.max_request_body_bytes == 2048
    assert settings.log_level == "WARNING"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("jobs_backend", "threads"),
        ("log_format", "xml"),
        ("log_level", "LOUD"),
        ("max_request_body_bytes", -1),
        # Metrics (issue 9)
        ("metrics_public", "sometimes"),
        {%- if cookiecutter.job_backend != "inprocess" %}
        ("worker_metrics_port", 65536),
        ("worker_metrics_port", -1),
        ("worker_metrics_port", ""),
        # Cancel (issue 10)
        ("job_cancel_grace_seconds", -1),
        ("job_cancel_grace_seconds", "nan"),
        ("job_cancel_grace_seconds", 3_601),
        # The broker (issue 13)
        ("broker_url", "kafka://broker:9092"),
        ("broker_url", "redis://another-redis:6379/0"),
        ("rabbitmq_consumer_timeout_seconds", 0),
        {%- endif %}
        ("docs_enabled", "maybe"),
        # Backpressure (issue 10)
        ("max_queued_jobs", 0),
        ("max_queued_jobs", "many"),
        {%- if cookiecutter.auth == "jwt" %}
        ("jwt_issuer", "ftp://issuer.example/"),
        ("jwt_jwks_url", "file:///etc/passwd"),
        ("jwt_algorithms", "RS256,HS256"),
        ("jwt_algorithms", "none"),
        ("jwt_algorithms", ""),
        ("jwt_leeway_seconds", -1),
        ("jwt_jwks_min_refresh_seconds", 0),
        {%- endif %}
    ],
)
def test_bad_settings_are_refused_naming_the_setting(name: str, value: object) -> None:
    with pytest.raises(ValidationError, match=name):
        make_settings(**{name: value})
{%- if cookiecutter.job_backend != "inprocess" %}


@pytest.mark.parametrize("timeout", [None, 600])
def test_jobs_must_end_before_rabbitmq_redelivers_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, timeout: int | None
) -> None:
    """RabbitMQ redelivers a job unacknowledged past its consumer_timeout while it still
    runs: a time limit at or above it is refused at start-up, in one line naming both
    settings and not the broker's URL (it carries a password); with the default
    timeout (30 min) too."""
    monkeypatch.chdir(tmp_path)  # no `.env` of the project's
    monkeypatch.setenv("BROKER_URL", "amqp://user:s3cret-pass@rabbit:5672//")
    monkeypatch.setenv("JOB_TIME_LIMIT_SECONDS", "1800" if timeout is None else "600")
    if timeout is not None:
        monkeypatch.setenv("RABBITMQ_CONSUMER_TIMEOUT_SECONDS", str(timeout))
    with pytest.raises(SettingsError) as refused:
        load_settings()
    message = str(refused.value)
    assert "RABBITMQ_CONSUMER_TIMEOUT_SECONDS" in message
    assert "JOB_TIME_LIMIT_SECONDS" in message
    assert "s3cret" not in message


def test_with_a_redis_broker_a_long_time_limit_is_fine(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BROKER_URL", "")
    monkeypatch.setenv("JOB_TIME_LIMIT_SECONDS", "7200")
    settings = load_settings()
    assert settings.celery_broker_url == settings.redis_url
    assert not settings.broker_is_rabbitmq
{%- endif %}
{%- if cookiecutter.auth == "token" %}


@pytest.mark.parametrize(
    ("token", "reason"),
    [(None, "API_TOKEN is not set"), ("short", "API_TOKEN must be at least 16 characters")],
)
def test_the_api_refuses_to_start_without_a_good_token(token: str | None, reason: str) -> None:
    from {{ cookiecutter.package_name }}.factory import create_app
    from {{ cookiecutter.package_name }}.settings import SettingsError

    with pytest.raises(SettingsError, match=reason):
        create_app(make_settings(api_token=token))
{%- endif %}
{%- if cookiecutter.auth == "jwt" %}


@pytest.mark.parametrize(
    ("missing", "reason"),
    [("jwt_issuer", "JWT_ISSUER is not set"), ("jwt_audience", "JWT_AUDIENCE is not set")],
)
def test_the_api_refuses_to_start_without_an_issuer_and_audience(missing: str, reason: str) -> None:
    from {{ cookiecutter.package_name }} import factory, settings

    with pytest.raises(settings.SettingsError, match=reason):
        factory.create_app(make_settings(**{missing: None}))


def test_the_algorithms_are_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JWT_ALGORITHMS", " ES256 , PS256")
    assert Settings(_env_file=None).jwt_algorithms == ("ES256", "PS256")
{%- endif %}


def start_up_output(command: list[str], env: dict[str, str], cwd: Path) -> tuple[int, list[str]]:
    """Run a process that must refuse to start; its exit code and its output lines."""
    environment = {**with_source_on_path(os.environ), **env}
    done = subprocess.run(
        command, env=environment, cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    return done.returncode, (done.stdout + done.stderr).splitlines()


def serve_command() -> list[str]:
    return [sys.executable, "-m", "uvicorn", f"{PACKAGE}.main:app", "--port", str(free_port())]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LOG_LEVEL", "LOUD"),
        ("MAX_REQUEST_BODY_BYTES", "-1"),
        ("SENTRY_DSN", "https://8f2e1c@sentry.example.com/not-a-project"),
        ("DOCS_ENABLED", "maybe"),
        # CORS, rate limits, proxies (issue 11)
        ("RATE_LIMIT", "lots"),
        ("FORWARDED_ALLOW_IPS", "10.0.0.l"),
        {%- if cookiecutter.job_backend != "inprocess" %}
        ("JOB_CANCEL_GRACE_SECONDS", "soon"),
        {%- endif %}
        {%- if cookiecutter.auth == "token" %}
        ("API_TOKEN", "s3cret-short"),
        {%- elif cookiecutter.auth == "jwt" %}
        ("JWT_ALGORITHMS", "HS256"),
        ("JWT_ISSUER", "ftp://issuer.example/"),
        ("JWT_JWKS_MIN_REFRESH_SECONDS", "0"),
        {%- endif %}
    ],
)
def test_a_bad_setting_stops_the_server_with_one_line_naming_it(
    variable: str, value: str, tmp_path: Path
) -> None:
    """One line, no traceback, and never the value: it may be a secret (pydantic's own
    message would print `input_value='...'`)."""
    code, lines = start_up_output(serve_command(), {variable: value}, tmp_path)
    assert code != 0
    assert len(lines) == 1, lines
    assert variable in lines[0]
    assert value not in lines[0]
    assert "Traceback" not in lines[0]
{%- if cookiecutter.job_backend != "inprocess" %}


def worker_command() -> list[str]:
    return [sys.executable, "-m", "celery", "-A", f"{PACKAGE}.worker", "worker", "--pool", "solo"]


def test_a_bad_setting_stops_the_worker_with_one_line_naming_it(tmp_path: Path) -> None:
    code, lines = start_up_output(worker_command(), {"JOB_TIME_LIMIT_SECONDS": "1"}, tmp_path)
    assert code != 0
    assert len(lines) == 1, lines
    assert "JOB_TIME_LIMIT_SECONDS" in lines[0]
{%- if cookiecutter.auth == "token" %}


def test_the_worker_starts_without_checking_the_token_it_does_not_use(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    """The API refuses a short API_TOKEN; the worker needs no token and must not."""
    with running_worker(private_redis.url, "tokenless", tmp_path, {"API_TOKEN": "short"}) as worker:
        assert worker.process.poll() is None
{%- elif cookiecutter.auth == "jwt" %}


def test_the_worker_starts_without_the_jwt_settings_it_does_not_use(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    """The API refuses to start without JWT_ISSUER; the worker checks no token and must not."""
    with running_worker(private_redis.url, "jwtless", tmp_path, {"JWT_ISSUER": ""}) as worker:
        assert worker.process.poll() is None
{%- endif %}
{%- endif %}
