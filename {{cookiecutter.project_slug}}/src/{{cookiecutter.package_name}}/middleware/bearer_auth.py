"""Reject requests without the right bearer token before the app sees them.

Raising `HTTPException` here would not give a 401: middleware runs outside FastAPI's
exception handlers, so it would surface as a 500. The middleware sends the 401 itself
and never calls the app, so no body is read and no endpoint code runs.

A request with the token gets Starlette's `scope["user"]`, whose `identity` is the
token's fingerprint (never the token), and empty `scope["auth"]` scopes: one token
grants everything.
"""

import hashlib
import hmac
from collections.abc import Collection

from starlette.authentication import AuthCredentials, BaseUser
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ..context import subject_var
from .asgi_headers import request_header
from .paths import HEALTH_PATHS

# RFC 6455 close code for "policy violation"; before `accept` the server answers 403.
WEBSOCKET_POLICY_VIOLATION = 1008


class TokenHolder(BaseUser):
    """Whoever holds the API token; `identity` tells tokens apart in logs, not who."""

    def __init__(self, fingerprint: str) -> None:
        self.fingerprint = fingerprint

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.fingerprint

    @property
    def identity(self) -> str:
        return self.fingerprint


def fingerprint(token: str) -> str:
    """`token:` and 16 hex digits of the token's SHA-256: safe to log, and the same for
    every process that has the token."""
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:16]


class BearerAuthMiddleware:
    def __init__(
        self, app: ASGIApp, token: str, public_paths: Collection[str] = HEALTH_PATHS
    ) -> None:
        if not token:
            raise ValueError("BearerAuthMiddleware needs a non-empty token")
        self.app = app
        self.expected = token.encode()
        self.public_paths = frozenset(public_paths)
        self.user = TokenHolder(fingerprint(token))
        self.credentials = AuthCredentials()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in self.public_paths:
            await self.app(scope, receive, send)
            return

        authorization = (request_header(scope, b"authorization") or b"").decode("latin-1")
        scheme, _, credentials = authorization.partition(" ")
        presented = credentials.strip().encode()
        # compare_digest takes as long for a near miss as for a wild guess.
        if scheme.lower() == "bearer" and hmac.compare_digest(presented, self.expected):
            scope["user"] = self.user
            scope["auth"] = self.credentials
            context_token = subject_var.set(self.user.fingerprint)
            try:
                await self.app(scope, receive, send)
            finally:
                subject_var.reset(context_token)
            return

        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": WEBSOCKET_POLICY_VIOLATION})
            return
        challenge = 'Bearer realm="api"' + (', error="invalid_token"' if presented else "")
        response = JSONResponse(
            {"detail": "Missing or invalid bearer token"},
            status_code=401,
            headers={"WWW-Authenticate": challenge},
        )
        await response(scope, receive, send)
