"""CORS, with Starlette's pure-ASGI `CORSMiddleware`, only when origins are configured.

It sits outside the edge layer and every auth layer, so that a browser's preflight
`OPTIONS` (which never carries a token) is answered before any auth, and so that the
edge layer's 413, an auth layer's 401, a 429 and a 500 still carry
`Access-Control-Allow-Origin`: without it the browser hides the error from the page's
code, which sees only a network failure.
"""

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from ..settings import Settings

# Response headers a page's script may read besides the few CORS always allows
# (Content-Type, Content-Length, Cache-Control...): the request id to quote in a bug
# report, the timing, where a queued job is (`Location`), and when to come back.
EXPOSED_HEADERS = (
    "X-Request-ID",
    "Server-Timing",
    "Location",
    "Retry-After",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
)
# How long a browser may reuse a preflight answer, in seconds (Chrome caps it at 7200).
PREFLIGHT_MAX_AGE = 600


def cors_layers(settings: Settings) -> list[Middleware]:
    """The CORS layer, or none: with no origins, no CORS header is ever sent."""
    if not settings.cors_allow_origins:
        return []
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=settings.cors_allow_origins,
            allow_methods=settings.cors_allow_methods,
            allow_headers=settings.cors_allow_headers,
            allow_credentials=settings.cors_allow_credentials,
            expose_headers=EXPOSED_HEADERS,
            max_age=PREFLIGHT_MAX_AGE,
        )
    ]
