"""Check `Authorization: Bearer <JWT>` against the issuer's keys before the app runs.

Why PyJWT: the most used JWT library for Python, maintained and typed, with every check
this layer needs built in: the algorithm allow-list, each JWK bound to its own
algorithm (`PyJWK`, so an HS256 token can never be checked with an RSA key's bytes),
`exp`/`nbf`/`iat` with leeway, `iss`, `aud`, required claims, and one exception type
per failure, which maps to a fixed `error_description`. Its cost, measured here with a
cached RSA-2048 key: 72 us a token, of which the signature check (`cryptography`) is
23 us and most of the rest PyJWT's character-by-character base64url check (a 2.15
security fix, in Python). joserfc 1.8 decoded and validated the same token in 47 us;
switching would touch only this file and `jwks.py`. PyJWT's `PyJWKClient` fetches
keys with a blocking call, so the keys come from `jwks.py` instead.

A valid token leaves Starlette's `scope["user"]` (`identity` is the `sub` claim) and
`scope["auth"]` (the scopes of `scope` or `scp`) for the endpoints, and the subject in
`subject_var` for log lines and jobs. A bad one gets a 401 sent from here (an
`HTTPException` raised in middleware would be a 500), with a fixed description: the
library's messages can quote the token's claims, and the token is never repeated.
A token whose key is not cached while the issuer is unreachable gets 503: the client
did nothing wrong.
"""

import base64
import binascii
import json
import re
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import jwt
from starlette.authentication import AuthCredentials, BaseUser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..context import subject_var
from .asgi_headers import request_header
from .jwks import IssuerUnavailableError, JwksCache

# RFC 6455 close codes: policy violation, and "try again later" for an issuer that is down.
WEBSOCKET_POLICY_VIOLATION = 1008
WEBSOCKET_TRY_AGAIN_LATER = 1013
REQUIRED_CLAIMS = ("exp", "iss", "aud", "sub")
RETRY_AFTER_SECONDS = b"5"
BASE64URL_RE = re.compile(r"[A-Za-z0-9_-]+")

# Each failure's `error_description`: short, fixed, never the library's text.
FAILURES: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.MissingRequiredClaimError, "missing required claim"),
    (jwt.InvalidAlgorithmError, "algorithm not allowed"),
    (jwt.InvalidSignatureError, "invalid signature"),
    (jwt.DecodeError, "malformed token"),
)


class TokenUser(BaseUser):
    """The caller a valid JWT names: `identity` is its `sub`; `claims` are all of them."""

    def __init__(self, subject: str, claims: Mapping[str, Any]) -> None:
        self.subject = subject
        self.claims = claims

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.subject

    @property
    def identity(self) -> str:
        return self.subject


def granted_scopes(claims: Mapping[str, Any]) -> list[str]:
    """Scopes from `scope` (RFC 8693; Auth0, Keycloak) or `scp` (Entra ID, Okta):
    a space-separated string or a list."""
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            return value.split()
        if isinstance(value, list):
            return [item for item in value if isinstance(item, str)]
    return []


def unverified_header(token: str) -> dict[str, Any]:
    """The token's JOSE header, to pick the key: read here rather than with
    `jwt.get_unverified_header`, which decodes (and checks character by character, in
    Python) all three parts, as `decode` then does again: about 25 us a token."""
    segment, dot, _ = token.partition(".")
    if not dot or not BASE64URL_RE.fullmatch(segment):
        raise jwt.DecodeError
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (binascii.Error, ValueError):
        raise jwt.DecodeError from None
    if not isinstance(header, dict):
        raise jwt.DecodeError
    return header


def describe(error: jwt.PyJWTError) -> str:
    for error_type, description in FAILURES:
        if isinstance(error, error_type):
            return description
    return "invalid token"


class JwtAuthMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        keys: JwksCache,
        *,
        issuer: str,
        audience: str,
        algorithms: Iterable[str],
        leeway_seconds: float,
        public_paths: Collection[str],
    ) -> None:
        self.app = app
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.algorithms = list(algorithms)
        self.leeway_seconds = leeway_seconds
        self.public_paths = frozenset(public_paths)
        self.decoder = jwt.PyJWT({"require": list(REQUIRED_CLAIMS)})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            if scope["type"] == "lifespan":
                send = self.warm_up_before_startup_completes(send)
            await self.app(scope, receive, send)
            return
        if scope["path"] in self.public_paths:
            await self.app(scope, receive, send)
            return

        authorization = (request_header(scope, b"authorization") or b"").decode("latin-1")
        scheme, _, credentials = authorization.partition(" ")
        token = credentials.strip()
        if scheme.lower() != "bearer" or not token:
            await self.reject(scope, receive, send, None)
            return
        try:
            header = unverified_header(token)
            kid = header.get("kid")
            if header.get("alg") not in self.algorithms:
                raise jwt.InvalidAlgorithmError
            key = await self.keys.key_for(kid) if isinstance(kid, str) else None
            if key is None:
                await self.reject(scope, receive, send, "unknown signing key")
                return
            claims = self.decoder.decode(
                token,
                key,
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_seconds,
            )
        except IssuerUnavailableError:
            await self.unavailable(scope, receive, send)
            return
        except jwt.PyJWTError as error:
            await self.reject(scope, receive, send, describe(error))
            return
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            await self.reject(scope, receive, send, "invalid subject")
            return

        scope["user"] = TokenUser(subject, claims)
        scope["auth"] = AuthCredentials(granted_scopes(claims))
        context_token = subject_var.set(subject)
        try:
            await self.app(scope, receive, send)
        finally:
            subject_var.reset(context_token)

    def warm_up_before_startup_completes(self, send: Send) -> Send:
        """Fetch the keys before the server takes requests, so the first ones find them
        cached. An issuer that is down costs the fetch timeout at most and is only
        logged: the service starts, and fetches the keys when a token needs them."""

        async def send_when_warm(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                await self.keys.warm_up()
            await send(message)

        return send_when_warm

    async def reject(
        self, scope: Scope, receive: Receive, send: Send, description: str | None
    ) -> None:
        """401: no token (a bare challenge, RFC 6750 3.1), or a bad one, with why."""
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": WEBSOCKET_POLICY_VIOLATION})
            return
        if description is None:
            challenge = 'Bearer realm="api"'
            detail = "Missing bearer token"
        else:
            challenge = (
                f'Bearer realm="api", error="invalid_token", error_description="{description}"'
            )
            detail = f"Invalid bearer token: {description}"
        await send_json(send, 401, {"detail": detail}, [(b"www-authenticate", challenge.encode())])

    async def unavailable(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": WEBSOCKET_TRY_AGAIN_LATER})
            return
        detail = {"detail": "The token issuer's keys are unavailable; retry later."}
        await send_json(send, 503, detail, [(b"retry-after", RETRY_AFTER_SECONDS)])


async def send_json(
    send: Send, status: int, body: Mapping[str, Any], headers: list[tuple[bytes, bytes]]
) -> None:
    content = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(content)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": content})
