"""The featurizer pool's Celery app: its result backend against a real Redis."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery.backends.cache import CacheBackend

from feedserve.settings import FeaturizerSettings
from feedserve.store.redis_store import redis_answers
from feedserve_featurizers import celery_app
from feedserve_featurizers.celery_app import ResultBackend, make_app

REDIS_URL = "redis://127.0.0.1:6379/0"

pytestmark = pytest.mark.redis


@pytest.fixture
def backend() -> Iterator[ResultBackend]:
    if not redis_answers(REDIS_URL):
        pytest.fail(f"Redis does not answer at {REDIS_URL}; .ci/run starts one (see README)")
    app = make_app(FeaturizerSettings(redis_url=REDIS_URL, redis_prefix="rb"))
    assert isinstance(app.backend, ResultBackend)
    yield app.backend
    app.close()


def test_a_success_is_written_without_reading_first(
    backend: ResultBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_id = uuid.uuid4().hex

    def no_read(*_: Any) -> Any:
        raise AssertionError("read before writing a success")

    monkeypatch.setattr(backend, "_get_task_meta_for", no_read)
    try:
        backend.mark_as_done(task_id, {"answer": 42})
        monkeypatch.undo()
        meta = backend.get_task_meta(task_id)
        assert meta["status"] == "SUCCESS" and meta["result"] == {"answer": 42}
        assert meta["task_id"] == task_id
    finally:
        backend.forget(task_id)


def test_other_states_keep_celerys_guard_of_a_stored_success(backend: ResultBackend) -> None:
    """A duplicate run of a lost task cannot turn a stored success into a failure."""
    task_id = uuid.uuid4().hex
    try:
        backend.mark_as_done(task_id, "first")
        backend.mark_as_failure(task_id, ValueError("a duplicate run failed"))
        assert backend.get_task_meta(task_id)["result"] == "first"
        backend.mark_as_done(task_id, "again")  # a success over a success: harmless, written
        assert backend.get_task_meta(task_id)["result"] == "again"
    finally:
        backend.forget(task_id)


def test_a_failure_is_stored_when_nothing_succeeded(backend: ResultBackend) -> None:
    task_id = uuid.uuid4().hex
    try:
        backend.mark_as_failure(task_id, ValueError("bad input"))
        meta = backend.get_task_meta(task_id)
        assert meta["status"] == "FAILURE" and "bad input" in str(meta["result"])
    finally:
        backend.forget(task_id)


def test_without_redis_the_results_stay_in_memory() -> None:
    app = make_app(FeaturizerSettings(redis_url="", redis_prefix="rb"))
    assert isinstance(app.backend, CacheBackend)


@pytest.mark.parametrize("each", [False, True])
def test_per_task_log_lines_only_when_asked(each: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Celery's INFO line per task received/succeeded is off unless ``log_each_task``."""
    monkeypatch.setenv("FEEDSERVE_LOG_EACH_TASK", "1" if each else "0")
    loggers = [logging.getLogger(name) for name in celery_app.PER_TASK_LOGGERS]
    before = [log.level for log in loggers]
    try:
        for log in loggers:
            log.setLevel(logging.NOTSET)
        celery_app._per_task_logs()
        for log in loggers:
            assert log.isEnabledFor(logging.WARNING)
            assert log.level == (logging.NOTSET if each else logging.WARNING)
    finally:
        for log, level in zip(loggers, before, strict=True):
            log.setLevel(level)


def test_a_ready_worker_has_loaded_its_context_and_frozen_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from feedserve_featurizers import tasks

    calls: list[str] = []
    monkeypatch.setattr(tasks, "context", lambda: calls.append("context"))
    monkeypatch.setattr(celery_app.gc, "freeze", lambda: calls.append("freeze"))
    celery_app._load_and_freeze()
    assert calls == ["context", "freeze"]

    def broken() -> None:
        raise FileNotFoundError("buckets.json is missing")

    calls.clear()
    monkeypatch.setattr(tasks, "context", broken)
    celery_app._load_and_freeze()  # logged; the ping task reports it as before
    assert calls == ["freeze"]
