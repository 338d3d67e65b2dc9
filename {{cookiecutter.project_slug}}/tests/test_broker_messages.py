"""What is in the queue: the message the API writes is the one Celery would write, and
any other bytes are set aside by the worker, which goes on.

Anything that can write to Redis can push onto the queue's list. kombu decodes what
it pops without a guard, and before `jobs/broker.py` each of these stopped the worker
("Unrecoverable error", exit 1), and every job behind it with it.
"""

import base64
import json
import pickle
{%- if cookiecutter.use_opentelemetry %}
import re
{%- endif %}
import uuid
from pathlib import Path
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

from {{ cookiecutter.package_name }}.jobs import broker, celery_app
{%- if cookiecutter.use_opentelemetry %}
from {{ cookiecutter.package_name }}.observability import tracing
{%- endif %}
from tests.celery_processes import RedisServer, running_worker
from tests.support import make_settings, wait_until

QUEUE = "celery"
{%- if cookiecutter.use_opentelemetry %}
TRACEPARENT_RE = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
{%- endif %}
GOOD_HEADERS = {"task": celery_app.RUN_JOB_TASK, "id": "not-a-job", "lang": "py"}
GOOD_PROPERTIES = {
    "body_encoding": "base64",
    "delivery_tag": "tag-1",
    "delivery_info": {"exchange": "", "routing_key": QUEUE},
    "priority": 0,
}


def envelope(body: bytes | str, **fields: Any) -> bytes:
    """A kombu message envelope as it sits in Redis, with `fields` replaced."""
    encoded = base64.b64encode(body).decode() if isinstance(body, bytes) else body
    message = {
        "body": encoded,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": GOOD_HEADERS,
        "properties": GOOD_PROPERTIES,
        **fields,
    }
    return json.dumps(message).encode()


# Values no correct producer writes; each once stopped the worker.
FATAL_BEFORE = {
    "not JSON": b"hello",
    "truncated JSON": b'{"body": "',
    "JSON array": b"[1, 2, 3]",
    "JSON number": b"42",
    "JSON string": b'"celery"',
    "JSON null": b"null",
    "raw pickle": pickle.dumps({"task": celery_app.RUN_JOB_TASK}),
    "invalid UTF-8": b"\xff\xfe\x00{",
    "properties not an object": envelope(b"[]", properties=5),
    "no delivery tag": envelope(b"[]", properties={"body_encoding": "base64"}),
    "body not base64": envelope("!!! not base64 !!!"),
    "headers a list": envelope(b"[[], {}, {}]", headers=[1]),
    "delivery info empty": envelope(
        b"[[], {}, {}]", properties={**GOOD_PROPERTIES, "delivery_info": {}}
    ),
    "body not a task": envelope(b'"just a string"'),
    "body a short list": envelope(b"[1]"),
}
# Envelopes that kombu delivers and Celery itself refuses: logged and dropped by Celery.
REFUSED_BY_CELERY = {
    "pickle content type": envelope(
        pickle.dumps(1), **{"content-type": "application/x-python-serialize"}
    ),
    "unknown task": envelope(b"[[], {}, {}]", headers={**GOOD_HEADERS, "task": "no.such.task"}),
}


def test_the_worker_uses_the_guarded_transport_over_a_method_kombu_still_has() -> None:
    """The guard overrides kombu's `Channel._brpop_read`: if a kombu release renamed
    it, the override would silently do nothing; this fails instead."""
    assert callable(getattr(kombu_redis.Channel, "_brpop_read", None))
    app = celery_app.create_celery_app(make_settings(jobs_backend="celery"), worker=True)
    with app.connection_for_read() as connection:
        assert type(connection.transport) is broker.Transport


def test_the_api_writes_the_message_celery_itself_would_write(private_redis: RedisServer) -> None:
    """The API builds task messages itself (`broker.encode_task_message`) and pushes them
    with its own pipeline. Field for field, each is what `send_task` pushes through
    kombu's transport, apart from the tag kombu draws for every message: a Celery or
    kombu release that changes the message, or where it goes, fails here."""
    settings = make_settings(jobs_backend="celery", redis_url=private_redis.url)
    app = celery_app.create_celery_app(settings)
    {%- if cookiecutter.use_opentelemetry %}
    tracing.setup_tracing(settings)  # as create_app does: the publish signals are hooked
    {%- endif %}
    args = ("build_report", {"rows": 3, "simulate_seconds": 0.5})
    headers = {celery_app.REQUEST_ID_HEADER: "the-request-id"}
    client = redis.Redis.from_url(private_redis.url)
    app.send_task(celery_app.RUN_JOB_TASK, args=args, task_id="job-1", headers=headers)
    assert client.llen(QUEUE) == 1, "send_task pushed its message somewhere else"
    pushed = client.rpop(QUEUE)
    assert isinstance(pushed, bytes)
    celerys = json.loads(pushed)
    ours = json.loads(
        broker.encode_task_message(app, celery_app.RUN_JOB_TASK, "job-1", args, headers, QUEUE)
    )
    tags = [m["properties"].pop("delivery_tag") for m in (ours, celerys)]
    {%- if cookiecutter.use_opentelemetry %}
    # Each publish has a span of its own, so a traceparent of its own (same trace
    # format, another span id): see observability/tracing.py.
    parents = [m["headers"].pop("traceparent") for m in (ours, celerys)]
    assert all(TRACEPARENT_RE.fullmatch(parent) for parent in parents), parents
    assert parents[0] != parents[1]
    {%- endif %}
    assert ours == celerys
    assert tags[0] != tags[1]
    assert uuid.UUID(tags[0])
    client.close()
    app.close()


def test_the_worker_survives_any_bytes_in_the_queue_and_runs_the_job_behind_them(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(private_redis.url)
    app = celery_app.create_celery_app(
        make_settings(jobs_backend="celery", redis_url=private_redis.url)
    )
    for value in [*FATAL_BEFORE.values(), *REFUSED_BY_CELERY.values()]:
        client.lpush(QUEUE, value)
    job_id = "job-behind-the-bad-messages"
    app.send_task(celery_app.RUN_JOB_TASK, args=("build_report", {"rows": 3}), task_id=job_id)

    with running_worker(private_redis.url, "sturdy", tmp_path) as worker:
        result = app.AsyncResult(job_id)
        wait_until(lambda: result.state == "SUCCESS", 30, "the job behind the bad messages")
        assert isinstance(result.result, dict)
        assert result.result["rows"] == 3
        assert worker.process.poll() is None, "the worker exited"

        set_aside = client.lrange(broker.dead_letter_key(QUEUE), 0, -1)
        assert sorted(set_aside) == sorted(FATAL_BEFORE.values())
        logged = [m for m in worker.messages() if m.startswith("malformed message on queue")]
        assert len(logged) == len(FATAL_BEFORE)
        assert all(len(line) < 400 for line in logged)  # truncated, whatever the size
        assert client.llen(QUEUE) == 0
    client.close()


def test_the_dead_letter_list_is_bounded(private_redis: RedisServer, tmp_path: Path) -> None:
    client = redis.Redis.from_url(private_redis.url)
    key = broker.dead_letter_key(QUEUE)
    for index in range(broker.DEAD_LETTER_MAX + 5):
        client.lpush(QUEUE, b"x%d" % index + b"!" * 10_000)
    last = b"x%d!" % (broker.DEAD_LETTER_MAX + 4)

    def newest_set_aside() -> bytes:
        newest = client.lindex(key, 0)
        return newest if isinstance(newest, bytes) else b""

    with running_worker(private_redis.url, "bounded", tmp_path):
        wait_until(lambda: newest_set_aside().startswith(last), 60, "the last one set aside")
        assert client.llen(key) == broker.DEAD_LETTER_MAX
        assert client.llen(QUEUE) == 0
    client.close()
