"""What stands in front of the gateway's routes: API keys, per-key rate limits, request size
and admission (load shedding). Each check raises an exception that ``errors`` maps to its
HTTP status (401; 429 with Retry-After for rate limits and shed load; 413; 411).

Keys come from the environment (a Kubernetes Secret): ``FEEDSERVE_API_KEYS`` (plain keys)
and/or ``FEEDSERVE_API_KEY_SHA256`` (their SHA-256 digests, so the Secret need not hold the
keys). Only digests are kept in memory and compared (constant time); logs and metrics name a
key by the first 8 hex digits of its digest, never by the key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from feedserve.resilience import Admission, TokenBucket

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/docs", "/openapi.json", "/redoc"})
"""Paths served without a key (probes, Prometheus, the API docs)."""


class Unauthorized(Exception):
    """No key, or a key that is not one of ours."""


class RateLimited(Exception):
    def __init__(self, key_id: str, retry_after_s: float) -> None:
        super().__init__(f"rate limit of key {key_id} exceeded")
        self.retry_after_s = retry_after_s


class Overloaded(Exception):
    def __init__(self, retry_after_s: float = 1.0) -> None:
        super().__init__("too many requests in flight: shedding load")
        self.retry_after_s = retry_after_s


class PayloadTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"request body over {limit} bytes")


class LengthRequired(Exception):
    def __init__(self) -> None:
        super().__init__("a request body needs a Content-Length header (no chunked bodies)")


def check_body(method: str, content_length: str | None, chunked: bool, limit: int) -> None:
    """Bodies must declare their size, and stay within ``limit`` bytes."""
    if content_length is None:
        if chunked and method in ("POST", "PUT", "PATCH"):
            raise LengthRequired()
        return
    try:
        size = int(content_length)
    except ValueError:
        raise LengthRequired() from None
    if size > limit:
        raise PayloadTooLarge(limit)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeys:
    def __init__(self, keys: Iterable[str] = (), digests: Iterable[str] = ()) -> None:
        self._digests = {d.strip().lower() for d in digests if d.strip()}
        self._digests |= {digest(k.strip()) for k in keys if k.strip()}

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def identify(self, presented: str | None) -> str:
        """The key's id (digest prefix); raises ``Unauthorized``."""
        if not presented:
            raise Unauthorized("missing API key: send it in the X-API-Key header")
        d = digest(presented)
        match = False
        for known in self._digests:  # compare with every digest: time does not tell which
            match |= hmac.compare_digest(d, known)
        if not match:
            raise Unauthorized("invalid API key")
        return d[:8]


class RateLimits:
    """One token bucket per key id (``rate`` requests/s, bursts of ``burst``)."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, TokenBucket] = {}

    def check(self, key_id: str) -> None:
        if self.rate <= 0:
            return
        bucket = self._buckets.get(key_id)
        if bucket is None:
            bucket = self._buckets[key_id] = TokenBucket(self.rate, self.burst)
        wait = bucket.take()
        if wait > 0:
            raise RateLimited(key_id, wait)


class Gate:
    """Admission for the request path: ``limit`` feeds in flight at most."""

    def __init__(self, limit: int) -> None:
        self.admission = Admission(limit)

    def enter(self) -> None:
        if not self.admission.enter():
            raise Overloaded()

    def leave(self) -> None:
        self.admission.leave()
