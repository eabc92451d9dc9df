"""Train → export a new retrieval version → switch a running tritonserver → nearline still
consistent; a restarted index replica catches up from the shared log; the generative ranker
batches concurrent members dynamically and is released as a new version the same way."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from feedserve.data.io import read_dataset
from feedserve.launcher import Stack
from feedserve.launcher import wait_until as poll
from feedserve.models.encoder import load_encoder_config
from feedserve.models.retrieval import RetrievalTrainConfig
from feedserve.release import (
    activate,
    load_corpus,
    release_ranker,
    release_retrieval,
    train_demo_retrieval,
)
from feedserve.triton_client import AsyncTritonClient
from feedserve_featurizers.tensors import history_tensors

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def redis_stack(own_stack: Stack) -> Stack:
    """The shared stack, for this module alone: it activates new model versions."""
    return own_stack


def triton_call(stack: Stack, fn: Callable[[AsyncTritonClient], Any]) -> Any:
    async def run() -> Any:
        client = AsyncTritonClient(stack.triton_url, timeout_s=30.0)
        try:
            return await fn(client)
        finally:
            await client.close()

    return asyncio.run(run())


def top_ids(stack: Stack, text: str, k: int = 5) -> list[int]:
    async def search(c: AsyncTritonClient) -> list[int]:
        ids, _ = await c.search(await c.embed_text(text), k)
        return [int(i) for i in ids]

    found: list[int] = triton_call(stack, search)
    return found


def test_train_export_activate_and_nearline_stays_consistent(
    client: httpx.Client, redis_stack: Stack, built: Any, tmp_path: Path
) -> None:
    settings = redis_stack.settings
    before_text = "Permafrost sensor networks for Arctic pipeline monitoring, a field report."
    before = client.post("/v1/posts", json={"author_id": 6, "text": before_text}).json()
    poll(lambda: before["post_id"] in top_ids(redis_stack, before_text), 5.0, "indexed (v1)")

    cfg = RetrievalTrainConfig(steps=4, batch_size=8, freeze_layers=5, hard_negatives=0, seed=1)
    outcome = train_demo_retrieval(
        built.data_dir, built.artifacts_dir, tmp_path / "encoder", cfg,
        evaluate=False, progress=False,
    )  # fmt: skip
    base_space = load_encoder_config(built.artifacts_dir / "encoder").fingerprint
    assert outcome.report.steps == 4 and outcome.report.fingerprint != base_space

    # a release indexes every post in the live store, including the one added above
    release = release_retrieval(
        tmp_path / "encoder",
        built.artifacts_dir,
        load_corpus(settings, None),
        tmp_path,
        settings.model_repo,
        settings.runtime_model_repo,
        progress=False,
    )
    assert release.version == 2 and release.space == outcome.report.fingerprint
    assert activate(redis_stack.triton_url) == {"retrieval_encoder": "2", "post_index": "2"}

    assert before["post_id"] in top_ids(redis_stack, before_text)  # in the v2 snapshot
    after_text = "Lichen growth rates on Svalbard basalt measured by drone photogrammetry."
    after = client.post("/v1/posts", json={"author_id": 6, "text": after_text}).json()
    poll(lambda: after["post_id"] in top_ids(redis_stack, after_text), 5.0, "indexed (v2)")
    feed = client.post("/v1/feed", json={"member_id": 9, "count": 10}).json()
    assert len(feed["items"]) == 10 and feed["degraded"] is False


def test_restarted_index_replica_catches_up(client: httpx.Client, redis_stack: Stack) -> None:
    texts = [
        f"Catch-up probe {i}: volcanic soil chemistry of {place} vineyards."
        for i, place in enumerate(["Santorini", "Etna", "Lanzarote"])
    ]
    ids = [
        client.post("/v1/posts", json={"author_id": 8, "text": t}).json()["post_id"] for t in texts
    ]
    for post_id, text in zip(ids, texts, strict=True):

        def indexed(p: int = post_id, t: str = text) -> bool:
            return p in top_ids(redis_stack, t)

        poll(indexed, 5.0, "indexed")
    assert client.delete(f"/v1/posts/{ids[1]}").status_code == 204
    poll(lambda: ids[1] not in top_ids(redis_stack, texts[1], k=50), 5.0, "deleted")

    # stop the replica, then start a fresh one: it rebuilds from the snapshot plus the log
    base = f"http://{redis_stack.triton_url}/v2"
    assert httpx.post(f"{base}/repository/models/post_index/unload", timeout=60).status_code == 200
    poll(lambda: httpx.get(f"{base}/models/post_index/ready").status_code != 200, 30.0, "down")
    assert httpx.post(f"{base}/repository/models/post_index/load", timeout=120).status_code == 200
    found = {i: i in top_ids(redis_stack, t, k=10) for i, t in zip(ids, texts, strict=True)}
    assert found == {ids[0]: True, ids[1]: False, ids[2]: True}
    top = top_ids(redis_stack, texts[0], k=50)
    assert len(top) == len(set(top))  # replay adds no duplicates


def ranker_stats(stack: Stack) -> tuple[int, int]:
    """(inferences, executions) of every loaded generative_ranker version so far."""
    url = f"http://{stack.triton_url}/v2/models/generative_ranker/stats"
    stats = httpx.get(url, timeout=10).json()["model_stats"]
    return sum(s["inference_count"] for s in stats), sum(s["execution_count"] for s in stats)


def test_ranker_batches_members_and_releases_a_new_version(
    client: httpx.Client, redis_stack: Stack, built: Any
) -> None:
    """Concurrent members share Triton executions (dynamic batching into one shared-prefix
    pass) and get the scores they get alone; an exported version is then served."""
    ds = read_dataset(built.data_dir)
    histories = ds.histories()
    rng = np.random.default_rng(0)
    post_ids = np.array([p.post_id for p in ds.posts], dtype=np.int64)
    members = [m.member_id for m in ds.members[:24]]
    requests = []
    for i, member in enumerate(members):
        tensors: dict[str, Any] = history_tensors(histories[member], 1024)
        tensors["request_time"] = 1_767_225_600 + 40 * 86_400
        requests.append((tensors, rng.choice(post_ids, 20 + 7 * i, replace=False)))

    async def burst(c: AsyncTritonClient) -> list[np.ndarray]:
        return list(await asyncio.gather(*(c.rank(h, cands) for h, cands in requests)))

    async def one_by_one(c: AsyncTritonClient) -> list[np.ndarray]:
        return [await c.rank(h, cands) for h, cands in requests]

    inferences, executions = ranker_stats(redis_stack)
    together: list[np.ndarray] = triton_call(redis_stack, burst)
    inferences2, executions2 = ranker_stats(redis_stack)
    alone: list[np.ndarray] = triton_call(redis_stack, one_by_one)
    assert inferences2 - inferences == len(requests)
    print(f"{len(requests)} concurrent members → {executions2 - executions} executions")
    assert executions2 - executions < len(requests), "dynamic batching grouped members"
    for (_, cands), a, b in zip(requests, together, alone, strict=True):
        assert a.shape == cands.shape and np.isfinite(a).all()
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)

    settings = redis_stack.settings
    version = release_ranker(
        built.artifacts_dir / "ranker", settings.model_repo, settings.runtime_model_repo
    )
    assert activate(redis_stack.triton_url, ("generative_ranker",)) == {
        "generative_ranker": str(version)
    }
    again: list[np.ndarray] = triton_call(redis_stack, one_by_one)  # same weights, new version
    for a, b in zip(again, alone, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    feed = client.post("/v1/feed", json={"member_id": members[0], "count": 10}).json()
    assert len(feed["items"]) == 10 and feed["degraded"] is False
