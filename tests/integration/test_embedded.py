"""Embedded mode end to end: no Redis — in-process featurizer, in-memory store, file log."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from feedserve.launcher import Stack
from feedserve.launcher import wait_until as poll
from feedserve.triton_client import AsyncTritonClient

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(embedded_stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=embedded_stack.gateway_url, timeout=30.0) as c:
        yield c


def feed_ids(client: httpx.Client, member_id: int, count: int = 20) -> list[int]:
    resp = client.post("/v1/feed", json={"member_id": member_id, "count": count})
    assert resp.status_code == 200, resp.text
    assert resp.json()["degraded"] is False
    return [i["post_id"] for i in resp.json()["items"]]


def test_ready_without_redis(client: httpx.Client, embedded_stack: Stack) -> None:
    assert embedded_stack.settings.redis_url == ""
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert all(ready.json()["checks"].values())


def test_feed_and_engagement_in_process(client: httpx.Client) -> None:
    member = 17
    first = feed_ids(client, member)
    assert len(first) == 20
    engaged = first[:3]
    events = [{"member_id": member, "post_id": p, "action": "like"} for p in engaged]
    assert client.post("/v1/events", json={"events": events}).status_code == 202
    # applied by the gateway's in-process consumer: engaged posts leave the feed
    poll(lambda: not set(engaged) & set(feed_ids(client, member)), 5.0, "engagement applied")


def test_new_post_retrievable_from_the_file_log(
    client: httpx.Client, embedded_stack: Stack
) -> None:
    text = "Glacier-fed hydropower scheduling with reinforcement learning in Svalbard microgrids."
    resp = client.post("/v1/posts", json={"author_id": 2, "text": text, "topic": "energy"})
    assert resp.status_code == 202, resp.text
    post_id = resp.json()["post_id"]

    async def top5() -> list[int]:
        triton = AsyncTritonClient(embedded_stack.triton_url)
        try:
            ids, _ = await triton.search(await triton.embed_text(text), 5)
            return [int(i) for i in ids]
        finally:
            await triton.close()

    poll(lambda: post_id in asyncio.run(top5()), 5.0, "new post in top-5 retrieval")
