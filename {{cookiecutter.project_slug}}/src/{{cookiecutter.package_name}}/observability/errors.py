"""Error reports in Sentry's protocol (Sentry, GlitchTip...), on only when SENTRY_DSN is set.

Without a DSN nothing here imports sentry_sdk, so a service that reports nothing pays
nothing for it, at start-up or per request (README, "Error reporting", has the numbers).

Reported: an exception that escapes a request (the 500), a job that fails, and every
ERROR log line (sentry_sdk's logging integration: an in-process job's failure, a
notification that could not be sent).
{%- if cookiecutter.job_backend != "inprocess" %} A Celery job is reported when its last attempt
fails: a retry that later succeeds is no failure.
{%- endif %} Not reported: 4xx answers, the 503 of a job
backend that is down, and a job that refused its own params (`JobInputError`): those
are the caller's mistake or an outage, not a bug here.

Each report carries the request id as the tag `request_id`, read when the report is
made: the same id as the response's X-Request-ID and every log line of the request or
of its job.{% if cookiecutter.use_opentelemetry %} The trace id joins it as the tag `trace_id`.{% endif %}

Secrets stay in the process: no request bodies, cookies or local variables are
collected, credential headers are blanked, and any text holding a secret setting
({% if cookiecutter.auth == "token" %}API_TOKEN, {% endif %}a password in a URL) is replaced, wherever it appears.
"""

from collections.abc import Mapping
from importlib import metadata
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

{% if cookiecutter.use_opentelemetry -%}
from opentelemetry import trace
{% endif -%}
from pydantic import SecretStr

from ..context import request_id_var
from ..jobs.models import JobInputError
from ..settings import Settings

if TYPE_CHECKING:
    from sentry_sdk.types import Event, Hint

DISTRIBUTION = "{{ cookiecutter.project_slug }}"
ACCESS_LOGGER = __name__.partition(".")[0] + ".access"  # middleware/access_log.py's
{%- if cookiecutter.job_backend != "inprocess" %}
BROKER_RECONNECT_LOGGER = "celery.worker.consumer.consumer"
{%- endif %}
FILTERED = "[Filtered]"
# A header whose name says it carries a credential: Authorization, Cookie, Set-Cookie,
# X-Api-Key, X-Auth-Token, X-CSRF-Token, Proxy-Authorization...
CREDENTIAL_HEADER_WORDS = ("auth", "cookie", "token", "key", "secret", "session", "csrf")
# Shorter secret values are not searched for: they would blank out unrelated text.
MIN_SECRET_CHARS = 8
# What the API reports by status: every 5xx but the 503 it sends on purpose, for a
# dependency that is down (api/errors.py). sentry_sdk's default is 500-599.
FAILED_REQUEST_STATUS_CODES = frozenset(range(500, 600)) - {503}


def setup_error_reporting(settings: Settings{% if cookiecutter.job_backend != "inprocess" %}, *, celery_worker: bool = False{% endif %}) -> None:
    """Start reporting errors, if SENTRY_DSN is set; call once per process, before the
    app is built{% if cookiecutter.job_backend != "inprocess" %} (the worker: at import, before the pool forks){% endif %}.

    {%- if cookiecutter.job_backend != "inprocess" %}

    `celery_worker`: the Celery worker, which reports failed tasks. The API publishes
    jobs with its own publisher (jobs/celery_backend.py), which the Celery integration
    would not see, so it is left out there.
    {%- endif %}
    """
    if settings.sentry_dsn is None:
        return
    import sentry_sdk
    from sentry_sdk.integrations import Integration
    {%- if cookiecutter.job_backend != "inprocess" %}
    from sentry_sdk.integrations.celery import CeleryIntegration
    {%- endif %}
    from sentry_sdk.integrations.fastapi import FastApiIntegration
    from sentry_sdk.integrations.logging import ignore_logger
    from sentry_sdk.integrations.starlette import StarletteIntegration

    integrations: list[Integration] = [
        StarletteIntegration(failed_request_status_codes=FAILED_REQUEST_STATUS_CODES),
        FastApiIntegration(failed_request_status_codes=FAILED_REQUEST_STATUS_CODES),
    ]
    {%- if cookiecutter.job_backend != "inprocess" %}
    if celery_worker:
        # No trace headers in task messages: the request id links a job's report to
        # its request.
        integrations.append(CeleryIntegration(propagate_traces=False))
        # Its ERROR line each time it fails to reach the broker is an outage, not a bug,
        # like the API's 503: measured, 3 reports in 8 s of Redis down, and on and on.
        ignore_logger(BROKER_RECONNECT_LOGGER)
    {%- endif %}
    # The access line as a breadcrumb says nothing the report does not (method, URL,
    # the 500) and cost 100,000 instructions a request at INFO (bench/instructions.py).
    ignore_logger(ACCESS_LOGGER)
    secrets = secret_values(settings)

    def before_send(event: "Event", hint: "Hint") -> "Event | None":
        return prepared_report(event, hint, secrets)

    sentry_sdk.init(
        dsn=settings.sentry_dsn.get_secret_value(),
        environment=settings.sentry_environment,
        release=release(),
        # What is collected, said outright (this replaces `send_default_pii=False`,
        # which sentry_sdk 2.75 deprecates). Frame variables, bodies and job params are
        # where secrets live (a token in a local, a password a client posted): the
        # traceback, the request line and the headers are enough to find a bug.
        data_collection={
            "user_info": False,
            "cookies": {"mode": "off"},
            "http_headers": {
                "request": {"mode": "denylist", "terms": list(CREDENTIAL_HEADER_WORDS)}
            },
            "http_bodies": [],
            "url_query_params": {"mode": "denylist"},
            "queues": False,
            "database_query_data": False,
            "stack_frame_variables": False,
        },
        # Errors only: no transactions (traces_sample_rate stays unset) and no session
        # counts, which would cost every request.
        auto_session_tracking=False,
        # The integrations above and sentry_sdk's defaults (logging, threads, atexit...),
        # not every library it finds installed (each database command as a breadcrumb...).
        auto_enabling_integrations=False,
        integrations=integrations,
        before_send=before_send,
    )


def release() -> str | None:
    """`<distribution>@<version>` of the installed service; None (sentry_sdk's own
    guess: SENTRY_RELEASE, or git) when it runs uninstalled from a checkout."""
    try:
        return f"{DISTRIBUTION}@{metadata.version(DISTRIBUTION)}"
    except metadata.PackageNotFoundError:
        return None


def secret_values(settings: Settings) -> tuple[str, ...]:
    """Every secret the settings hold: SecretStr values and passwords in URLs."""
    values: list[str] = []
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            values.append(value.get_secret_value())
        elif isinstance(value, str) and "://" in value:
            values.append(urlsplit(value).password or "")
    return tuple(value for value in values if len(value) >= MIN_SECRET_CHARS)


def prepared_report(event: "Event", hint: "Hint", secrets: tuple[str, ...]) -> "Event | None":
    """The report as it leaves the process, or None to drop it (`before_send`)."""
    exc_info = hint.get("exc_info")
    if exc_info is not None and is_expected(exc_info[1]):
        return None
    request_id = request_id_var.get()
    if request_id is not None:
        event.setdefault("tags", {})["request_id"] = request_id
    {%- if cookiecutter.use_opentelemetry %}
    # And the trace id, so that a report leads to its trace (middleware/tracing.py).
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        event.setdefault("tags", {})["trace_id"] = format(span_context.trace_id, "032x")
    {%- endif %}
    request = event.get("request")
    if isinstance(request, dict):
        request.pop("cookies", None)
        request.pop("data", None)
        if isinstance(headers := request.get("headers"), Mapping):
            request["headers"] = {
                name: FILTERED if is_credential_header(name) else value
                for name, value in headers.items()
            }
    cleaned: Event = without_secrets(event, secrets)
    return cleaned


def is_expected(error: BaseException | None) -> bool:
    """A job that refused its params, however often it was wrapped on the way up."""
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, JobInputError):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


def is_credential_header(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in CREDENTIAL_HEADER_WORDS)


def without_secrets(value: Any, secrets: tuple[str, ...]) -> Any:
    """`value` with every string that contains a secret replaced, at any depth."""
    if isinstance(value, str):
        return FILTERED if any(secret in value for secret in secrets) else value
    if isinstance(value, dict):
        return {
            without_secrets(key, secrets): without_secrets(item, secrets)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [without_secrets(item, secrets) for item in value]
    return value
