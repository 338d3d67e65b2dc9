"""Every setting of the service, typed, with its default and meaning.

Values come from the environment, then from a `.env` file in the working directory.
"""

import re
import tempfile
from ipaddress import ip_network
from pathlib import Path
from typing import Annotated, Literal
{%- if cookiecutter.auth == "jwt" or cookiecutter.job_backend != "inprocess" %}
from urllib.parse import urlsplit
{%- endif %}

from limits import parse_many
from pydantic import (
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
{%- if cookiecutter.use_opentelemetry %}

OTLP_URL_RE = re.compile(r"https?://[^/\s?#]+(?:[/?#]\S*)?")
{%- endif %}


# CORS, rate limits, proxies (issue 11)
def _split_commas(value: object) -> object:
    """`a, b,c` from the environment as a tuple; empty entries are dropped."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


# NoDecode: pydantic-settings would read a list from the environment as JSON.
CommaList = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_split_commas)]
ORIGIN = re.compile(r"https?://(\[[0-9a-f:.]+\]|[^/\s:\[\]]+)(:\d{1,5})?", re.IGNORECASE)
HEADER_NAME = re.compile(r"[A-Za-z0-9-]+")
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
{%- if cookiecutter.job_backend != "inprocess" %}
# The brokers Celery's transports here speak: kombu's Redis one, and py-amqp for RabbitMQ.
RABBITMQ_SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})
BROKER_SCHEMES = frozenset({"redis", "rediss", *RABBITMQ_SCHEMES})
{%- endif %}
{%- if cookiecutter.auth == "token" %}

MIN_API_TOKEN_LENGTH = 16
{%- endif %}
{%- if cookiecutter.auth == "jwt" %}

# Signature algorithms with a public key. HMAC ("HS256") is refused: with it, anyone who
# has the issuer's public key could sign a token; "none" is no signature at all.
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


def checked_url(value: str | None, setting: str) -> str | None:
    if not value:  # unset, or left empty as in .env.example
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{setting} must be an http(s) URL with a host")
    return value
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
{%- if cookiecutter.job_backend != "inprocess" %}

    jobs_backend: Literal["inprocess", "celery"] = Field(
        default="celery",
        description="Where heavy jobs run: 'celery' (a worker, via Redis) or 'inprocess'.",
    )
    redis_url: str = Field(
        default="redis://localhost:6379/0",
        description=(
            "Redis for the job states (Celery's result store), idempotency keys and "
            "cancel flags; also the Celery broker unless BROKER_URL names another."
        ),
    )
    broker_url: str | None = Field(
{%- if cookiecutter.job_backend == "celery-rabbitmq" %}
        default="amqp://guest:guest@localhost:5672//",
{%- else %}
        default=None,
{%- endif %}
        description=(
            "The Celery broker that carries the jobs: redis://... or amqp://... "
            "(RabbitMQ). Unset or empty: REDIS_URL."
        ),
    )
    job_time_limit_seconds: int = Field(
        default=300,
        ge=2,
        description=(
            "A Celery job running longer is killed; at 90% of it the job gets "
            "SoftTimeLimitExceeded to stop cleanly. Redis redelivers tasks of a dead "
            "worker after 1.5 times this; RabbitMQ as soon as the worker's connection drops."
        ),
    )
    rabbitmq_consumer_timeout_seconds: int = Field(
        default=1800,
        ge=1,
        # Checked against JOB_TIME_LIMIT_SECONDS when only that one is set, too.
        validate_default=True,
        description=(
            "RabbitMQ's consumer_timeout (the server's setting, 30 minutes by default): "
            "it closes the channel of a job unacknowledged this long and redelivers the "
            "job while it still runs. JOB_TIME_LIMIT_SECONDS must stay below it."
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
    job_cancel_grace_seconds: float = Field(
        default=30.0,
        ge=0,
        le=3_600,
        allow_inf_nan=False,
        description=(
            "A cancelled Celery job that has not stopped (at a progress report) this many "
            "seconds after DELETE /jobs/{id} is terminated (its pool process killed)."
        ),
    )
{%- else %}

    jobs_backend: Literal["inprocess"] = Field(
        default="inprocess",
        description="Where heavy jobs run: in this process, after the response.",
    )
{%- endif %}
{%- if cookiecutter.auth == "token" %}
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
        {%- if cookiecutter.job_backend != "inprocess" %}
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
    # Periodic jobs (issue 10)
    schedule_lock_file: Path = Field(
        default=Path(tempfile.gettempdir()) / f"{__package__}-schedule.lock",
        description=(
            "In-process jobs: the file whose lock lets one server worker of the host run "
            "the schedule (jobs/schedule.py); on a local file system."
        ),
    )
    # Backpressure (issue 10)
    max_queued_jobs: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description=(
            "Jobs that may wait to start; while that many wait, a submission gets 429 with "
            "Retry-After and nothing is queued. Unset: 1,000 for in-process jobs"
            {%- if cookiecutter.job_backend != "inprocess" %}
            ", 10,000 messages in the Celery queue (about 10 MB of Redis)"
            {%- endif %}
            "."
        ),
    )
    web_concurrency: int = Field(
        default=1,
        ge=1,
        description="Server worker processes (uvicorn reads WEB_CONCURRENCY too).",
    )
    # Auth (issue 11)
    docs_enabled: bool = Field(
        default=True,
        description=(
            "Serve /docs, /docs/oauth2-redirect, /redoc and /openapi.json (without a "
            "token); false serves none of them."
        ),
    )
{%- if cookiecutter.auth == "jwt" %}
    jwt_issuer: str | None = Field(
        default=None,
        description=(
            "The identity provider's issuer URL: tokens must carry it as `iss`; its "
            "/.well-known/openid-configuration names the JWKS unless JWT_JWKS_URL is set. "
            "The API refuses to start without it; the worker does not need it."
        ),
    )
    jwt_audience: str | None = Field(
        default=None,
        description="The `aud` every token must carry: this API's identifier at the issuer.",
    )
    jwt_jwks_url: str | None = Field(
        default=None,
        description="The issuer's JWKS URL, when discovery from JWT_ISSUER is not wanted.",
    )
    jwt_algorithms: Annotated[tuple[str, ...], NoDecode] = Field(
        default=("RS256", "ES256"),
        description="Comma-separated signature algorithms accepted (public-key ones only).",
    )
    jwt_leeway_seconds: float = Field(
        default=30,
        ge=0,
        le=300,
        description="Clock skew allowed when checking exp, nbf and iat.",
    )
    jwt_jwks_min_refresh_seconds: float = Field(
        default=60,
        ge=1,
        le=86_400,
        description=(
            "A token with an unknown key id fetches the JWKS again at most this often, "
            "so made-up key ids cannot flood the issuer."
        ),
    )

    @field_validator("jwt_issuer")
    @classmethod
    def _issuer_is_a_url(cls, value: str | None) -> str | None:
        return checked_url(value, "JWT_ISSUER")

    @field_validator("jwt_jwks_url")
    @classmethod
    def _jwks_is_a_url(cls, value: str | None) -> str | None:
        return checked_url(value, "JWT_JWKS_URL")

    @field_validator("jwt_algorithms", mode="before")
    @classmethod
    def _split_algorithms(cls, value: object) -> object:
        if isinstance(value, str):
            value = tuple(name.strip() for name in value.split(",") if name.strip())
        if isinstance(value, tuple | list):
            if not value:
                raise ValueError("JWT_ALGORITHMS must name at least one algorithm")
            refused = sorted(set(value) - ASYMMETRIC_ALGORITHMS)
            if refused:
                raise ValueError(
                    "JWT_ALGORITHMS takes public-key algorithms only: "
                    + ", ".join(sorted(ASYMMETRIC_ALGORITHMS))
                )
        return value
{%- endif %}

    # Metrics (issue 9)
    metrics_public: bool = Field(
        default=False,
        description=(
{%- if cookiecutter.auth != "none" %}
            "GET /metrics without credentials. Off by default: it needs them like "
            "every route but the health checks and the docs."
{%- else %}
            "GET /metrics without a token, once an auth layer is on; this project has "
            "none, so every route is public."
{%- endif %}
        ),
    )
{%- if cookiecutter.job_backend != "inprocess" %}
    worker_metrics_port: int = Field(
        default=9191,
        ge=0,
        le=65535,
        description=(
            "The port of the worker's own metrics listener (all interfaces, no token: "
            "keep it on the internal network); 0 turns it off."
        ),
    )
{%- endif %}

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

    # CORS, rate limits, proxies (issue 11)
    cors_allow_origins: CommaList = Field(
        default=(),
        description=(
            "Origins a browser may call the API from, comma-separated, each "
            "scheme://host[:port] (or * for any). Empty: no CORS headers at all."
        ),
    )
    cors_allow_credentials: bool = Field(
        default=False,
        description="Let browsers send cookies and HTTP auth cross-origin (never with *).",
    )
    cors_allow_methods: CommaList = Field(
        default=("GET", "POST", "DELETE"),
        description="Methods a cross-origin request may use: the ones this API serves.",
    )
    cors_allow_headers: CommaList = Field(
        default=("Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID"),
        description="Request headers a cross-origin request may send: the ones this API reads.",
    )
    rate_limit: str = Field(
        default="",
        description=(
            "Requests each client may make, e.g. 100/minute or 10/second (one limit; "
            "a client is its authenticated identity, else its address). Empty: no limit."
        ),
    )
    forwarded_allow_ips: str = Field(
        default="127.0.0.1,::1",
        description=(
            "Read by uvicorn, from the environment: the proxies (addresses or networks, "
            "comma-separated, or *) whose X-Forwarded-For is believed. Checked here."
        ),
    )

    @field_validator("cors_allow_origins")
    @classmethod
    def _origins_are_origins(cls, origins: tuple[str, ...]) -> tuple[str, ...]:
        # A trailing slash or a path never matches a browser's Origin header.
        if any(origin != "*" and not ORIGIN.fullmatch(origin) for origin in origins):
            raise ValueError("each origin must be * or scheme://host[:port], with no path")
        return origins

    @field_validator("cors_allow_methods")
    @classmethod
    def _methods_are_http_methods(cls, methods: tuple[str, ...]) -> tuple[str, ...]:
        methods = tuple(method.upper() for method in methods)
        if any(method != "*" and method not in HTTP_METHODS for method in methods):
            raise ValueError(f"each method must be * or one of {', '.join(sorted(HTTP_METHODS))}")
        return methods

    @field_validator("cors_allow_headers")
    @classmethod
    def _headers_are_header_names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        if any(name != "*" and not HEADER_NAME.fullmatch(name) for name in names):
            raise ValueError("each header must be * or a header name (letters, digits, -)")
        return names
{%- if cookiecutter.job_backend != "inprocess" %}

    @field_validator("broker_url", mode="before")
    @classmethod
    def _empty_broker_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("broker_url")
    @classmethod
    def _broker_is_redis_or_rabbitmq(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Never the value in the message: a broker URL carries its password.
        if value is None:
            return None
        if urlsplit(value).scheme not in BROKER_SCHEMES:
            raise ValueError("must be a redis://, rediss://, amqp:// or amqps:// URL")
        if not is_rabbitmq(value) and value != info.data.get("redis_url"):
            # A job's admission writes its message and its state in one step.
            raise ValueError("a Redis broker must be REDIS_URL itself: leave BROKER_URL unset")
        return value

    @field_validator("rabbitmq_consumer_timeout_seconds")
    @classmethod
    def _jobs_end_before_rabbitmq_redelivers_them(cls, timeout: int, info: ValidationInfo) -> int:
        # RabbitMQ would close the channel of a job still running and hand the job to
        # another worker: two runs at once. Only a broker on RabbitMQ has this limit.
        broker = info.data.get("broker_url") or ""
        limit = info.data.get("job_time_limit_seconds")
        if is_rabbitmq(broker) and isinstance(limit, int) and limit >= timeout:
            raise ValueError(
                f"must exceed JOB_TIME_LIMIT_SECONDS ({limit}) with the broker on RabbitMQ: "
                "lower the job limit, or raise consumer_timeout on the server and here"
            )
        return timeout

    @property
    def celery_broker_url(self) -> str:
        """Where Celery's task messages go: BROKER_URL, else REDIS_URL."""
        return self.broker_url or self.redis_url

    @property
    def broker_is_rabbitmq(self) -> bool:
        return is_rabbitmq(self.celery_broker_url)
{%- endif %}

    @field_validator("rate_limit")
    @classmethod
    def _rate_limit_parses(cls, value: str) -> str:
        value = value.strip()
        try:
            if value and len(parse_many(value)) != 1:
                raise ValueError
        except ValueError:
            raise ValueError(
                "must be one limit, <count>/<period>, e.g. 100/minute, 10/second, 1000/hour"
            ) from None
        return value

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _proxies_are_addresses(cls, value: str) -> str:
        # uvicorn takes a typo as a name to match, silently trusting no proxy at all.
        for entry in (part.strip() for part in value.split(",")):
            try:
                if entry != "*":
                    ip_network(entry)  # an address is a network of one
            except ValueError:
                raise ValueError(
                    "each entry must be *, an IP address or a network such as 10.0.0.0/8"
                ) from None
        return value

    @field_validator("cors_allow_credentials")
    @classmethod
    def _no_credentials_for_any_origin(cls, allowed: bool, info: ValidationInfo) -> bool:
        # Browsers refuse credentialed responses to `*`; Starlette would echo any
        # Origin instead, which would let every site make calls as the user.
        if allowed and "*" in info.data.get("cors_allow_origins", ()):
            raise ValueError("must be false while CORS_ALLOW_ORIGINS is *: list the origins")
        return allowed

    # Error reporting (issue 9)
    sentry_dsn: SecretStr | None = Field(
        default=None,
        description=(
            "Where crashes are reported (Sentry, or a service that speaks its protocol): "
            "https://<public key>@<host>/<project id>. Unset or empty: nothing is reported "
            "and sentry_sdk is not even imported."
        ),
    )
    sentry_environment: str = Field(
        default="production",
        min_length=1,
        description="The environment reports are filed under (production, staging...).",
    )

    @field_validator("sentry_dsn", mode="before")
    @classmethod
    def _empty_dsn_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("sentry_dsn")
    @classmethod
    def _dsn_is_a_sentry_dsn(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not is_sentry_dsn(value.get_secret_value()):
            # Never the value: the DSN's key is a credential.
            raise ValueError("must be a Sentry DSN, https://<public key>@<host>/<project id>")
        return value


def is_sentry_dsn(dsn: str) -> bool:
    """Whether sentry_sdk accepts `dsn`, checked by its own parser (imported only when a
    DSN is set, so a service without one never loads it)."""
    from sentry_sdk.utils import Dsn

    try:
        Dsn(dsn)
    except ValueError:  # its BadDsn, or urllib's for a port that is not a number
        return False
    return True
{%- if cookiecutter.job_backend != "inprocess" %}


def is_rabbitmq(url: str) -> bool:
    return urlsplit(url).scheme in RABBITMQ_SCHEMES
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
{%- if cookiecutter.auth == "token" %}


def require_api_token(settings: Settings) -> str:
    """The API's bearer token, checked where it is used: the worker needs none."""
    if settings.api_token is None:
        raise SettingsError("API_TOKEN is not set: the API needs it to check bearer tokens")
    token = settings.api_token.get_secret_value()
    if len(token) < MIN_API_TOKEN_LENGTH:
        raise SettingsError(f"API_TOKEN must be at least {MIN_API_TOKEN_LENGTH} characters")
    return token
{%- endif %}
{%- if cookiecutter.auth == "jwt" %}


def require_jwt_issuer(settings: Settings) -> tuple[str, str]:
    """The issuer and audience the API checks tokens against: the worker needs neither."""
    if settings.jwt_issuer is None:
        raise SettingsError("JWT_ISSUER is not set: the API needs it to check tokens")
    if not settings.jwt_audience:
        raise SettingsError("JWT_AUDIENCE is not set: the API needs it to check tokens")
    return settings.jwt_issuer, settings.jwt_audience
{%- endif %}
