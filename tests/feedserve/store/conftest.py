"""Fixtures that run one contract suite against both implementations.

The ``redis`` parameters need the Redis server on 127.0.0.1:6379 (or ``FEEDSERVE_REDIS_URL``);
when it does not answer they FAIL (CI starts Redis), they are not skipped. Every Redis test
uses a fresh random key prefix and deletes its keys afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from feedserve.settings import CommonSettings
from feedserve.store.base import EmbeddingLog, EventLog, FeatureStore
from feedserve.store.filelog import FileEmbeddingLog
from feedserve.store.memory import MemoryEventLog, MemoryFeatureStore
from feedserve.store.redis_store import (
    RedisClient,
    RedisEmbeddingLog,
    RedisEventLog,
    RedisFeatureStore,
    client_for,
)

REDIS_URL = CommonSettings().redis_url or "redis://127.0.0.1:6379/0"

BACKENDS = ["memory", pytest.param("redis", marks=pytest.mark.redis)]
EMBEDDING_BACKENDS = ["file", pytest.param("redis", marks=pytest.mark.redis)]

StoreFactory = Callable[..., FeatureStore]
EventLogFactory = Callable[[], EventLog]


def redis_client() -> RedisClient:
    """The shared client, or a test failure saying how to start Redis."""
    client = client_for(REDIS_URL)
    try:
        client.ping()
    except Exception as exc:
        pytest.fail(
            f"Redis does not answer at {REDIS_URL} ({exc!r}). Start it with: redis-server "
            '--daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no',
            pytrace=False,
        )
    return client


def unique_prefix() -> str:
    return f"test-store-{uuid.uuid4().hex[:12]}"


def wipe(prefix: str) -> None:
    RedisFeatureStore(redis_client(), prefix=prefix).clear()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_store(backend: str) -> Iterator[StoreFactory]:
    """``make_store(history_max_len=…, prefix=…)``: a fresh store of the current backend."""
    prefixes: list[str] = []

    def make(history_max_len: int = 1024, prefix: str | None = None) -> FeatureStore:
        if backend == "memory":
            return MemoryFeatureStore(history_max_len=history_max_len)
        client = redis_client()
        prefix = prefix or unique_prefix()
        prefixes.append(prefix)
        return RedisFeatureStore(client, prefix=prefix, history_max_len=history_max_len)

    yield make
    for p in prefixes:
        wipe(p)


@pytest.fixture
def store(make_store: StoreFactory) -> FeatureStore:
    return make_store()


@pytest.fixture
def make_event_log(backend: str) -> Iterator[EventLogFactory]:
    """A factory of event logs sharing one stream (Redis) or one object (memory), so that
    several "processes" can be simulated."""
    prefix = unique_prefix()
    memory_log = MemoryEventLog()
    opened: list[RedisEventLog] = []

    def make() -> EventLog:
        if backend == "memory":
            return memory_log
        log = RedisEventLog(redis_client(), prefix=prefix)
        opened.append(log)
        return log

    yield make
    if opened:
        wipe(prefix)


@pytest.fixture
def event_log(make_event_log: EventLogFactory) -> EventLog:
    return make_event_log()


@pytest.fixture(params=EMBEDDING_BACKENDS)
def embedding_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def embedding_target(embedding_backend: str, tmp_path: Path) -> Iterator[str]:
    """Where the log lives: a file path, or a Redis key prefix (wiped afterwards)."""
    if embedding_backend == "file":
        yield str(tmp_path / "nearline" / "post_embeddings.log")
        return
    redis_client()
    prefix = unique_prefix()
    yield prefix
    wipe(prefix)


def open_embedding_log_at(backend: str, target: str, redis_url: str = REDIS_URL) -> EmbeddingLog:
    """Open the log of ``backend`` at ``target`` (also used in child processes)."""
    if backend == "file":
        return FileEmbeddingLog(target)
    return RedisEmbeddingLog(client_for(redis_url), prefix=target)


@pytest.fixture
def redis_url() -> str:
    """The Redis URL for tests that open their own connections (fails if Redis is down)."""
    redis_client()
    return REDIS_URL


@pytest.fixture
def embedding_log(embedding_backend: str, embedding_target: str) -> EmbeddingLog:
    return open_embedding_log_at(embedding_backend, embedding_target)
