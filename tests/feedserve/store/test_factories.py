"""``open_store`` / ``open_event_log`` / ``open_embedding_log`` pick the backend from settings."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from feedserve.settings import CommonSettings
from feedserve.store import (
    EmbeddingLog,
    EventLog,
    FeatureStore,
    FileEmbeddingLog,
    MemoryEventLog,
    MemoryFeatureStore,
    open_embedding_log,
    open_event_log,
    open_store,
    reset_embedded,
)
from feedserve.store.redis_store import RedisEmbeddingLog, RedisEventLog, RedisFeatureStore


@pytest.fixture(autouse=True)
def _fresh_embedded() -> Iterator[None]:
    reset_embedded()
    yield
    reset_embedded()


def test_embedded_mode_shares_one_store_per_process(tmp_path: Path) -> None:
    settings = CommonSettings(redis_url="", artifacts_dir=tmp_path, history_max_len=64)
    store = open_store(settings)
    assert isinstance(store, MemoryFeatureStore) and isinstance(store, FeatureStore)
    assert store.history_max_len == 64
    assert open_store(settings.model_copy()) is store
    assert open_store(CommonSettings(redis_url="", history_max_len=65)) is not store
    log = open_event_log(settings)
    assert isinstance(log, MemoryEventLog) and isinstance(log, EventLog)
    assert open_event_log(settings) is log
    emb = open_embedding_log(settings)
    assert isinstance(emb, FileEmbeddingLog) and isinstance(emb, EmbeddingLog)
    assert emb.path == tmp_path / "nearline" / "post_embeddings.log"


@pytest.mark.redis
def test_redis_mode(redis_url: str, tmp_path: Path) -> None:
    prefix = f"test-factory-{uuid.uuid4().hex[:12]}"
    settings = CommonSettings(
        redis_url=redis_url, redis_prefix=prefix, artifacts_dir=tmp_path, history_max_len=32
    )
    store = open_store(settings)
    assert isinstance(store, RedisFeatureStore)
    try:
        assert store.ping(), f"Redis does not answer at {redis_url}"
        assert store.prefix == prefix and store.history_max_len == 32
        log = open_event_log(settings)
        assert isinstance(log, RedisEventLog) and log.key == f"{prefix}:events"
        emb = open_embedding_log(settings)
        assert isinstance(emb, RedisEmbeddingLog) and emb.key == f"{prefix}:post_embeddings"
    finally:
        store.clear()
