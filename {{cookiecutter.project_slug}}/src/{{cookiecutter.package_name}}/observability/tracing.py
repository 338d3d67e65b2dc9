"""Traces: OpenTelemetry's SDK, set up once per process from the settings and `OTEL_*`.

`setup_tracing` is called by `factory.create_app` and, in each worker process, by
`setup_worker_tracing`. Spans are always made (so an incoming `traceparent` is
continued and log lines carry the trace id), but they leave the process only when an
OTLP endpoint is set: without one there is no exporter, no export thread and no
connection. The sampler is the SDK's, from `OTEL_TRACES_SAMPLER` (default: parent-based,
always on).
{%- if cookiecutter.job_backend != "inprocess" %}

The API does not publish with `send_task` (see `celery_backend.QueuePublisher`), and the
Celery instrumentation's publish hooks find the task through Celery's *current* app,
which the API's is not: they would start a span that never ends. So the API makes its
own producer span on the `before_task_publish` signal that `broker.encode_task_message`
sends, and puts the W3C `traceparent` into the task's headers; the worker's Celery
instrumentation reads it back and makes the task's span its child.
{%- endif %}
"""

from __future__ import annotations

import logging
{% if cookiecutter.job_backend != "inprocess" -%}
from typing import Any

from celery import signals
{% else %}
{% endif -%}
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
{%- if cookiecutter.job_backend != "inprocess" %}
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.propagate import inject
{%- endif %}
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from ..settings import Settings

logger = logging.getLogger(__name__)

TRACES_PATH = "/v1/traces"
{%- if cookiecutter.job_backend != "inprocess" %}
# The name and attributes the Celery instrumentation gives the spans of a publish, so
# that the API's publishes and a worker's retries read the same in a trace.
PUBLISH_SPAN_PREFIX = "apply_async/"
{%- endif %}

_provider: TracerProvider | None = None


def traces_endpoint(settings: Settings) -> str | None:
    """Where spans go, as the OTLP exporter would choose it; None: nowhere."""
    if settings.otel_exporter_otlp_traces_endpoint:
        return settings.otel_exporter_otlp_traces_endpoint
    if settings.otel_exporter_otlp_endpoint:
        return settings.otel_exporter_otlp_endpoint.rstrip("/") + TRACES_PATH
    return None


def setup_tracing(settings: Settings) -> TracerProvider:
    """The process's tracer provider, made and registered on the first call.

    OpenTelemetry's global provider can be set once per process; later calls (tests
    build many apps) return the first one.
    """
    global _provider
    if _provider is not None:
        return _provider
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: settings.otel_service_name}))
    endpoint = traces_endpoint(settings)
    if endpoint is not None:
        # The exporter takes its headers, timeout and compression from OTEL_*; the
        # processor its delays and batch sizes (OTEL_BSP_*).
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        logger.info("traces are exported to %s", endpoint)
    trace.set_tracer_provider(provider)
    _provider = provider
    {%- if cookiecutter.job_backend != "inprocess" %}
    signals.before_task_publish.connect(_start_publish_span, weak=False)
    signals.after_task_publish.connect(_end_publish_span, weak=False)
    {%- endif %}
    return provider
{%- if cookiecutter.job_backend != "inprocess" %}


def setup_worker_tracing(settings: Settings) -> None:
    """Tracing in a worker process: Celery's instrumentation makes a span per task,
    child of the span that published it. Called in each pool process
    (`worker_process_init`): the export thread does not survive a fork."""
    provider = setup_tracing(settings)
    # The worker's own publishes (retries) are the instrumentation's: there the app is
    # Celery's current one.
    signals.before_task_publish.disconnect(_start_publish_span)
    signals.after_task_publish.disconnect(_end_publish_span)
    CeleryInstrumentor().instrument(tracer_provider=provider)  # type: ignore[no-untyped-call]


# Publish spans between the two signals, by task id; the signals run one after the
# other in the submitting request's task, so the entry lives for microseconds.
_publishing: dict[str, trace.Span] = {}


def _start_publish_span(sender: str, headers: dict[str, Any], **_: Any) -> None:
    task_id = str(headers.get("id"))
    span = trace.get_tracer(__name__).start_span(
        PUBLISH_SPAN_PREFIX + sender,
        kind=trace.SpanKind.PRODUCER,
        attributes={
            "celery.action": "apply_async",
            "celery.task_name": sender,
            "messaging.message.id": task_id,
        },
    )
    _publishing[task_id] = span
    # The worker's task span becomes a child of this one, not of the request's.
    inject(headers, context=trace.set_span_in_context(span))


def _end_publish_span(headers: dict[str, Any], **_: Any) -> None:
    span = _publishing.pop(str(headers.get("id")), None)
    if span is not None:
        span.end()
{%- endif %}
