"""Feature store, event log and embedding log: interfaces and factories.

``open_store``, ``open_event_log`` and ``open_embedding_log`` pick the backend from the
settings: Redis when ``settings.redis_url`` is set, otherwise the embedded default.

Embedded mode (no Redis): the feature store and the event log live in process memory, so every
part of one process (gateway routes, the in-process featurizer) must see the *same* objects.
``open_store`` and ``open_event_log`` therefore return one process-wide instance per
``(redis_prefix, history_max_len)`` (resp. per ``redis_prefix``): calling them twice with equal
settings gives the same object. Separate processes do not share embedded state. The embedding
log is a file, ``{artifacts_dir}/nearline/post_embeddings.log``, which does work across
processes (Triton model processes tail it).

In Redis mode each call returns a new, cheap wrapper; the wrappers share one connection pool
per URL.
"""

from __future__ import annotations

import threading
from pathlib import Path

from feedserve.settings import CommonSettings
from feedserve.store.base import (
    ENGAGEMENT_WEIGHTS,
    HISTORY_DTYPE,
    EmbeddingLog,
    EmbeddingRecord,
    EngagementEvent,
    EventLog,
    FeatureStore,
    empty_history,
)
from feedserve.store.filelog import FileEmbeddingLog
from feedserve.store.memory import MemoryEventLog, MemoryFeatureStore

__all__ = [
    "ENGAGEMENT_WEIGHTS",
    "HISTORY_DTYPE",
    "EmbeddingLog",
    "EmbeddingRecord",
    "EngagementEvent",
    "EventLog",
    "FeatureStore",
    "FileEmbeddingLog",
    "MemoryEventLog",
    "MemoryFeatureStore",
    "embedding_log_path",
    "empty_history",
    "open_embedding_log",
    "open_event_log",
    "open_store",
    "reset_embedded",
]

_EMBEDDED_LOCK = threading.Lock()
_EMBEDDED_STORES: dict[tuple[str, int], MemoryFeatureStore] = {}
_EMBEDDED_EVENT_LOGS: dict[str, MemoryEventLog] = {}


def open_store(settings: CommonSettings) -> FeatureStore:
    """The feature store for these settings (embedded: the process-wide shared instance)."""
    if settings.redis_url:
        from feedserve.store.redis_store import RedisFeatureStore

        return RedisFeatureStore(
            settings.redis_url,
            prefix=settings.redis_prefix,
            history_max_len=settings.history_max_len,
        )
    key = (settings.redis_prefix, settings.history_max_len)
    with _EMBEDDED_LOCK:
        store = _EMBEDDED_STORES.get(key)
        if store is None:
            store = MemoryFeatureStore(history_max_len=settings.history_max_len)
            _EMBEDDED_STORES[key] = store
        return store


def open_event_log(settings: CommonSettings) -> EventLog:
    """The engagement event log (embedded: the process-wide shared in-memory log)."""
    if settings.redis_url:
        from feedserve.store.redis_store import RedisEventLog

        return RedisEventLog(settings.redis_url, prefix=settings.redis_prefix)
    with _EMBEDDED_LOCK:
        log = _EMBEDDED_EVENT_LOGS.get(settings.redis_prefix)
        if log is None:
            log = MemoryEventLog()
            _EMBEDDED_EVENT_LOGS[settings.redis_prefix] = log
        return log


def embedding_log_path(settings: CommonSettings) -> Path:
    """Where the embedded-mode embedding log file lives."""
    return settings.artifacts_dir / "nearline" / "post_embeddings.log"


def open_embedding_log(settings: CommonSettings) -> EmbeddingLog:
    """The nearline post-embedding log: a Redis stream, or an append-only file."""
    if settings.redis_url:
        from feedserve.store.redis_store import RedisEmbeddingLog

        return RedisEmbeddingLog(settings.redis_url, prefix=settings.redis_prefix)
    return FileEmbeddingLog(embedding_log_path(settings))


def reset_embedded() -> None:
    """Forget the process-wide embedded instances (for tests)."""
    with _EMBEDDED_LOCK:
        _EMBEDDED_STORES.clear()
        _EMBEDDED_EVENT_LOGS.clear()
