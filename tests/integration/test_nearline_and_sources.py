"""Nearline post edits and deletes, and the candidate sources, through the real stack."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import numpy as np
import pytest

from feedserve.data.io import read_dataset
from feedserve.data.synthetic import DemoDataset
from feedserve.launcher import Stack
from feedserve.launcher import wait_until as poll
from feedserve.store import open_store
from feedserve.triton_client import AsyncTritonClient

pytestmark = pytest.mark.integration


def top_ids(stack: Stack, text: str, k: int = 5) -> list[int]:
    async def run() -> list[int]:
        triton = AsyncTritonClient(stack.triton_url)
        try:
            ids, _ = await triton.search(await triton.embed_text(text), k)
            return [int(i) for i in ids]
        finally:
            await triton.close()

    return asyncio.run(run())


@pytest.fixture(scope="module")
def dataset(built: Any) -> DemoDataset:
    return read_dataset(built.data_dir)


def test_edit_replaces_the_embedding_and_delete_removes_the_post(
    client: httpx.Client, redis_stack: Stack
) -> None:
    old = "Tidal energy forecasting for Faroe Islands ferry schedules with gradient boosting."
    new = "Sourdough fermentation timelines for bakery apprentices in Kyoto, explained simply."
    post_id = client.post("/v1/posts", json={"author_id": 4, "text": old}).json()["post_id"]
    poll(lambda: post_id in top_ids(redis_stack, old), 5.0, "new post retrievable")

    resp = client.patch(f"/v1/posts/{post_id}", json={"text": new, "topic": "food"})
    assert resp.status_code == 202, resp.text
    poll(lambda: post_id in top_ids(redis_stack, new), 5.0, "edited post retrievable by new text")
    assert post_id not in top_ids(redis_stack, old, k=20)  # the old vector is gone
    stored = open_store(redis_stack.settings).get_posts([post_id])[0]
    assert stored is not None and stored.text == new and stored.author_id == 4

    assert client.delete(f"/v1/posts/{post_id}").status_code == 204
    poll(lambda: post_id not in top_ids(redis_stack, new, k=50), 5.0, "deleted post gone")
    assert client.delete(f"/v1/posts/{post_id}").status_code == 404
    assert client.patch(f"/v1/posts/{post_id}", json={"text": "x"}).status_code == 404


def test_session_context_source(client: httpx.Client, dataset: DemoDataset) -> None:
    member = 5
    engaged = [p.post_id for p in dataset.posts if p.topic == dataset.topics[0]][:3]
    body = client.post(
        "/v1/feed",
        json={"member_id": member, "count": 100, "session": {"engaged_post_ids": engaged}},
    ).json()
    session_items = [i for i in body["items"] if "session" in i["sources"]]
    assert session_items, "the session source contributes candidates"
    assert not {i["post_id"] for i in body["items"]} & set(engaged)
    on_topic = np.mean([i["topic"] == dataset.topics[0] for i in session_items])
    assert on_topic >= 0.5, f"session candidates are like the engaged posts ({on_topic:.2f})"


def test_followed_authors_feed_the_network_source_and_blocked_authors_never_show(
    client: httpx.Client, redis_stack: Stack, dataset: DemoDataset
) -> None:
    store = open_store(redis_stack.settings)
    member = next(m for m in dataset.members if m.follows)
    followed = member.follows[0]
    followed_posts = set(store.posts_by_authors([followed], 100))
    assert followed_posts
    first = client.post("/v1/feed", json={"member_id": member.member_id, "count": 100}).json()
    # block the two authors that appear most in the feed, then ask again
    authors = [i["author_id"] for i in first["items"]]
    blocked = sorted(set(authors), key=authors.count, reverse=True)[:2]
    store.put_members([member.model_copy(update={"blocked_authors": blocked})])
    second = client.post("/v1/feed", json={"member_id": member.member_id, "count": 100}).json()
    assert not {i["author_id"] for i in second["items"]} & set(blocked)
    assert len(second["items"]) == 100
    store.put_members([member])  # restore for the other tests
    network = [i for i in first["items"] if "network" in i["sources"]]
    assert network, "posts by connections and followed authors are candidates"
