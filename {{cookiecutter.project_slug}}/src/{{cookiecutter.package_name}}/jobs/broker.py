"""kombu's Redis transport, made to survive any bytes in the queue; and the task
message as that transport stores it, for the API to publish without it.

Anything that can write to Redis (a bug in another producer, a half-written message, an
attacker) can push a value onto the queue's list. kombu 5.7 decodes what it pops with no
guard: a value that is not JSON, or JSON that is not a message envelope, raises inside
the worker's event loop and the worker exits ("Unrecoverable error"), stopping every
job behind it. This transport checks each popped value before delivering it, and guards the
delivery itself (a well-formed envelope whose body is not a task crashed Celery's own
consumer the same way); a bad one is logged once (truncated) and moved to a
dead-letter list of bounded length, `<queue>:dead-letter`, and the worker goes on
with the next message.

Pickle stays refused: the service accepts JSON only (see `celery_app.celery_config`).
Messages with a good envelope that Celery itself refuses (an unknown task, a
disallowed content type) are logged and dropped by Celery, as it always did.

The check overrides one method of kombu's channel, `_brpop_read`, which this mirrors
apart from the check; `tests/test_broker_messages.py` fails if a kombu release changes
what is delivered. Measured on a 900-byte task message: 32 us to decode and check
it, of which 26 us is the JSON decoding kombu does anyway; the check adds about 6 us.

`encode_task_message` writes what kombu's `Producer.publish` would push onto the queue's
list for Celery's `send_task`, so that the API can push it itself, from the event loop
(see `celery_backend.QueuePublisher` for why, with the numbers).
`tests/test_broker_messages.py` compares the two field by field: a Celery or kombu
release that changes the message fails there, not in production.
"""

import base64
import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from celery import Celery, signals
from kombu.serialization import dumps as serialize
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import Empty
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

logger = logging.getLogger(__name__)

DEAD_LETTER_SUFFIX = ":dead-letter"
# The newest bad messages kept for inspection; older ones are dropped.
DEAD_LETTER_MAX = 1000
# How much of a bad message its log line shows.
LOGGED_BYTES = 200


# kombu's default for persistent messages; the Redis transport stores it and ignores it.
PERSISTENT = 2


def dead_letter_key(queue: str) -> str:
    return queue + DEAD_LETTER_SUFFIX


def encode_task_message(
    app: Celery,
    task_name: str,
    task_id: str,
    args: Sequence[Any],
    headers: Mapping[str, Any],
    queue: str,
) -> str:
    """The message `app.send_task(task_name, args, task_id=..., headers=...)` would push
    onto `queue`'s Redis list: Celery's own task message (protocol 2), in kombu's
    envelope, with the body base64-encoded as kombu's virtual transports store it.

    Only the default route is written: the anonymous exchange, straight to `queue`, at
    priority 0 (kombu's list for that priority is the queue's own name). Celery's
    `before_task_publish` and `after_task_publish` signals fire as for `send_task`, so
    that what hooks into them (headers added to the message) keeps working.
    """
    argsrepr = repr(args)  # Celery's `saferepr` is a third of building the message
    task_headers, properties, body, _ = app.amqp.create_task_message(
        task_id,
        task_name,
        args,
        {},
        argsrepr=argsrepr[: app.amqp.argsrepr_maxsize],
        kwargsrepr="{}",
        reply_to=app.thread_oid,
        ignore_result=None,  # what `send_task` passes when its caller names none
    )
    task_headers.update(headers)
    if signals.before_task_publish.receivers:
        signals.before_task_publish.send(
            sender=task_name,
            body=body,
            exchange="",
            routing_key=queue,
            declare=[],
            headers=task_headers,
            properties=properties,
            retry_policy={},
        )
    content_type, content_encoding, data = serialize(body, serializer=app.conf.task_serializer)
    raw = data.encode(content_encoding) if isinstance(data, str) else data
    properties.update(
        delivery_mode=PERSISTENT,
        delivery_info={"exchange": "", "routing_key": queue},
        priority=0,
        body_encoding="base64",
        delivery_tag=str(uuid.uuid4()),
    )
    message: str = dumps(
        {
            "body": base64.b64encode(raw).decode(),
            "content-encoding": content_encoding,
            "content-type": content_type,
            "headers": task_headers,
            "properties": properties,
        }
    )
    if signals.after_task_publish.receivers:
        signals.after_task_publish.send(
            sender=task_name, body=body, headers=task_headers, exchange="", routing_key=queue
        )
    return message


class MalformedMessageError(ValueError):
    pass


class Channel(kombu_redis.Channel):
    # Set by kombu's channel; declared for the type checker, which has no stubs for them.
    connection_errors: tuple[type[BaseException], ...]
    _queue_cycle: Any
    qos: Any

    def _brpop_read(self, **options: Any) -> bool:
        try:
            try:
                reply = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                # As kombu does: the next poll reconnects.
                self.client.connection.disconnect()
                raise
            if not reply:
                raise Empty()
            key, item = reply
            queue = bytes_to_str(key).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(queue)
            try:
                payload = self._envelope(item)
            except Exception as exc:  # any bytes at all: nothing here may stop the worker
                self._set_aside(queue, item, exc)
                return True
            try:
                self.connection._deliver(payload, queue)
            except self.connection_errors:
                raise
            except Exception as exc:
                # Celery took the message and failed on it; it is unacknowledged now and
                # would come back after the visibility timeout, to fail again.
                self._set_aside(queue, item, exc)
                self.qos.ack(payload["properties"]["delivery_tag"])
            return True
        finally:
            self._in_poll = None
            flush_reauth = getattr(self, "_flush_brpop_reauth", None)  # kombu >= 5.6
            if flush_reauth is not None:
                flush_reauth()

    def _envelope(self, item: bytes) -> dict[str, Any]:
        """The decoded envelope, if kombu and Celery can handle it; else raise."""
        payload = loads(bytes_to_str(item))
        if not isinstance(payload, dict):
            raise MalformedMessageError(f"a JSON {type(payload).__name__}, not an object")
        # Building the message decodes the body and reads every field kombu uses.
        message = self.Message(payload, channel=self)
        if not isinstance(message.headers, dict):
            raise MalformedMessageError("headers are not an object")
        info = message.delivery_info
        if not isinstance(info, dict) or not {"exchange", "routing_key"} <= info.keys():
            raise MalformedMessageError("delivery_info lacks exchange and routing_key")
        if not isinstance(message.delivery_tag, str):
            raise MalformedMessageError("delivery_tag is not a string")
        return payload

    def _set_aside(self, queue: str, item: bytes, error: Exception) -> None:
        key = dead_letter_key(queue)
        logger.error(
            "malformed message on queue %s (%d bytes), moved to %s: %s: %r",
            queue,
            len(item),
            key,
            type(error).__name__,
            item[:LOGGED_BYTES],
        )
        try:
            with self.client.pipeline(transaction=False) as pipe:
                pipe.lpush(key, item)
                pipe.ltrim(key, 0, DEAD_LETTER_MAX - 1)
                pipe.execute()
        except self.connection_errors:
            logger.warning("could not keep the malformed message: Redis is unreachable")


class Transport(kombu_redis.Transport):
    Channel = Channel
