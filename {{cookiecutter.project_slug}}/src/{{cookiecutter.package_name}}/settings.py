"""Every setting of the service, typed, with its default and meaning.

Values come from the environment, then from a `.env` file in the working directory.
"""

{% if cookiecutter.use_opentelemetry -%}
import re
{% endif -%}
from typing import Literal

from pydantic import Field, {% if cookiecutter.use_bearer_auth %}SecretStr, {% endif %}ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
{%- if cookiecutter.use_opentelemetry %}

OTLP_URL_RE = re.compile(r"https?://[^/\s?#]+(?:[/?#]\S*)?")
{%- endif %}
{%- if cookiecutter.use_bearer_auth %}

MIN_API_TOKEN_LENGTH = 16
{%- endif %}


class LoggingSettings(BaseSettings):
    """The settings logging needs, alone: uvicorn's supervisor process, which never
    imports the app, reads these to write its own lines in the same format."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    log_level: LogLevel = Field(default="INFO", description="Lowest level that is logged.")
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="'text' for people reading a terminal, 'json' for log collectors.",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_in_capitals(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class Settings(LoggingSettings):
    """Every setting of the service."""
{%- if cookiecutter.job_backend == "celery" %}

    jobs_backend: Literal["inprocess", "celery"] = Field(
        default="celery",
        description="Where heavy jobs run: 'celery' (a worker, via Redis) or 'inprocess'.",
    )
    redis_url: str = Field(
        default="redis://localhost:6379/0",
        description="Redis for the Celery broker and result store.",
    )
    job_time_limit_seconds: int = Field(
        default=300,
        ge=2,
        description=(
            "A Celery job running longer is killed; at 90% of it the job gets "
            "SoftTimeLimitExceeded to stop cleanly. Redis redelivers tasks of a dead "
            "worker after 1.5 times this."
        ),
    )
    job_backend_deadline_seconds: float = Field(
        default=1.5,
        gt=0,
        le=30,
        description=(
            "All the Redis work of one request must end within this, or the request "
            "gets 503: a hung Redis costs a client this long at most."
        ),
    )
{%- else %}

    jobs_backend: Literal["inprocess"] = Field(
        default="inprocess",
        description="Where heavy jobs run: in this process, after the response.",
    )
{%- endif %}
{%- if cookiecutter.use_bearer_auth %}
    api_token: SecretStr | None = Field(
        default=None,
        description=(
            "The bearer token every request but the health checks must carry, at least "
            f"{MIN_API_TOKEN_LENGTH} characters. The API refuses to start without it; "
            "the worker does not need it."
        ),
    )
{%- endif %}
    inprocess_job_concurrency: int = Field(
        default=4,
        ge=1,
        description=(
            "In-process jobs running at once, each in a thread; the rest wait, queued. "
            "Threads help jobs that wait on I/O; CPU-bound Python code runs one at a time."
        ),
    )
    max_request_body_bytes: int = Field(
        default=1_048_576,
        ge=0,
        description="Request bodies larger than this get 413, whether streamed or not.",
    )
    # Limits on request heads and on how long finished jobs are kept (issue 15).
    max_request_header_bytes: int = Field(
        default=32_768,
        ge=1_024,
        description=(
            "A request line and header fields larger than this together get 431 and the "
            "connection closed, finished or not (with the server's --http option of the "
            "README: uvicorn's default parser has no limit)."
        ),
    )
    max_request_headers: int = Field(
        default=100,
        ge=1,
        description="A request with more header fields than this gets 431 (same condition).",
    )
    job_retention_seconds: int = Field(
        default=86_400,
        ge=60,
        {%- if cookiecutter.job_backend == "celery" %}
        description=(
            "How long a finished job's state and result stay readable: in Redis, or in "
            "memory for in-process jobs."
        ),
        {%- else %}
        description="How long a finished job's state and result stay readable, in memory.",
        {%- endif %}
    )
    inprocess_max_finished_jobs: int = Field(
        default=5_000,
        ge=1,
        description=(
            "In-process jobs: finished states kept in memory at most; beyond it the oldest "
            "are forgotten before JOB_RETENTION_SECONDS."
        ),
    )
    web_concurrency: int = Field(
        default=1,
        ge=1,
        description="Server worker processes (uvicorn reads WEB_CONCURRENCY too).",
    )
    {%- if cookiecutter.use_opentelemetry %}
    # Tracing (issue 9). The SDK reads the other OTEL_* variables (OTEL_TRACES_SAMPLER,
    # OTEL_EXPORTER_OTLP_HEADERS, OTEL_BSP_SCHEDULE_DELAY...) from the environment itself.
    otel_exporter_otlp_endpoint: str = Field(
        default="",
        description=(
            "Base URL of an OTLP/HTTP collector (traces go to <url>/v1/traces); "
            "empty: no exporter, nothing is sent."
        ),
    )
    otel_exporter_otlp_traces_endpoint: str = Field(
        default="",
        description="Full OTLP/HTTP URL for traces; overrides OTEL_EXPORTER_OTLP_ENDPOINT.",
    )
    otel_service_name: str = Field(
        default="{{ cookiecutter.project_slug }}",
        min_length=1,
        description="The service.name of every span, from the API and from the workers.",
    )

    @field_validator("otel_exporter_otlp_endpoint", "otel_exporter_otlp_traces_endpoint")
    @classmethod
    def _http_url_or_empty(cls, value: str) -> str:
        # Checked here: the SDK would only log a warning per export, and send nothing.
        if value and not OTLP_URL_RE.match(value):
            raise ValueError("must be an http:// or https:// URL with a host, or empty")
        return value
    {%- endif %}


class SettingsError(ValueError):
    """A setting is missing or bad. The message names the setting and the rule, never
    the value: it may be a secret, and start-up errors end up in shared logs."""


def load_settings() -> Settings:
    """The settings from the environment and `.env`, or SettingsError saying, in one
    line, which settings are wrong and why (pydantic's own message repeats the value)."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']).upper()}: {error['msg']}"
            for error in exc.errors(include_input=False, include_url=False)
        )
        raise SettingsError(f"invalid settings: {problems}") from None
{%- if cookiecutter.use_bearer_auth %}


def require_api_token(settings: Settings) -> str:
    """The API's bearer token, checked where it is used: the worker needs none."""
    if settings.api_token is None:
        raise SettingsError("API_TOKEN is not set: the API needs it to check bearer tokens")
    token = settings.api_token.get_secret_value()
    if len(token) < MIN_API_TOKEN_LENGTH:
        raise SettingsError(f"API_TOKEN must be at least {MIN_API_TOKEN_LENGTH} characters")
    return token
{%- endif %}
