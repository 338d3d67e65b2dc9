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

Tokens already verified are cached, keyed by their text (`VerifiedTokens`): a client
sends the same token until it expires, and a full decode costs five RSA checks in CPU
(PyJWT's Python base64url check, JSON, claims). The layer over a bare app, auth=jwt
bake, one valid RS256 token (bench/instructions.py rows `jwt_layer`,
`jwt_layer_uncached`, `rs256_verify_only`; bench/middleware_cost.py): before the cache
+847,000 instructions and +99 us CPU a request, the RS256 check alone 340,000 and 20 us;
with it +25,000 instructions and +3.8 us on a hit, a fifth of the RSA check; a miss (the
first request with a token) +888,000 and +109 us, the frozen claims and the entry
included. A hit runs again only the time checks PyJWT runs (`iat`/`nbf` not after now +
leeway, `exp` after now - leeway), so a cached token is accepted exactly as long as a
fresh decode would accept it, and only while the JWKS cache still holds the very key
object that verified it (a refresh replaces every key object, so a rotated-out key, or
any refetch, sends the token through a full decode again). Failures are never cached; a
tampered copy is another text, so it is decoded and refused. The claims are frozen
(read-only mappings and tuples): an endpoint cannot alter what later requests with the
same token see.
"""

import base64
import binascii
import json
import re
import time
from collections import OrderedDict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
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
# Verified tokens kept (about 2 KB each with their claims): a few thousand clients
# at once each hit their own entry; beyond that the least recently used is dropped.
VERIFIED_TOKENS_CACHED = 4096

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
        if isinstance(value, list | tuple):
            return [item for item in value if isinstance(item, str)]
    return []


def frozen(value: Any) -> Any:
    """A JSON value that cannot be changed: objects as read-only mappings, arrays as
    tuples."""
    if isinstance(value, dict):
        return MappingProxyType({name: frozen(item) for name, item in value.items()})
    if isinstance(value, list):
        return tuple(frozen(item) for item in value)
    return value


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """A token that passed every check, with what a later request needs to accept it
    again: the key object that verified it and its time bounds (already integers:
    PyJWT's `int()` of each accepted them)."""

    kid: str
    key: object
    subject: str
    claims: Mapping[str, Any]
    scopes: tuple[str, ...]
    not_before: int | None  # the later of `iat` and `nbf`
    expires: int


class VerifiedTokens:
    """Tokens already verified, by their text; least recently used dropped first
    (`OrderedDict`: O(1) lookup, move and eviction)."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.entries: OrderedDict[str, VerifiedToken] = OrderedDict()

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, token: str) -> VerifiedToken | None:
        entry = self.entries.get(token)
        if entry is not None:
            self.entries.move_to_end(token)
        return entry

    def add(self, token: str, entry: VerifiedToken) -> None:
        if self.max_entries <= 0:
            return
        self.entries[token] = entry
        self.entries.move_to_end(token)
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)

    def discard(self, token: str) -> None:
        self.entries.pop(token, None)


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
        cached_tokens: int = VERIFIED_TOKENS_CACHED,
    ) -> None:
        self.app = app
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.algorithms = list(algorithms)
        self.leeway_seconds = leeway_seconds
        self.public_paths = frozenset(public_paths)
        self.decoder = jwt.PyJWT({"require": list(REQUIRED_CLAIMS)})
        self.verified = VerifiedTokens(cached_tokens)

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
        entry = self.verified.get(token)
        if entry is not None and self.keys.keys.get(entry.kid) is not entry.key:
            self.verified.discard(token)  # its key was rotated out or fetched again
            entry = None
        if entry is None:
            try:
                entry = await self.verify(token)
            except IssuerUnavailableError:
                await self.unavailable(scope, receive, send)
                return
            except jwt.PyJWTError as error:
                await self.reject(scope, receive, send, describe(error))
                return
            if entry is None:
                await self.reject(scope, receive, send, "unknown signing key")
                return
            if not entry.subject:
                await self.reject(scope, receive, send, "invalid subject")
                return
            self.verified.add(token, entry)
        elif (failure := self.outside_time_bounds(entry)) is not None:
            self.verified.discard(token)
            await self.reject(scope, receive, send, failure)
            return

        scope["user"] = TokenUser(entry.subject, entry.claims)
        scope["auth"] = AuthCredentials(entry.scopes)
        context_token = subject_var.set(entry.subject)
        try:
            await self.app(scope, receive, send)
        finally:
            subject_var.reset(context_token)

    async def verify(self, token: str) -> VerifiedToken | None:
        """Every check, by PyJWT; None for a key the issuer does not publish. Raises
        PyJWTError for a bad token, IssuerUnavailableError when the keys cannot be had."""
        header = unverified_header(token)
        if header.get("alg") not in self.algorithms:
            raise jwt.InvalidAlgorithmError
        kid = header.get("kid")
        if not isinstance(kid, str):
            return None
        key = await self.keys.key_for(kid)
        if key is None:
            return None
        claims = self.decoder.decode(
            token,
            key,
            algorithms=self.algorithms,
            audience=self.audience,
            issuer=self.issuer,
            leeway=self.leeway_seconds,
        )
        subject = claims["sub"]
        bounds = [int(claims[name]) for name in ("iat", "nbf") if name in claims]
        return VerifiedToken(
            kid=kid,
            key=key,
            subject=subject if isinstance(subject, str) else "",
            claims=frozen(claims),
            scopes=tuple(granted_scopes(claims)),
            not_before=max(bounds) if bounds else None,
            expires=int(claims["exp"]),
        )

    def outside_time_bounds(self, entry: VerifiedToken) -> str | None:
        """PyJWT's own time checks (`_validate_iat`, `_validate_nbf`, `_validate_exp`),
        with the same clock and leeway: the failure's description, or None."""
        now = time.time()
        if entry.not_before is not None and entry.not_before > now + self.leeway_seconds:
            return "token not yet valid"
        if entry.expires <= now - self.leeway_seconds:
            return "token expired"
        return None

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
