"""The gateway's asyncio Celery client against a real Celery featurizer worker over Redis.

The client writes Celery task messages itself (kombu's Redis transport format) and reads
results from Celery's Redis result backend, so these tests hold it to what a real worker
accepts and answers: results equal the in-process functions', concurrent calls get their
own answers, a failing task and a missing pool or broker are told apart.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from feedserve.launcher import Ports, Stack, free_port, load_dataset
from feedserve.settings import FeaturizerSettings, LauncherSettings
from feedserve.store import open_store
from feedserve.store.redis_store import redis_answers
from feedserve_featurizers import hydrate
from feedserve_featurizers.celery_app import queue_name
from feedserve_featurizers.client import (
    CLIENT_NAME,
    CeleryFeaturizer,
    FeaturizerTaskFailed,
    FeaturizerUnavailable,
)

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/0"
REPO = Path(__file__).resolve().parents[2]
NOW = 1_800_000_000


@pytest.fixture(scope="module")
def pool(built: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FeaturizerSettings]:
    """One Celery featurizer worker (and the event consumer) on a fresh key prefix."""
    if not redis_answers(REDIS_URL):
        pytest.fail(f"Redis does not answer at {REDIS_URL}; .ci/run starts one (see README)")
    settings = LauncherSettings(
        redis_url=REDIS_URL,
        redis_prefix=f"cc{uuid.uuid4().hex[:10]}",
        artifacts_dir=built.artifacts_dir,
        data_dir=built.data_dir,
        model_repo=REPO / "model_repo",
        runtime_dir=tmp_path_factory.mktemp("celery-client"),
        featurizer_workers=1,
    )
    load_dataset(settings)
    stack = Stack(settings, Ports.allocate(settings.host))
    try:
        stack.start_featurizers()
        featurizer = FeaturizerSettings(
            redis_url=REDIS_URL,
            redis_prefix=settings.redis_prefix,
            artifacts_dir=built.artifacts_dir,
        )

        async def answered() -> bool:
            client = CeleryFeaturizer(featurizer, timeout_s=2.0)
            try:
                return await client.ready()
            finally:
                await client.close()

        deadline = time.monotonic() + 120
        while not asyncio.run(answered()):
            assert time.monotonic() < deadline, stack.processes[0].log_tail()
            assert all(p.alive() for p in stack.processes), stack.processes[0].log_tail()
        yield featurizer
    finally:
        stack.stop()
        open_store(settings).clear()


def call(settings: FeaturizerSettings, work: Any, timeout_s: float = 5.0) -> Any:
    """Run ``work(client)`` with a fresh client in a fresh event loop (as a gateway would)."""

    async def main() -> Any:
        client = CeleryFeaturizer(settings, timeout_s)
        try:
            return await work(client)
        finally:
            await client.close()

    return asyncio.run(main())


def test_results_equal_the_in_process_functions(pool: FeaturizerSettings) -> None:
    ctx = hydrate.FeaturizerContext.load(pool)
    session = hydrate.SessionContext(engaged_post_ids=[3, 5], seen_post_ids=[7])
    for member_id, sess in ((1, None), (2, session), (10**9, None)):  # the last is unknown
        remote = call(pool, lambda c, m=member_id, s=sess: c.hydrate_member(m, s, NOW))
        local = hydrate.hydrate_member(ctx, member_id, sess, NOW)
        assert set(remote) == set(local)
        for key, value in local.items():
            if isinstance(value, np.ndarray):
                assert np.array_equal(remote[key], value) and remote[key].dtype == value.dtype
            else:
                assert remote[key] == value, key
    posts = call(pool, lambda c: c.hydrate_candidates([5, 3, 10**9]))
    assert posts["post_ids"].tolist() == [5, 3]  # the unknown post dropped, order kept


def test_concurrent_calls_each_get_their_own_answer(pool: FeaturizerSettings) -> None:
    async def many(client: CeleryFeaturizer) -> list[Any]:
        members = [client.hydrate_member(m, None, NOW, with_prompt=False) for m in range(1, 21)]
        posts = [client.hydrate_candidates([p]) for p in range(1, 11)]
        return list(await asyncio.gather(*members, *posts))

    out = call(pool, many)
    assert [int(r["member_id"]) for r in out[:20]] == list(range(1, 21))
    assert [r["post_ids"].tolist() for r in out[20:]] == [[p] for p in range(1, 11)]


def test_a_failing_task_is_an_error_not_an_outage(pool: FeaturizerSettings) -> None:
    async def failing_then_fine(client: CeleryFeaturizer) -> Any:
        with pytest.raises(FeaturizerTaskFailed, match="hydrate_candidates failed: ValueError"):
            await client.hydrate_candidates(["not an id"])  # type: ignore[list-item]
        return await client.ready()  # the same client goes on working

    assert call(pool, failing_then_fine) is True


def test_no_worker_times_out_as_unavailable(pool: FeaturizerSettings) -> None:
    lonely = pool.model_copy(update={"redis_prefix": f"nobody{uuid.uuid4().hex[:8]}"})
    start = time.monotonic()
    with pytest.raises(FeaturizerUnavailable, match=r"got no answer in 0\.5s"):
        call(lonely, lambda c: c.hydrate_member(1, None, NOW), timeout_s=0.5)
    assert time.monotonic() - start < 5
    redis.Redis.from_url(REDIS_URL).delete(queue_name(lonely.redis_prefix))  # the unread task


def test_broker_down_is_unavailable_at_once(pool: FeaturizerSettings) -> None:
    down = pool.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    start = time.monotonic()
    with pytest.raises(FeaturizerUnavailable, match="broker unreachable"):
        call(down, lambda c: c.hydrate_member(1, None, NOW), timeout_s=5.0)
    assert time.monotonic() - start < 4
    assert call(down, lambda c: c.ready(), timeout_s=1.0) is False


def test_a_lost_result_connection_is_replaced(pool: FeaturizerSettings) -> None:
    """Redis drops the client's pub/sub connection (a restart, a proxy timeout): calls go on."""
    server = redis.Redis.from_url(REDIS_URL)

    def kill_result_connections() -> int:
        mine = [
            c for c in server.client_list() if c.get("name") == CLIENT_NAME and "P" in c["flags"]
        ]
        for c in mine:
            server.client_kill_filter(_id=c["id"])
        return len(mine)

    async def across_a_drop(client: CeleryFeaturizer) -> list[bool]:
        answers = [await client.ready()]
        assert kill_result_connections() >= 1
        for _ in range(2):  # the call that meets the dropped connection may fail; not more
            try:
                answers.append(await client.ready())
            except FeaturizerUnavailable:
                answers.append(False)
        return answers

    answers = call(pool, across_a_drop, timeout_s=2.0)
    assert answers[0] is True and answers[-1] is True, answers


def test_one_pattern_subscription_serves_every_call(pool: FeaturizerSettings) -> None:
    """No subscribe per task (it cost a Redis round trip before each task was queued): the
    client's task ids share a prefix and one pattern subscription covers their results."""
    import redis.asyncio as aredis

    async def watched(client: CeleryFeaturizer) -> tuple[list[Any], int, list[bool]]:
        server = aredis.Redis.from_url(REDIS_URL)
        seen: list[Any] = []
        patterns = 0

        async def watch(done: asyncio.Event) -> None:
            nonlocal patterns
            while not done.is_set():
                seen.extend(await server.pubsub_channels("celery-task-meta-*"))
                patterns = max(patterns, int(await server.pubsub_numpat()))
                await asyncio.sleep(0)

        done = asyncio.Event()
        watcher = asyncio.create_task(watch(done))
        try:
            answers = [await client.ready() for _ in range(5)]
        finally:
            done.set()
            await watcher
            await server.aclose()  # type: ignore[attr-defined]
        return seen, patterns, answers

    seen, patterns, answers = call(pool, watched)
    assert answers == [True] * 5
    assert seen == [] and patterns >= 1


def test_the_prompt_arrives_before_the_member_features(pool: FeaturizerSettings) -> None:
    """The worker publishes the prompt's tokens as soon as they exist; the client hands them
    to ``on_prompt`` before the call returns, equal to the final ``input_ids``."""

    async def early(client: CeleryFeaturizer) -> tuple[list[str], list[Any], dict[str, Any]]:
        order: list[str] = []
        got: list[Any] = []

        def on_prompt(ids: Any) -> None:
            order.append("prompt")
            got.append(ids)

        out = await client.hydrate_member(1, None, NOW, on_prompt=on_prompt)
        order.append("features")
        lean = await client.hydrate_member(1, None, NOW, with_prompt=False, on_prompt=on_prompt)
        assert lean["input_ids"].size == 0
        return order, got, out

    order, got, out = call(pool, early)
    assert order == ["prompt", "features"]  # once: no prompt without one to make
    assert got[0].dtype == out["input_ids"].dtype and got[0].size > 0
    assert np.array_equal(got[0], out["input_ids"])
