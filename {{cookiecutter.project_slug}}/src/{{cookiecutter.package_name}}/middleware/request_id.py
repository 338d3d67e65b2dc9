"""The request id: a valid incoming `X-Request-ID` is kept, else a new one is made.

The edge layer (`edge.py`) puts it in `request_id_var` for every log line of the
request and in the response.
"""

import random
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
    # 32 hex digits of 128 random bits (`uuid.uuid4().hex` has 122). A request id is a
    # correlation id, not a secret, so `random` serves (seeded from the OS, and again in
    # a forked child), without the system call `os.urandom` makes each time (about 1 us
    # here). Not a count either: ids would tell anyone how busy the service is.
    return f"{random.getrandbits(128):032x}"
