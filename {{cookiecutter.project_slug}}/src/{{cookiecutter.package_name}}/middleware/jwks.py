"""The issuer's signing keys (its JWKS), fetched off the event loop and cached by `kid`.

A token whose `kid` is not cached triggers a refresh, so a key the issuer rotated in
works at once; refreshes happen at most once per `min_refresh_seconds` however many
such tokens arrive (concurrent ones share one fetch), so made-up `kid`s cannot make
the service hammer the issuer.

The fetch is a plain `urllib` GET in a worker thread: the service has no async HTTP
client at run time, and one small GET every minute at most does not justify a second
HTTP stack. The thread keeps the event loop free; the timeout bounds how long it runs.
"""

import asyncio
import json
import logging
import time
import urllib.request
from collections.abc import Mapping
from typing import Any

from jwt import PyJWK, PyJWTError

logger = logging.getLogger(__name__)

DISCOVERY_PATH = "/.well-known/openid-configuration"
FETCH_TIMEOUT_SECONDS = 3.0
MAX_DOCUMENT_BYTES = 1_048_576
# Key types that verify signatures with a public key; `oct` (a shared secret) never
# belongs in an issuer's public JWKS, and is ignored there.
PUBLIC_KEY_TYPES = frozenset({"RSA", "EC", "OKP"})
# After a failed fetch, try again sooner than the refresh period, but not on every
# request: an issuer that is starting up comes back without a long wait.
RETRY_AFTER_FAILURE_SECONDS = 5.0


class IssuerUnavailableError(Exception):
    """The JWKS (or the discovery document) could not be fetched."""


def fetch_json(url: str) -> Any:
    """GET `url` and parse its JSON body; blocking (run it in a thread)."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_SECONDS) as response:  # noqa: S310
        return json.loads(response.read(MAX_DOCUMENT_BYTES + 1)[:MAX_DOCUMENT_BYTES])


def usable_keys(document: Any) -> dict[str, PyJWK]:
    """The JWKS's public signing keys by `kid`; keys without one, or unusable, are skipped."""
    keys: dict[str, PyJWK] = {}
    entries = document.get("keys") if isinstance(document, Mapping) else None
    for entry in entries if isinstance(entries, list) else ():
        if not isinstance(entry, dict) or entry.get("kty") not in PUBLIC_KEY_TYPES:
            continue
        if entry.get("use", "sig") != "sig" or not isinstance(entry.get("kid"), str):
            continue
        try:
            keys[entry["kid"]] = PyJWK(entry)
        except PyJWTError:
            continue
    return keys


class JwksCache:
    def __init__(
        self,
        *,
        issuer: str,
        jwks_url: str | None,
        min_refresh_seconds: float,
    ) -> None:
        self.issuer = issuer
        self.jwks_url = jwks_url
        self.min_refresh_seconds = min_refresh_seconds
        self.keys: dict[str, PyJWK] = {}
        self._last_attempt: float | None = None
        self._last_failed = False
        self._refreshing: asyncio.Task[None] | None = None

    async def warm_up(self) -> None:
        """Fetch the keys now (at start-up); a failure is only logged."""
        self.start_refresh()
        assert self._refreshing is not None
        await asyncio.shield(self._refreshing)

    def start_refresh(self) -> None:
        if self._refreshing is None:
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh())
            self._refreshing.add_done_callback(self._refresh_done)

    async def key_for(self, kid: str) -> PyJWK | None:
        """The key `kid`, refreshing the cache if allowed; None when the issuer has no
        such key. Raises IssuerUnavailableError when the keys cannot be fetched."""
        if (key := self.keys.get(kid)) is not None:
            return key
        if self._refreshing is None:
            if not self._may_refresh(time.monotonic()):
                if self._last_failed:
                    raise IssuerUnavailableError("the issuer's keys could not be fetched")
                return None
            self.start_refresh()
        assert self._refreshing is not None
        # Shielded: a client that leaves must not cancel the fetch others wait for.
        await asyncio.shield(self._refreshing)
        if self._last_failed and kid not in self.keys:
            raise IssuerUnavailableError("the issuer's keys could not be fetched")
        return self.keys.get(kid)

    def _may_refresh(self, now: float) -> bool:
        if self._last_attempt is None:
            return True
        wait = self.min_refresh_seconds
        if self._last_failed:
            wait = min(wait, RETRY_AFTER_FAILURE_SECONDS)
        return now - self._last_attempt >= wait

    def _refresh_done(self, task: asyncio.Task[None]) -> None:
        self._refreshing = None

    async def _refresh(self) -> None:
        self._last_attempt = time.monotonic()
        try:
            keys = await asyncio.to_thread(self._fetch_keys)
        except Exception as exc:  # any failure: the issuer is unavailable
            self._last_failed = True
            # The type only: an error's text may carry a URL with credentials.
            logger.warning("could not fetch the JWT signing keys: %s", type(exc).__name__)
            return
        self._last_failed = False
        self.keys = keys
        logger.info("JWT signing keys fetched: %d usable", len(keys))

    def _fetch_keys(self) -> dict[str, PyJWK]:
        if self.jwks_url is None:
            discovery = fetch_json(self.issuer.rstrip("/") + DISCOVERY_PATH)
            jwks_uri = discovery.get("jwks_uri") if isinstance(discovery, Mapping) else None
            if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
                raise ValueError("the discovery document names no jwks_uri")
            self.jwks_url = jwks_uri
        keys = usable_keys(fetch_json(self.jwks_url))
        if not keys:  # keep the keys we have rather than trust an empty or broken set
            raise ValueError("the JWKS holds no usable signing key")
        return keys
