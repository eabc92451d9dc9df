"""Small reliability building blocks with an injectable clock (pure, unit-testable):
a circuit breaker, a token bucket, and an admission gate for in-flight work."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

Clock = Callable[[], float]


@dataclass
class CircuitBreaker:
    """Closed → (``failures`` consecutive failures) → open for ``cooldown_s`` → half-open:
    one trial call; its success closes the circuit, its failure opens it again.

    While open, callers fail fast instead of waiting for a timeout, so a fallback answers
    within the request's deadline."""

    failures: int = 5
    cooldown_s: float = 5.0
    clock: Clock = time.monotonic
    consecutive: int = 0
    opened_at: float | None = None
    trial_in_flight: bool = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        if self.clock() - self.opened_at >= self.cooldown_s:
            return "half-open"
        return "open"

    def allow(self) -> bool:
        """May a call go out now? (In half-open state: one trial at a time.)"""
        state = self.state
        if state == "closed":
            return True
        if state == "half-open" and not self.trial_in_flight:
            self.trial_in_flight = True
            return True
        return False

    def success(self) -> None:
        self.consecutive = 0
        self.opened_at = None
        self.trial_in_flight = False

    def failure(self) -> None:
        self.consecutive += 1
        self.trial_in_flight = False
        if self.opened_at is not None or self.consecutive >= self.failures:
            self.opened_at = self.clock()

    def retry_after_s(self) -> float:
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.cooldown_s - (self.clock() - self.opened_at))


@dataclass
class TokenBucket:
    """``rate`` tokens per second up to ``burst``; ``take`` answers 0 when a token was taken,
    else the seconds until one will be there."""

    rate: float
    burst: float
    clock: Clock = time.monotonic
    tokens: float = -1.0
    stamp: float = field(default=0.0)

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        if self.tokens < 0:
            self.tokens = self.burst
        self.stamp = self.clock()

    def take(self) -> float:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


@dataclass
class Admission:
    """At most ``limit`` requests in flight; beyond, callers are turned away (load shedding)."""

    limit: int
    in_flight: int = 0

    def enter(self) -> bool:
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)


def retry_after_header(seconds: float) -> str:
    """An HTTP Retry-After value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
