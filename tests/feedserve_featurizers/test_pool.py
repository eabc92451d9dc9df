"""The worker's task pool: request-path tasks inline when idle, everything else in threads."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from feedserve.settings import FeaturizerSettings
from feedserve_featurizers import pool
from feedserve_featurizers.celery_app import make_app


@pytest.fixture
def task_pool() -> Iterator[pool.TaskPool]:
    p = pool.TaskPool(limit=2)
    p.start()
    yield p
    p.stop()


def where(name: str, *_: Any) -> int:
    return threading.get_ident()


def run(p: pool.TaskPool, name: str, target: Any = where) -> Any:
    got: list[Any] = []
    result = p.apply_async(target, args=(name, "id"), callback=got.append)
    result.wait(5)
    return got[0] if got else result.f.exception()


def test_an_idle_pool_runs_a_request_path_task_in_the_callers_thread(
    task_pool: pool.TaskPool,
) -> None:
    assert run(task_pool, "feedserve.hydrate_member") == threading.get_ident()
    assert run(task_pool, "feedserve.index_post") != threading.get_ident()
    assert task_pool.inline == 1


def test_a_busy_pool_hands_request_path_tasks_to_its_threads(task_pool: pool.TaskPool) -> None:
    release = threading.Event()

    def slow(name: str, *_: Any) -> int:
        release.wait(5)
        return threading.get_ident()

    busy = task_pool.apply_async(slow, args=("feedserve.index_post", "id"))
    try:
        assert run(task_pool, "feedserve.hydrate_candidates") != threading.get_ident()
    finally:
        release.set()
        busy.wait(5)
    assert task_pool.inline == 0
    assert run(task_pool, "feedserve.hydrate_candidates") == threading.get_ident()


def test_a_failing_inline_task_is_reported_like_a_threads(task_pool: pool.TaskPool) -> None:
    def boom(name: str, *_: Any) -> None:
        raise ValueError("no such member")

    assert isinstance(run(task_pool, "feedserve.hydrate_member", boom), ValueError)
    assert run(task_pool, "feedserve.hydrate_member") == threading.get_ident()  # idle again


def test_the_app_selects_it() -> None:
    assert make_app(FeaturizerSettings(redis_url="")).conf.worker_pool == pool.POOL
