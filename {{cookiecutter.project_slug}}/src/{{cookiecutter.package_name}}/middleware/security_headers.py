"""Safe defaults for browsers that meet this API's responses; an endpoint that sets
one of these headers itself keeps its own value (the edge layer adds only the missing)."""

from collections.abc import Collection

from starlette.types import Scope

from .asgi_headers import RawHeaders, raw_headers

DEFAULT_HEADERS: dict[str, str] = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
# A JSON API needs no scripts, styles or frames of its own.
API_CONTENT_SECURITY_POLICY = "default-src 'none'; frame-ancestors 'none'"
# The interactive docs load Swagger UI and ReDoc from a CDN; a strict policy breaks them.
DOCS_PATHS = ("/docs", "/redoc")
HSTS = "max-age=63072000; includeSubDomains"


class SecurityHeaders:
    """The headers for a response, chosen by path and scheme from sets encoded once."""

    def __init__(self, relaxed_csp_paths: Collection[str] = DOCS_PATHS) -> None:
        self.relaxed_csp_paths = tuple(relaxed_csp_paths)
        defaults = raw_headers(DEFAULT_HEADERS)
        csp = raw_headers({"Content-Security-Policy": API_CONTENT_SECURITY_POLICY})
        # Browsers ignore HSTS over plain HTTP; send it only where it means something.
        hsts = raw_headers({"Strict-Transport-Security": HSTS})
        self.names = frozenset(name for name, _ in defaults + csp + hsts)
        # Indexed [relaxed CSP][https].
        self.variants: tuple[tuple[RawHeaders, RawHeaders], ...] = (
            (defaults + csp, defaults + csp + hsts),
            (defaults, defaults + hsts),
        )

    def for_scope(self, scope: Scope) -> RawHeaders:
        path: str = scope["path"]
        relaxed = path.startswith(self.relaxed_csp_paths)
        return self.variants[relaxed][scope.get("scheme") == "https"]
