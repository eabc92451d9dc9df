"""FeedService and the HTTP layer with fake featurizer and Triton: degraded paths and errors."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from feedserve.contracts import Member, Post, PostFormat, Seniority
from feedserve.gateway.app import Runtime, create_app
from feedserve.gateway.guard import digest
from feedserve.gateway.metrics import GatewayMetrics
from feedserve.gateway.schemas import (
    EventIn,
    EventsRequest,
    FeedRequest,
    PostEdit,
    PostIn,
    SessionIn,
)
from feedserve.gateway.service import Conflict, FeedConfig, FeedService, NotFound
from feedserve.launcher import wait_until as poll
from feedserve.settings import GatewaySettings
from feedserve.store.base import EmbeddingRecord
from feedserve.store.memory import MemoryEventLog, MemoryFeatureStore
from feedserve.triton_client import InferenceClient, TritonUnavailable
from feedserve_featurizers.client import FeaturizerUnavailable

AUTHORS = {p: 100 + p % 7 for p in range(1, 61)}


class FakeFeaturizer:
    def __init__(
        self, known: bool = True, down: bool = False, blocked: tuple[int, ...] = ()
    ) -> None:
        self.known = known
        self.down = down
        self.blocked = list(blocked)
        self.indexed: list[int] = []

    async def hydrate_member(
        self,
        member_id: int,
        session: Any,
        now: int,
        with_prompt: bool = True,
        on_prompt: Any = None,
    ) -> dict[str, Any]:
        if self.down:
            raise FeaturizerUnavailable("no worker answered")
        ids = np.arange(1, 5, dtype=np.int64) if self.known else np.zeros(0, np.int64)
        if on_prompt is not None and self.known and with_prompt:
            on_prompt(ids)
        hist = np.zeros(8, dtype=np.int64)
        return {
            "member_id": member_id,
            "known": self.known,
            "input_ids": ids,
            "seen_ids": np.array([1, 2], dtype=np.int64),
            "blocked_author_ids": np.array(self.blocked, dtype=np.int64),
            "network_ids": np.array([30, 31], dtype=np.int64),
            "popular_ids": np.array([40, 41, 1], dtype=np.int64),
            "fresh_ids": np.array([50, 51], dtype=np.int64),
            "history_post_ids": hist,
            "history_actions": hist,
            "history_timestamps": hist,
            "request_time": now,
        }

    async def hydrate_candidates(self, post_ids: list[int]) -> dict[str, Any]:
        known = [p for p in post_ids if p in AUTHORS]
        return {
            "post_ids": np.array(known, dtype=np.int64),
            "author_ids": np.array([AUTHORS[p] for p in known], dtype=np.int64),
            "created_at": np.zeros(len(known), dtype=np.int64),
            "formats": ["text"] * len(known),
            "topics": ["t"] * len(known),
        }

    async def index_post(self, post_id: int) -> None:
        self.indexed.append(post_id)

    async def ready(self) -> bool:
        return not self.down

    async def close(self) -> None:
        return None


class FakeTriton:
    def __init__(self, retrieval_down: bool = False, ranker_down: bool = False) -> None:
        self.retrieval_down = retrieval_down
        self.ranker_down = ranker_down
        self.ranked: list[np.ndarray] = []
        self.searches: list[dict[str, Any]] = []

    async def embed_ids(self, input_ids: np.ndarray, timeout_s: float | None = None) -> np.ndarray:
        return (await self.embed_ids_tagged(input_ids, timeout_s))[0]

    async def embed_ids_tagged(
        self, input_ids: np.ndarray, timeout_s: float | None = None
    ) -> tuple[np.ndarray, str]:
        if self.retrieval_down:
            raise TritonUnavailable("retrieval_encoder", "connection refused")
        return np.ones(4, dtype=np.float32), "space-a"

    async def search(
        self,
        query: np.ndarray | None,
        k: int,
        exclude_ids: np.ndarray | None = None,
        timeout_s: float | None = None,
        *,
        query_post_ids: np.ndarray | None = None,
        blocked_author_ids: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        self.searches.append({"query_post_ids": query_post_ids, "blocked": blocked_author_ids})
        if query_post_ids is not None:  # session source
            ids = np.array([20, 21], dtype=np.int64)
        else:
            ids = np.array([10, 11, 12, 13, 999], dtype=np.int64)  # 999: unknown to the store
        return ids, np.linspace(0.9, 0.5, len(ids)).astype(np.float32)

    async def rank(
        self,
        history: Mapping[str, np.ndarray],
        candidate_ids: np.ndarray,
        timeout_s: float | None = None,
    ) -> np.ndarray:
        if self.ranker_down:
            raise TritonUnavailable("generative_ranker", "model not ready")
        self.ranked.append(candidate_ids)
        return candidate_ids.astype(np.float32)  # higher id, higher score

    async def ready(self, models: tuple[str, ...] = ()) -> bool:
        return True

    async def close(self) -> None:
        return None


class ListLog:
    """An in-memory EmbeddingLog."""

    def __init__(self) -> None:
        self.records: list[EmbeddingRecord] = []

    def append(self, records: Sequence[EmbeddingRecord]) -> None:
        self.records.extend(records)

    def read(self, cursor: str, max_records: int = 10_000) -> tuple[list[EmbeddingRecord], str]:
        start = int(cursor or 0)
        out = self.records[start : start + max_records]
        return out, str(start + len(out))


def service(featurizer: FakeFeaturizer, triton: FakeTriton) -> FeedService:
    return FeedService(
        MemoryFeatureStore(),
        MemoryEventLog(),
        ListLog(),
        featurizer,
        triton,
        GatewayMetrics(),
        FeedConfig(retrieval_k=50, max_per_author=2),
    )


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_ranked_feed_orders_by_ranker_and_filters_seen_and_unknown() -> None:
    triton = FakeTriton()
    resp = run(service(FakeFeaturizer(), triton).feed(FeedRequest(member_id=7, count=6)))
    ids = [i.post_id for i in resp.items]
    assert not resp.degraded and not resp.cold_start
    assert 1 not in ids and 2 not in ids  # seen
    # rank runs beside candidate hydration, so the unknown id is scored but never served
    assert 999 in triton.ranked[0].tolist() and 999 not in ids
    assert [i.score for i in resp.items] == sorted((i.score for i in resp.items), reverse=True)
    assert resp.items[0].post_id == 51 and resp.items[0].sources == ["fresh"]


def test_ranker_down_serves_retrieval_order_degraded() -> None:
    resp = run(
        service(FakeFeaturizer(), FakeTriton(ranker_down=True)).feed(FeedRequest(member_id=7))
    )
    assert resp.degraded and any(
        r.startswith("rank fell back") and "generative_ranker" in r for r in resp.degraded_reasons
    )
    assert [i.post_id for i in resp.items[:4]] == [10, 11, 12, 13]  # ebr first, in its order
    assert resp.items[0].sources == ["ebr"]


def test_retrieval_down_serves_other_sources_degraded() -> None:
    triton = FakeTriton(retrieval_down=True)
    resp = run(service(FakeFeaturizer(), triton).feed(FeedRequest(member_id=7)))
    assert resp.degraded and any(
        r.startswith("embed_member fell back") for r in resp.degraded_reasons
    )
    assert {s for i in resp.items for s in i.sources} <= {"network", "popular", "fresh"}
    assert len(resp.items) == 6  # every remaining candidate
    assert triton.ranked  # the ranker still orders what there is


def test_cold_start_uses_popular_and_fresh_without_models() -> None:
    triton = FakeTriton(retrieval_down=True, ranker_down=True)
    resp = run(service(FakeFeaturizer(known=False), triton).feed(FeedRequest(member_id=7)))
    assert resp.cold_start and not resp.degraded
    assert resp.items[0].sources == ["popular"]


def test_featurizer_down_raises() -> None:
    with pytest.raises(FeaturizerUnavailable):
        run(service(FakeFeaturizer(down=True), FakeTriton()).feed(FeedRequest(member_id=7)))


def test_events_get_ids_and_land_in_the_log() -> None:
    svc = service(FakeFeaturizer(), FakeTriton())
    req = EventsRequest(
        events=[
            EventIn(member_id=1, post_id=2, action="like", event_id="e-1"),
            EventIn(member_id=1, post_id=3, action="dwell", dwell_ms=4000),
        ]
    )
    accepted = run(svc.accept_events(req, now=1000))
    assert accepted.accepted == 2 and accepted.event_ids[0] == "e-1" and accepted.event_ids[1]
    delivered = svc.events.consume("c", count=10, block_ms=0)
    assert [e.event_id for _, e in delivered] == accepted.event_ids
    assert delivered[1][1].ts == 1000 and delivered[1][1].dwell_ms == 4000


def test_post_is_stored_then_indexed_and_duplicates_conflict() -> None:
    featurizer = FakeFeaturizer()
    svc = service(featurizer, FakeTriton())
    svc.store.put_posts(
        [Post(post_id=5, author_id=1, format=PostFormat.text, topic="t", text="x", created_at=1)]
    )
    accepted = run(svc.accept_post(PostIn(author_id=1, text="hello"), now=50))
    assert accepted.post_id > 5 and featurizer.indexed == [accepted.post_id]
    stored = svc.store.get_posts([accepted.post_id])[0]
    assert stored is not None and stored.created_at == 50 and stored.text == "hello"
    with pytest.raises(Conflict):
        run(svc.accept_post(PostIn(post_id=5, author_id=1, text="again")))


def test_session_source_and_blocked_authors() -> None:
    triton = FakeTriton()
    featurizer = FakeFeaturizer(blocked=(AUTHORS[10], AUTHORS[30]))
    req = FeedRequest(member_id=7, count=20, session=SessionIn(engaged_post_ids=[5, 6]))
    resp = run(service(featurizer, triton).feed(req))
    by_id = {i.post_id: i for i in resp.items}
    assert by_id[20].sources == ["session"] and by_id[21].sources == ["session"]
    session_search = next(s for s in triton.searches if s["query_post_ids"] is not None)
    assert session_search["query_post_ids"].tolist() == [5, 6]
    blocked = {AUTHORS[10], AUTHORS[30]}
    assert all(set(s["blocked"].tolist()) == blocked for s in triton.searches)
    assert not {i.author_id for i in resp.items} & blocked  # all sources are filtered


def test_post_edit_reindexes_and_delete_logs_a_tombstone() -> None:
    featurizer = FakeFeaturizer()
    svc = service(featurizer, FakeTriton())
    post_id = run(svc.accept_post(PostIn(author_id=3, text="first", topic="a"), now=5)).post_id
    run(svc.edit_post(post_id, PostEdit(text="second")))
    stored = svc.store.get_posts([post_id])[0]
    assert stored is not None and (stored.text, stored.topic, stored.author_id) == (
        "second",
        "a",
        3,
    )
    assert featurizer.indexed == [post_id, post_id]
    run(svc.delete_post(post_id))
    assert svc.store.get_posts([post_id]) == [None]
    log = svc.embeddings
    assert isinstance(log, ListLog) and log.records[-1].op == "delete"
    with pytest.raises(NotFound):
        run(svc.delete_post(post_id))
    with pytest.raises(NotFound):
        run(svc.edit_post(post_id, PostEdit(text="x")))


# --- HTTP layer -----------------------------------------------------------------------------
@pytest.fixture()
def http() -> Iterator[tuple[TestClient, FakeFeaturizer]]:
    with gateway(GatewaySettings()) as out:
        yield out


@contextlib.contextmanager
def gateway(
    settings: GatewaySettings, featurizer: FakeFeaturizer | None = None
) -> Iterator[tuple[TestClient, FakeFeaturizer]]:
    """The gateway app over in-memory fakes, with ``settings``."""
    featurizer = featurizer or FakeFeaturizer()
    store = MemoryFeatureStore()
    store.put_members(
        [
            Member(
                member_id=1,
                name="A",
                headline="h",
                title="t",
                industry="i",
                seniority=Seniority.mid,
                location="l",
            )
        ]
    )

    def factory(settings: GatewaySettings, triton: InferenceClient) -> Runtime:
        svc = FeedService(
            store,
            MemoryEventLog(),
            ListLog(),
            featurizer,
            FakeTriton(),
            GatewayMetrics(),
            FeedConfig(),
        )
        return Runtime(svc, store, svc.events, featurizer, FakeTriton(), embedded=True)

    app = create_app(settings, runtime_factory=factory)
    with TestClient(app) as client:
        yield client, featurizer


def test_http_feed_events_posts_and_errors(http: tuple[TestClient, FakeFeaturizer]) -> None:
    client, featurizer = http
    resp = client.post("/v1/feed", json={"member_id": 1, "count": 3})
    assert resp.status_code == 200 and len(resp.json()["items"]) == 3
    assert resp.headers["x-trace-id"] == resp.json()["trace_id"]
    resp = client.post(
        "/v1/events", json={"events": [{"member_id": 1, "post_id": 2, "action": "like"}]}
    )
    assert resp.status_code == 202 and resp.json()["accepted"] == 1
    resp = client.post("/v1/posts", json={"author_id": 1, "text": "hi"})
    assert resp.status_code == 202 and resp.json()["status"] == "indexing"
    resp = client.post(
        "/v1/posts", json={"post_id": resp.json()["post_id"], "author_id": 1, "text": "x"}
    )
    assert resp.status_code == 409 and "already exists" in resp.json()["error"]
    created = featurizer.indexed[-1]
    assert client.patch(f"/v1/posts/{created}", json={"topic": "new"}).status_code == 202
    assert client.patch(f"/v1/posts/{created}", json={"author_id": 9}).status_code == 422
    resp = client.patch(f"/v1/posts/{created}", json={"text": None})  # found by schemathesis
    assert resp.status_code == 422 and resp.json()["error"] == "invalid request: text"
    assert client.patch(f"/v1/posts/{created}", json={"article": None}).status_code == 202
    assert client.delete(f"/v1/posts/{created}").status_code == 204
    resp = client.delete(f"/v1/posts/{created}")
    assert resp.status_code == 404 and "does not exist" in resp.json()["error"]
    assert client.delete("/v1/posts/0").status_code == 422
    resp = client.post(
        "/v1/events", json={"events": [{"member_id": 1, "post_id": 2, "action": "x"}] * 2}
    )
    assert resp.status_code == 422
    assert resp.json()["error"] == "invalid request: events.0.action, events.1.action"
    too_many = [{"member_id": 1, "post_id": 2, "action": "like"}] * 1001
    assert client.post("/v1/events", json={"events": too_many}).status_code == 422
    featurizer.down = True
    resp = client.post("/v1/feed", json={"member_id": 1})
    assert resp.status_code == 503 and "FeaturizerUnavailable" in resp.json()["error"]
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["featurizer"] is False
    metrics = client.get("/metrics").text
    assert 'feedserve_requests_total{route="/v1/feed",status="503"} 1.0' in metrics


def test_openapi_documents_routes_and_error_bodies(http: tuple[TestClient, FakeFeaturizer]) -> None:
    client, _ = http
    spec = client.get("/openapi.json").json()
    for path in ("/v1/feed", "/v1/events", "/v1/posts", "/healthz", "/readyz", "/metrics"):
        assert path in spec["paths"]
    assert "422" in spec["paths"]["/v1/feed"]["post"]["responses"]
    feed_schema = spec["components"]["schemas"]["FeedRequest"]
    assert feed_schema["properties"]["count"]["maximum"] == 100


# --- admission: keys, rates, size, load ------------------------------------------------------
FEED = {"member_id": 1, "count": 3}


def test_api_keys_401_without_or_with_a_wrong_key_and_probes_stay_open() -> None:
    keys = GatewaySettings(api_keys="k-one, k-two", api_key_sha256=digest("k-three"))
    with gateway(keys) as (client, _):
        resp = client.post("/v1/feed", json=FEED)
        assert resp.status_code == 401 and "missing API key" in resp.json()["error"]
        assert resp.headers["www-authenticate"].startswith("ApiKey")
        resp = client.post("/v1/feed", json=FEED, headers={"X-API-Key": "k-four"})
        assert resp.status_code == 401 and resp.json()["error"] == "invalid API key"
        for key in ("k-one", "k-two", "k-three"):
            assert client.post("/v1/feed", json=FEED, headers={"X-API-Key": key}).status_code == 200
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
            assert client.get(path).status_code == 200, path
        metrics = client.get("/metrics").text
        assert 'feedserve_rejected_total{reason="unauthorized"} 2.0' in metrics
        assert "k-four" not in metrics and "k-one" not in metrics


def test_rate_limit_per_key_answers_429_with_retry_after() -> None:
    limited = GatewaySettings(api_keys="a,b", rate_limit_per_s=0.01, rate_limit_burst=2)
    with gateway(limited) as (client, _):
        codes = [client.post("/v1/feed", json=FEED, headers={"X-API-Key": "a"}).status_code
                 for _ in range(3)]  # fmt: skip
        assert codes == [200, 200, 429]
        resp = client.post("/v1/feed", json=FEED, headers={"X-API-Key": "a"})
        assert resp.status_code == 429 and int(resp.headers["retry-after"]) >= 1
        assert "rate limit of key" in resp.json()["error"]
        # another key has its own bucket
        assert client.post("/v1/feed", json=FEED, headers={"X-API-Key": "b"}).status_code == 200


def test_body_size_limit_and_length_required() -> None:
    with gateway(GatewaySettings(max_body_bytes=2048)) as (client, _):
        big = {"events": [{"member_id": 1, "post_id": 2, "action": "like"}] * 100}
        resp = client.post("/v1/events", json=big)
        assert resp.status_code == 413 and "2048 bytes" in resp.json()["error"]

        def chunks() -> Iterator[bytes]:
            yield b'{"member_id": 1, "count": 3}'

        resp = client.post(
            "/v1/feed", content=chunks(), headers={"content-type": "application/json"}
        )
        assert resp.status_code == 411


class SlowFeaturizer(FakeFeaturizer):
    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()  # set from any thread or loop
        self.waiting = 0

    async def hydrate_member(
        self,
        member_id: int,
        session: Any,
        now: int,
        with_prompt: bool = True,
        on_prompt: Any = None,
    ) -> dict[str, Any]:
        self.waiting += 1
        await asyncio.to_thread(self.release.wait, 30)
        return await super().hydrate_member(member_id, session, now, with_prompt, on_prompt)


def test_overload_sheds_with_429_and_admitted_requests_complete() -> None:
    import httpx

    slow = SlowFeaturizer()
    app_settings = GatewaySettings(max_in_flight=2)
    with gateway(app_settings, slow) as (client, _):
        app = client.app

        async def burst() -> list[int]:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
                first = [asyncio.create_task(c.post("/v1/feed", json=FEED)) for _ in range(2)]
                while slow.waiting < 2:  # both admitted requests are in the featurizer
                    await asyncio.sleep(0.01)
                shed = await c.post("/v1/feed", json=FEED)
                slow.release.set()
                done = await asyncio.gather(*first)
                return [shed.status_code, int(shed.headers["retry-after"])] + [
                    r.status_code for r in done
                ]

        assert client.portal is not None
        shed_code, retry_after, *admitted = client.portal.call(burst)
        assert shed_code == 429 and retry_after >= 1
        assert admitted == [200, 200]
        assert client.post("/v1/feed", json=FEED).status_code == 200  # capacity is back


def test_shutdown_drains_requests_in_flight() -> None:
    """What SIGTERM does to uvicorn (``should_exit``) while a feed is being computed: the
    server stops accepting, finishes that request with 200, then exits."""
    import httpx
    import uvicorn

    from feedserve.launcher import free_port

    slow = SlowFeaturizer()
    port = free_port()
    with gateway(GatewaySettings(), slow) as (client, _):
        config = uvicorn.Config(client.app, host="127.0.0.1", port=port, log_level="warning",
                                lifespan="off", timeout_graceful_shutdown=10)  # fmt: skip
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        poll(lambda: server.started, 10, "server started")
        result: list[int] = []

        def call() -> None:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=20) as c:
                result.append(c.post("/v1/feed", json=FEED).status_code)

        caller = threading.Thread(target=call)
        caller.start()
        poll(lambda: slow.waiting >= 1, 10, "request in the featurizer")
        server.should_exit = True  # the signal handler's doing
        slow.release.set()
        caller.join(20)
        thread.join(20)
        assert result == [200] and not thread.is_alive()


def test_startup_objects_are_frozen_while_the_app_serves() -> None:
    """What start-up loaded leaves the cyclic collector's generations while the app runs (its
    full collections cost ~70 ms on a request), and comes back when the app stops."""
    assert gc.get_freeze_count() == 0
    with gateway(GatewaySettings()) as (client, _):
        assert gc.get_freeze_count() > 0
        assert client.post("/v1/feed", json={"member_id": 1, "count": 3}).status_code == 200
    assert gc.get_freeze_count() == 0
