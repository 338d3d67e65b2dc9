"""JWTs checked by the JWT middleware against a real JWKS served on loopback.

The layer sends its 401/503 itself and never calls the app for a bad token. An
`HTTPException` raised in middleware would be a 500 (middleware runs outside FastAPI's
exception handlers), so every bad token here would get a 500 without its
`WWW-Authenticate` challenge. A `BaseHTTPMiddleware` would run the endpoint in another
task, so the subject it sets in a context variable would miss the access line
(`test_the_subject_is_in_the_access_line` would fail), and it would add about 200 us a
request to the cost the token cache exists to remove.
"""

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import httpx2 as httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from fastapi import FastAPI, Request
from starlette.testclient import TestClient

from {{ cookiecutter.package_name }}.factory import create_app
from {{ cookiecutter.package_name }}.middleware import jwks, jwt_auth
from tests import jwks_server
from tests.jwks_server import Issuer, SigningKey, running_issuer
from tests.support import LogCapture, live_server, make_settings, wait_until


def whoami_app(issuer: Issuer, **settings: Any) -> FastAPI:
    app = create_app(
        make_settings(jwt_issuer=issuer.url, jwt_audience=jwks_server.AUDIENCE, **settings)
    )

    @app.get("/whoami")
    async def whoami(request: Request) -> dict[str, Any]:
        return {"identity": request.user.identity, "scopes": request.auth.scopes}

    return app


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    with running_issuer() as server:
        yield server


@pytest.fixture
def whoami(issuer: Issuer) -> Iterator[TestClient]:
    with TestClient(whoami_app(issuer)) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize("key_index", [0, 1], ids=["RS256", "ES256"])
def test_a_valid_token_reaches_the_endpoint_with_its_subject_and_scopes(
    issuer: Issuer, whoami: TestClient, key_index: int
) -> None:
    token = issuer.token(issuer.keys[key_index], subject="alice", scope="reports:write read")
    response = whoami.get("/whoami", headers=bearer(token))
    assert response.status_code == 200, response.text
    assert response.json() == {"identity": "alice", "scopes": ["reports:write", "read"]}


def test_scopes_also_come_from_scp_as_entra_id_sends_them(
    issuer: Issuer, whoami: TestClient
) -> None:
    token = issuer.token(scope=None, scp="reports:write")
    assert whoami.get("/whoami", headers=bearer(token)).json()["scopes"] == ["reports:write"]


def hs256_signed_with_the_public_key(issuer: Issuer) -> str:
    """The classic key-confusion attack: HMAC keyed with the issuer's public key."""
    public_pem = (
        issuer.keys[0]
        .private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": issuer.keys[0].kid}).encode())
    now = int(time.time())
    claims = {"iss": issuer.url, "aud": jwks_server.AUDIENCE, "sub": "mallory", "exp": now + 60}
    payload = b64(json.dumps(claims).encode())
    signature = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(signature)}"


def unsigned(issuer: Issuer) -> str:
    now = int(time.time())
    claims = {"iss": issuer.url, "aud": jwks_server.AUDIENCE, "sub": "mallory", "exp": now + 60}
    return jwt.encode(claims, "", algorithm="none", headers={"kid": issuer.keys[0].kid})


def tampered_payload(issuer: Issuer) -> str:
    header, _, signature = issuer.token(subject="alice").split(".")
    now = int(time.time())
    claims = {"iss": issuer.url, "aud": jwks_server.AUDIENCE, "sub": "admin", "exp": now + 60}
    return f"{header}.{b64(json.dumps(claims).encode())}.{signature}"


def tampered_signature(issuer: Issuer) -> str:
    header, payload, signature = issuer.token().split(".")
    flipped = ("A" if signature[10] != "A" else "B").join((signature[:10], signature[11:]))
    return f"{header}.{payload}.{flipped}"


def other_algorithm(issuer: Issuer) -> str:
    """RS512 with the right RSA key: valid, but not in JWT_ALGORITHMS."""
    key = issuer.keys[0]
    now = int(time.time())
    claims = {"iss": issuer.url, "aud": jwks_server.AUDIENCE, "sub": "bob", "exp": now + 60}
    return jwt.encode(claims, key.private, algorithm="RS512", headers={"kid": key.kid})


BAD_TOKENS: dict[str, tuple[Any, str]] = {
    "expired": (lambda i: i.token(lifetime=-3600), "token expired"),
    "not-yet-valid": (lambda i: i.token(nbf=int(time.time()) + 3600), "token not yet valid"),
    "issued-in-future": (lambda i: i.token(iat=int(time.time()) + 3600), "token not yet valid"),
    "wrong-issuer": (lambda i: i.token(iss="https://evil.example/"), "wrong issuer"),
    "wrong-audience": (lambda i: i.token(aud="another-api"), "wrong audience"),
    "unlisted-alg": (other_algorithm, "algorithm not allowed"),
    "alg-none": (unsigned, "algorithm not allowed"),
    "hs256-public-key": (hs256_signed_with_the_public_key, "algorithm not allowed"),
    "tampered-payload": (tampered_payload, "invalid signature"),
    "tampered-signature": (tampered_signature, "invalid signature"),
    "not-a-jwt": (lambda i: "not.a.jwt", "malformed token"),
}


@pytest.mark.parametrize(("make_token", "description"), BAD_TOKENS.values(), ids=BAD_TOKENS)
def test_a_bad_token_gets_401_invalid_token_without_the_token_in_the_answer(
    issuer: Issuer, whoami: TestClient, make_token: Any, description: str
) -> None:
    token = make_token(issuer)
    response = whoami.get("/whoami", headers=bearer(token))
    assert response.status_code == 401, response.text
    challenge = response.headers["www-authenticate"]
    assert challenge == (
        f'Bearer realm="api", error="invalid_token", error_description="{description}"'
    )
    assert response.json() == {"detail": f"Invalid bearer token: {description}"}
    for part in token.split("."):
        if len(part) > 8:
            assert part not in response.text
            assert part not in challenge
    assert "x-request-id" in response.headers  # outer layers still decorate the 401


def test_no_token_gets_a_bare_challenge(whoami: TestClient) -> None:
    response = whoami.get("/whoami")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="api"'


def test_health_and_docs_need_no_token(whoami: TestClient) -> None:
    for path in ("/health/live", "/docs", "/openapi.json"):
        assert whoami.get(path).status_code == 200, path


def test_a_missing_scope_is_403_insufficient_scope(issuer: Issuer, whoami: TestClient) -> None:
    token = issuer.token(scope="reports:read")
    response = whoami.post("/reports", json={"rows": 1}, headers=bearer(token))
    assert response.status_code == 403, response.text
    assert response.headers["www-authenticate"] == (
        'Bearer error="insufficient_scope", scope="reports:write"'
    )
    granted = whoami.post("/reports", json={"rows": 1}, headers=bearer(issuer.token()))
    assert granted.status_code == 202, granted.text


def test_a_rotated_key_is_fetched_and_accepted(issuer: Issuer) -> None:
    """A new `kid` after start-up refreshes the keys once the refresh period has passed
    (issuers publish a new key before they sign with it)."""
    with TestClient(whoami_app(issuer, jwt_jwks_min_refresh_seconds=1)) as client:
        assert client.get("/whoami", headers=bearer(issuer.token())).status_code == 200
        fetched = issuer.jwks_fetches()
        rotated = SigningKey("RS256")
        issuer.keys = [rotated]
        time.sleep(1.1)  # the refresh period
        response = client.get("/whoami", headers=bearer(issuer.token(rotated)))
        assert response.status_code == 200, response.text
        assert issuer.jwks_fetches() == fetched + 1


def test_a_flood_of_made_up_kids_fetches_the_keys_at_most_once_per_period(
    issuer: Issuer,
) -> None:
    app = whoami_app(issuer, jwt_jwks_min_refresh_seconds=60)
    with live_server(app) as url, httpx.Client(base_url=url, timeout=10) as http:
        wait_until(lambda: issuer.jwks_fetches() == 1, 10, "the start-up fetch")

        def made_up_kid(_: int) -> int:
            key = issuer.keys[0].with_kid(uuid.uuid4().hex)
            return http.get("/whoami", headers=bearer(issuer.token(key))).status_code

        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(pool.map(made_up_kid, range(200)))
    assert set(statuses) == {401}
    assert issuer.jwks_fetches() <= 2, issuer.hits


@pytest.mark.anyio
async def test_concurrent_unknown_kids_share_one_fetch(issuer: Issuer) -> None:
    cache = jwks.JwksCache(issuer=issuer.url, jwks_url=None, min_refresh_seconds=60)
    results: list[object] = []

    async def look_up(kid: str) -> None:
        results.append(await cache.key_for(kid))

    async with anyio.create_task_group() as group:
        for kid in [issuer.keys[0].kid] * 10 + [f"made-up-{n}" for n in range(40)]:
            group.start_soon(look_up, kid)
    assert issuer.hits == {
        "/realms/test/.well-known/openid-configuration": 1,
        "/realms/test/keys": 1,
    }
    assert sum(result is not None for result in results) == 10


def test_an_issuer_down_at_start_up_does_not_stop_the_service(logs: LogCapture) -> None:
    issuer = Issuer()  # never started: its port refuses connections
    issuer.stop()
    app = whoami_app(issuer)
    logs.install()
    with TestClient(app) as client:
        assert client.get("/health/live").status_code == 200
        response = client.get("/whoami", headers=bearer(issuer.token()))
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.headers["retry-after"]
    assert "could not fetch the JWT signing keys: URLError" in logs.messages()


def test_cached_keys_keep_working_while_the_issuer_is_down(
    issuer: Issuer, whoami: TestClient
) -> None:
    assert whoami.get("/whoami", headers=bearer(issuer.token())).status_code == 200
    issuer.down = True
    assert whoami.get("/whoami", headers=bearer(issuer.token())).status_code == 200


def test_the_subject_is_in_the_access_line(
    issuer: Issuer, logs: LogCapture, whoami: TestClient
) -> None:
    logs.install()
    whoami.get("/whoami", headers=bearer(issuer.token(subject="carol")))
    lines = [r for r in logs.records() if r.get("http", {}).get("path") == "/whoami"]
    assert [line["subject"] for line in lines] == ["carol"], lines
    assert lines[0]["message"].endswith(" subject=carol")


# The cache of verified tokens: a hit skips the signature check, never any other rule.


def test_a_cached_token_stops_being_accepted_when_it_expires(issuer: Issuer) -> None:
    token = issuer.token(lifetime=2)
    expires = jwt.decode(token, options={"verify_signature": False})["exp"]
    with TestClient(whoami_app(issuer, jwt_leeway_seconds=0)) as client:
        assert client.get("/whoami", headers=bearer(token)).status_code == 200
        assert client.get("/whoami", headers=bearer(token)).status_code == 200  # cached
        time.sleep(max(0.0, expires - time.time()) + 0.05)
        response = client.get("/whoami", headers=bearer(token))
    assert response.status_code == 401, response.text
    assert 'error_description="token expired"' in response.headers["www-authenticate"]


def test_a_cached_token_is_refused_once_the_issuer_rotated_its_key_out(issuer: Issuer) -> None:
    old_token = issuer.token()
    with TestClient(whoami_app(issuer, jwt_jwks_min_refresh_seconds=1)) as client:
        assert client.get("/whoami", headers=bearer(old_token)).status_code == 200
        rotated = SigningKey("RS256")
        issuer.keys = [rotated]
        time.sleep(1.1)  # the refresh period
        new_token = issuer.token(rotated)
        assert client.get("/whoami", headers=bearer(new_token)).status_code == 200  # refresh
        response = client.get("/whoami", headers=bearer(old_token))
    assert response.status_code == 401, response.text
    assert 'error_description="unknown signing key"' in response.headers["www-authenticate"]


def test_a_tampered_copy_of_a_cached_token_is_refused(issuer: Issuer, whoami: TestClient) -> None:
    token = issuer.token(subject="alice")
    assert whoami.get("/whoami", headers=bearer(token)).status_code == 200
    header, _, signature = token.split(".")
    claims = jwt.decode(token, options={"verify_signature": False})
    forged = f"{header}.{b64(json.dumps({**claims, 'sub': 'admin'}).encode())}.{signature}"
    response = whoami.get("/whoami", headers=bearer(forged))
    assert response.status_code == 401, response.text
    assert 'error_description="invalid signature"' in response.headers["www-authenticate"]
    assert whoami.get("/whoami", headers=bearer(token)).json()["identity"] == "alice"


@pytest.mark.anyio
async def test_the_cache_holds_at_most_its_bound(issuer: Issuer) -> None:
    """Many distinct valid tokens: each is accepted, the cache keeps only the latest."""
    keys = jwks.JwksCache(issuer=issuer.url, jwks_url=None, min_refresh_seconds=60)
    seen: list[str] = []

    async def endpoint(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["user"].identity)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    layer = jwt_auth.JwtAuthMiddleware(
        endpoint,
        keys,
        issuer=issuer.url,
        audience=jwks_server.AUDIENCE,
        algorithms=("RS256", "ES256"),
        leeway_seconds=30,
        public_paths=(),
        cached_tokens=8,
    )
    transport = httpx.ASGITransport(app=layer)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        tokens = [issuer.token(subject=f"user-{n}") for n in range(40)]
        for token in tokens + tokens[:3]:  # the first ones again, after their eviction
            response = await client.get("/whoami", headers=bearer(token))
            assert response.status_code == 204, response.text
            assert len(layer.verified) <= 8
    assert seen == [f"user-{n}" for n in [*range(40), 0, 1, 2]]
    assert len(layer.verified) == 8


def test_an_endpoint_cannot_change_the_claims_later_requests_see(issuer: Issuer) -> None:
    app = whoami_app(issuer)

    @app.get("/meddle")
    async def meddle(request: Request) -> dict[str, str]:
        claims = request.user.claims
        try:
            claims["sub"] = "admin"
            outcome = "changed"
        except TypeError:
            outcome = "read-only"
        return {"outcome": outcome, "sub": claims["sub"]}

    token = issuer.token(subject="alice")
    with TestClient(app) as client:
        first = client.get("/meddle", headers=bearer(token)).json()
        again = client.get("/meddle", headers=bearer(token)).json()
    assert first == again == {"outcome": "read-only", "sub": "alice"}
