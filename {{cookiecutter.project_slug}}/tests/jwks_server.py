"""A small real identity provider for the tests: an HTTP server on loopback serving
`/.well-known/openid-configuration` and a JWKS, counting its hits, and signing tokens
with keys made here (`cryptography`). No mock: the service fetches keys over HTTP."""

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

AUDIENCE = "orders-api"
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class SigningKey:
    def __init__(self, algorithm: str = "RS256", kid: str | None = None) -> None:
        self.algorithm = algorithm
        self.kid = kid or uuid.uuid4().hex[:12]
        self.private: PrivateKey
        if algorithm.startswith("ES"):
            self.private = ec.generate_private_key(ec.SECP256R1())
        else:
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def with_kid(self, kid: str) -> "SigningKey":
        """The same private key under another key id (one the issuer never published)."""
        copy = SigningKey.__new__(SigningKey)
        copy.algorithm, copy.kid, copy.private = self.algorithm, kid, self.private
        return copy

    def public_jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        if isinstance(public, ec.EllipticCurvePublicKey):
            jwk = ECAlgorithm.to_jwk(public, as_dict=True)
        else:
            jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.algorithm, "use": "sig"}


class Issuer:
    """The identity provider: `url` is its issuer; `keys` what its JWKS publishes."""

    def __init__(self, *keys: SigningKey) -> None:
        self.keys = list(keys) or [SigningKey("RS256"), SigningKey("ES256")]
        self.hits: Counter[str] = Counter()
        self.down = False
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/realms/test"
        self._thread: threading.Thread | None = None

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/keys"

    def jwks_fetches(self) -> int:
        with self._lock:
            return self.hits["/realms/test/keys"]

    def start(self) -> "Issuer":
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the port: connections to it are refused from now on."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def token(
        self,
        key: SigningKey | None = None,
        *,
        subject: str = "user-42",
        scope: str | None = "reports:write",
        lifetime: float = 3600,
        **claims: Any,
    ) -> str:
        key = key or self.keys[0]
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": self.url,
            "aud": AUDIENCE,
            "sub": subject,
            "iat": now,
            "exp": now + int(lifetime),
        }
        if scope is not None:
            payload["scope"] = scope
        payload.update(claims)
        return jwt.encode(payload, key.private, algorithm=key.algorithm, headers={"kid": key.kid})

    def _document(self, path: str) -> Mapping[str, Any] | None:
        if path == "/realms/test/.well-known/openid-configuration":
            return {"issuer": self.url, "jwks_uri": self.jwks_url}
        if path == "/realms/test/keys":
            return {"keys": [key.public_jwk() for key in self.keys]}
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with issuer._lock:
                    issuer.hits[self.path] += 1
                document = issuer._document(self.path)
                if issuer.down or document is None:
                    self.send_error(503 if issuer.down else 404)
                    return
                body = json.dumps(document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: the counts are what the tests read

        return Handler


@contextmanager
def running_issuer(*keys: SigningKey) -> Iterator[Issuer]:
    issuer = Issuer(*keys).start()
    try:
        yield issuer
    finally:
        issuer.stop()
