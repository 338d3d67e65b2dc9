"""The request id: a valid incoming `X-Request-ID` is kept, else a new one is made.

The edge layer (`edge.py`) puts it in `request_id_var` for every log line of the
request and in the response.
"""

import itertools
import os
import re

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_KEY = REQUEST_ID_HEADER.lower().encode("latin-1")  # as ASGI servers send names
# What a well-behaved proxy or client sends: UUIDs, hex, ULIDs and the like. Anything
# else (CR/LF, spaces, very long values) could forge log lines or bloat them.
VALID_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")


def request_id_for(incoming: bytes | None) -> str:
    """The id of a request whose `X-Request-ID` header is `incoming` (None: absent)."""
    if incoming is not None and VALID_REQUEST_ID.match(incoming):
        return incoming.decode("ascii")
    return f"{_id_prefix}{next(_id_counter):012x}"


def _new_id_sequence() -> None:
    """A new random prefix: 20 hex digits (80 bits) of the OS's randomness, then a
    12-digit count. Unique without a system call per request (`os.urandom` is one,
    about 1 us here); made again in a forked child, which would else repeat its
    parent's ids."""
    global _id_prefix, _id_counter
    _id_prefix = os.urandom(10).hex()
    _id_counter = itertools.count()


_id_prefix = ""
_id_counter = itertools.count()
_new_id_sequence()
os.register_at_fork(after_in_child=_new_id_sequence)
