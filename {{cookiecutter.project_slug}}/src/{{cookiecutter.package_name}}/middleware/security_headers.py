"""Safe defaults for browsers that meet this API's responses; an endpoint that sets
one of these headers itself keeps its own value."""

from collections.abc import Collection

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .asgi_headers import raw_headers

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

# Encoded once, not for every response.
RAW_DEFAULT_HEADERS = raw_headers(DEFAULT_HEADERS)
RAW_CSP = raw_headers({"Content-Security-Policy": API_CONTENT_SECURITY_POLICY})
RAW_HSTS = raw_headers({"Strict-Transport-Security": HSTS})


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp, relaxed_csp_paths: Collection[str] = DOCS_PATHS) -> None:
        self.app = app
        self.relaxed_csp_paths = tuple(relaxed_csp_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        defaults = RAW_DEFAULT_HEADERS
        if not scope["path"].startswith(self.relaxed_csp_paths):
            defaults += RAW_CSP
        # Browsers ignore HSTS over plain HTTP; send it only where it means something.
        if scope.get("scheme") == "https":
            defaults += RAW_HSTS

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))  # a new list: see asgi_headers
                present = {name for name, _ in headers}
                headers += [(name, value) for name, value in defaults if name not in present]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
