"""Raw header access for the layers that run on every request.

Starlette's `Headers` and `MutableHeaders` copy the whole header list, and lower-case
and encode the name on every lookup: fine in an endpoint, but a measurable share of a
request in a layer that only reads or adds a header or two. These layers work on the
raw `(name, value)` byte pairs instead, with names encoded once, at import.

A layer that adds response headers always sends a new list: the app may send any
iterable, or a list it reuses for every response, which must not grow with each one.
"""

from collections.abc import Iterable, Mapping

from starlette.types import Scope

RawHeaders = tuple[tuple[bytes, bytes], ...]


def request_header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of request header `name`, given in lower case: ASGI servers send
    names lower-cased, and Starlette's `Headers` compares them the same way."""
    headers: Iterable[tuple[bytes, bytes]] = scope["headers"]
    for key, value in headers:
        if key == name:
            return value
    return None


def raw_headers(headers: Mapping[str, str]) -> RawHeaders:
    """`headers` as response header pairs, names lower-cased like `MutableHeaders` does."""
    return tuple(
        (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()
    )
