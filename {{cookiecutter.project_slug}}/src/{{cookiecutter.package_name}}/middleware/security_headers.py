"""Safe defaults for browsers that meet this API's responses; an endpoint that sets
one of these headers itself keeps its own value."""

from collections.abc import Collection

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp, relaxed_csp_paths: Collection[str] = DOCS_PATHS) -> None:
        self.app = app
        self.relaxed_csp_paths = tuple(relaxed_csp_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        strict_csp = not scope["path"].startswith(self.relaxed_csp_paths)
        # Browsers ignore HSTS over plain HTTP; send it only where it means something.
        over_https = scope.get("scheme") == "https"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in DEFAULT_HEADERS.items():
                    headers.setdefault(name, value)
                if strict_csp:
                    headers.setdefault("Content-Security-Policy", API_CONTENT_SECURITY_POLICY)
                if over_https:
                    headers.setdefault("Strict-Transport-Security", HSTS)
            await send(message)

        await self.app(scope, receive, send_with_headers)
