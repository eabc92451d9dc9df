"""Circuit breaker, token bucket and admission, on a fake clock; the breaker in the Triton
client (fail fast while open, a trial after the cooldown)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from feedserve.gateway import guard
from feedserve.resilience import (
    Admission,
    CircuitBreaker,
    TokenBucket,
    retry_after_header,
)
from feedserve.triton_client import AsyncTritonClient, TritonUnavailable


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_breaker_opens_after_consecutive_failures_and_half_opens_after_cooldown() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=3, cooldown_s=5, clock=clock)
    for _ in range(2):
        assert b.allow()
        b.failure()
    b.success()  # a success resets the count
    for _ in range(3):
        assert b.allow()
        b.failure()
    assert b.state == "open" and not b.allow() and b.retry_after_s() == 5
    clock.t += 5
    assert b.state == "half-open" and b.allow() and not b.allow()  # one trial at a time
    b.failure()  # the trial failed: open again for a full cooldown
    assert b.state == "open" and b.retry_after_s() == 5
    clock.t += 5
    assert b.allow()
    b.success()
    assert b.state == "closed" and b.allow() and b.allow()


def test_token_bucket_refills_at_its_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=2, burst=3, clock=clock)
    assert [bucket.take() for _ in range(3)] == [0, 0, 0]
    assert bucket.take() == pytest.approx(0.5)
    clock.t += 0.5
    assert bucket.take() == 0
    clock.t += 100
    assert [bucket.take() for _ in range(4)][:3] == [0, 0, 0]  # never more than the burst
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1)


def test_admission_and_retry_after() -> None:
    gate = Admission(limit=2)
    assert gate.enter() and gate.enter() and not gate.enter()
    gate.leave()
    assert gate.enter()
    assert retry_after_header(0.01) == "1" and retry_after_header(2.2) == "3"


def test_api_keys_compare_digests_and_name_keys_by_digest_prefix() -> None:
    keys = guard.ApiKeys(["alpha", " "], [guard.digest("beta").upper()])
    assert keys.enabled and not guard.ApiKeys([""], [""]).enabled
    assert keys.identify("alpha") == guard.digest("alpha")[:8]
    assert keys.identify("beta") == guard.digest("beta")[:8]
    for bad in (None, "", "gamma", "alpha "):
        with pytest.raises(guard.Unauthorized):
            keys.identify(bad)


def test_body_checks() -> None:
    guard.check_body("GET", None, False, 10)
    guard.check_body("POST", "10", False, 10)
    with pytest.raises(guard.PayloadTooLarge):
        guard.check_body("POST", "11", False, 10)
    with pytest.raises(guard.LengthRequired):
        guard.check_body("POST", None, True, 10)
    with pytest.raises(guard.LengthRequired):
        guard.check_body("POST", "ten", False, 10)


def test_triton_client_fails_fast_while_the_circuit_is_open() -> None:
    clock = Clock()
    calls: list[str] = []

    async def infer(model: str, inputs: Any, outputs: Any, model_version: str = "") -> Any:
        calls.append(model)
        raise ConnectionRefusedError("refused")

    async def run() -> list[str]:
        breaker = CircuitBreaker(failures=2, cooldown_s=5, clock=clock)
        client = AsyncTritonClient("127.0.0.1:1", breaker=breaker)
        client._client.infer = infer
        messages = []
        try:
            for _ in range(4):
                with pytest.raises(TritonUnavailable) as info:
                    await client.embed_ids(np.zeros(4, dtype=np.int64))
                messages.append(str(info.value))
            clock.t += 5  # after the cooldown one trial goes out again
            with pytest.raises(TritonUnavailable):
                await client.embed_ids(np.zeros(4, dtype=np.int64))
        finally:
            await client.close()
        return messages

    messages = asyncio.run(run())
    # each failed call was tried twice (a refused connection is retried once); two failed
    # calls open the circuit; two calls fail fast; after the cooldown one trial, not retried
    assert len(calls) == 2 + 2 + 0 + 0 + 1
    assert "circuit open" in messages[2] and "circuit open" in messages[3]
    assert "refused" in messages[0]


def test_a_refused_connection_is_retried_once_but_a_timeout_is_not() -> None:
    outcomes: list[Any] = [ConnectionResetError("reset"), np.ones((1, 4), dtype=np.float32)]
    calls: list[str] = []

    class Result:
        def __init__(self, arr: np.ndarray) -> None:
            self.arr = arr

        def as_numpy(self, name: str) -> np.ndarray:
            return self.arr if name == "embedding" else np.array([b"space"], dtype=object)

    async def infer(model: str, inputs: Any, outputs: Any, model_version: str = "") -> Any:
        calls.append(model)
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return Result(outcome)

    async def slow(model: str, inputs: Any, outputs: Any, model_version: str = "") -> Any:
        calls.append(model)
        await asyncio.sleep(10)

    async def run() -> None:
        client = AsyncTritonClient("127.0.0.1:1", timeout_s=0.05)
        try:
            client._client.infer = infer
            out = await client.embed_ids(np.zeros(4, dtype=np.int64))
            assert out.shape == (4,) and len(calls) == 2
            client._client.infer = slow
            with pytest.raises(TritonUnavailable, match="timed out"):
                await client.embed_ids(np.zeros(4, dtype=np.int64))
            assert len(calls) == 3  # no retry after a timeout
        finally:
            await client.close()

    asyncio.run(run())
