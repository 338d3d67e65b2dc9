"""Every setting of the service, typed, with its default and meaning.

Values come from the environment, then from a `.env` file in the working directory.
"""

from typing import Literal

from pydantic import Field, {% if cookiecutter.use_bearer_auth %}SecretStr, {% endif %}field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
{%- if cookiecutter.use_bearer_auth %}

MIN_API_TOKEN_LENGTH = 16
{%- endif %}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

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
            "The bearer token every request but the health checks must carry. "
            "The API refuses to start without it; the worker does not need it."
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
        default=10_000,
        ge=1,
        description=(
            "In-process jobs: finished states kept in memory at most; beyond it the oldest "
            "are forgotten before JOB_RETENTION_SECONDS."
        ),
    )
    log_level: LogLevel = Field(default="INFO", description="Lowest level that is logged.")
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="'text' for people reading a terminal, 'json' for log collectors.",
    )
    web_concurrency: int = Field(
        default=1,
        ge=1,
        description="Server worker processes (uvicorn reads WEB_CONCURRENCY too).",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_in_capitals(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value
{%- if cookiecutter.use_bearer_auth %}

    @field_validator("api_token")
    @classmethod
    def _token_is_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_API_TOKEN_LENGTH:
            raise ValueError(f"API_TOKEN must be at least {MIN_API_TOKEN_LENGTH} characters")
        return value
{%- endif %}
