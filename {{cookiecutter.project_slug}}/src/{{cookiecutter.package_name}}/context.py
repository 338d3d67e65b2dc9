"""Per-request context that code anywhere in the service can read without passing it on.

A `ContextVar` follows the request into its endpoint, its dependencies, the threadpool
(sync endpoints and sync background tasks run in a copy of the context) and its
background tasks, which is how every log line of a request gets its id.
"""

from contextvars import ContextVar

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
# Who made the request: `scope["user"].identity`, set by the auth layer if there is one,
# else None. Log lines and the jobs a request queues carry it (issue 11).
subject_var: ContextVar[str | None] = ContextVar("subject", default=None)
