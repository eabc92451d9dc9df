"""The gateway's request logic: featurizer pool → retrieval → ranking → business rules.

Stage failures degrade instead of failing the request: if the ranker fails the feed is served
in retrieval order, if retrieval fails it is served from the popular/fresh/network sources;
both say so in ``degraded_reasons``. Only a featurizer outage fails a feed request (HTTP 503).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from feedserve.contracts import Action, Post
from feedserve.gateway import feed as rules
from feedserve.gateway.metrics import GatewayMetrics
from feedserve.gateway.schemas import (
    EventsAccepted,
    EventsRequest,
    FeedItem,
    FeedRequest,
    FeedResponse,
    PostAccepted,
    PostEdit,
    PostIn,
)
from feedserve.store.base import (
    EmbeddingLog,
    EmbeddingRecord,
    EngagementEvent,
    EventLog,
    FeatureStore,
)
from feedserve.triton_client import InferenceClient, TritonError
from feedserve_featurizers.client import Featurizer
from feedserve_featurizers.hydrate import SessionContext

T = TypeVar("T")


class NotFound(Exception):
    """A referenced entity does not exist (mapped to HTTP 404)."""


class Conflict(Exception):
    """The request conflicts with stored state (mapped to HTTP 409)."""


@dataclass
class FeedConfig:
    retrieval_k: int = 200
    max_per_author: int = 2
    quotas: dict[str, int] | None = None


class FeedService:
    def __init__(
        self,
        store: FeatureStore,
        events: EventLog,
        embeddings: EmbeddingLog,
        featurizer: Featurizer,
        triton: InferenceClient,
        metrics: GatewayMetrics,
        config: FeedConfig,
    ) -> None:
        self.store = store
        self.events = events
        self.embeddings = embeddings
        self.featurizer = featurizer
        self.triton = triton
        self.metrics = metrics
        self.config = config

    @contextmanager
    def _stage(self, name: str) -> Any:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.metrics.stage.labels(name).observe(time.perf_counter() - start)

    async def _timed(self, name: str, call: Callable[[], Awaitable[T]]) -> T:
        with self._stage(name):
            return await call()

    # --- feed -----------------------------------------------------------------------------
    async def feed(self, req: FeedRequest, now: int | None = None) -> FeedResponse:
        trace_id = uuid.uuid4().hex
        now = int(time.time()) if now is None else now
        session = SessionContext(**req.session.model_dump()) if req.session else None
        member = await self._timed(
            "featurize", lambda: self.featurizer.hydrate_member(req.member_id, session, now)
        )
        reasons: list[str] = []
        seen_ids = np.asarray(member["seen_ids"])
        blocked_ids = np.asarray(member["blocked_author_ids"])
        sources: dict[str, list[tuple[int, float]]] = {
            "network": rules.rank_scores(np.asarray(member["network_ids"]).tolist()),
            "popular": rules.rank_scores(np.asarray(member["popular_ids"]).tolist()),
            "fresh": rules.rank_scores(np.asarray(member["fresh_ids"]).tolist()),
        }
        # embedding sources, concurrently: the member prompt (ebr) and this session's posts
        searches: dict[str, Awaitable[list[tuple[int, float]]]] = {}
        input_ids = np.asarray(member["input_ids"])
        if len(input_ids):
            searches["ebr"] = self._retrieve(input_ids, seen_ids, blocked_ids)
        if session is not None and session.engaged_post_ids:
            engaged = np.array(session.engaged_post_ids, dtype=np.int64)
            searches["session"] = self._more_like(engaged, seen_ids, blocked_ids)
        if searches:
            found = await self._timed(
                "retrieve", lambda: asyncio.gather(*searches.values(), return_exceptions=True)
            )
            for name, result in zip(searches, found, strict=True):
                if isinstance(result, TritonError):
                    reasons.append(f"retrieval unavailable ({name}): {result}")
                elif isinstance(result, BaseException):
                    raise result
                else:
                    sources[name] = result
        candidates = rules.merge_candidates(
            sources, self.config.quotas or rules.DEFAULT_QUOTAS, exclude=set(seen_ids.tolist())
        )
        meta = await self._timed(
            "hydrate_candidates",
            lambda: self.featurizer.hydrate_candidates([c.post_id for c in candidates]),
        )
        blocked = set(blocked_ids.tolist())
        allowed = {
            int(p)
            for p, a in zip(
                np.asarray(meta["post_ids"]), np.asarray(meta["author_ids"]), strict=True
            )
            if int(a) not in blocked
        }
        candidates = [c for c in candidates if c.post_id in allowed]
        # default order: retrieval order (the merge order: embedding retrieval first)
        scores = {c.post_id: c.retrieval_score for c in candidates}
        ordered = [c.post_id for c in candidates]
        cold_start = not bool(member["known"])
        if cold_start:  # no history to rank against: popularity first, then freshness
            scores = {c.post_id: _cold_start_score(c) for c in candidates}
            ordered = sorted(scores, key=lambda p: (-scores[p], p))
        elif candidates:
            try:
                ranked = await self._timed("rank", lambda: self._rank(member, candidates))
                scores = dict(zip(ordered, ranked, strict=True))
                ordered = sorted(scores, key=lambda p: (-scores[p], p))
            except TritonError as exc:
                reasons.append(f"ranker unavailable: {exc}")
        for reason in reasons:
            self.metrics.degraded.labels(reason.split(":")[0]).inc()
        return self._assemble(req, trace_id, candidates, ordered, scores, meta, cold_start, reasons)

    async def _retrieve(
        self, input_ids: np.ndarray, seen: np.ndarray, blocked: np.ndarray
    ) -> list[tuple[int, float]]:
        query = await self.triton.embed_ids(input_ids)
        ids, scores = await self.triton.search(
            query, self.config.retrieval_k, seen, blocked_author_ids=blocked
        )
        return _pairs(ids, scores)

    async def _more_like(
        self, post_ids: np.ndarray, seen: np.ndarray, blocked: np.ndarray
    ) -> list[tuple[int, float]]:
        """The session-context source: posts like the ones engaged with in this session."""
        quotas = self.config.quotas or rules.DEFAULT_QUOTAS
        ids, scores = await self.triton.search(
            None,
            quotas.get("session", 0) or 1,
            seen,
            query_post_ids=post_ids,
            blocked_author_ids=blocked,
        )
        return _pairs(ids, scores)

    async def _rank(self, member: dict[str, Any], candidates: list[rules.Candidate]) -> list[float]:
        cand_ids = np.array([c.post_id for c in candidates], dtype=np.int64)
        scores = await self.triton.rank(member, cand_ids)
        if len(scores) != len(cand_ids):
            raise TritonError("generative_ranker", "returned the wrong number of scores")
        return [float(s) for s in scores]

    def _assemble(
        self,
        req: FeedRequest,
        trace_id: str,
        candidates: list[rules.Candidate],
        ordered: list[int],
        scores: dict[int, float],
        meta: dict[str, Any],
        cold_start: bool,
        reasons: list[str],
    ) -> FeedResponse:
        ids = np.asarray(meta["post_ids"]).tolist()
        author_of = dict(zip(ids, np.asarray(meta["author_ids"]).tolist(), strict=True))
        info = {
            pid: (fmt, topic)
            for pid, fmt, topic in zip(ids, meta["formats"], meta["topics"], strict=True)
        }
        by_id = {c.post_id: c for c in candidates}
        page = rules.diversify(ordered, author_of, self.config.max_per_author, req.count)
        items = [
            FeedItem(
                post_id=pid,
                author_id=author_of[pid],
                rank=i + 1,
                score=round(scores[pid], 6),
                sources=by_id[pid].sources,
                format=info[pid][0],
                topic=info[pid][1],
            )
            for i, pid in enumerate(page)
        ]
        return FeedResponse(
            member_id=req.member_id,
            items=items,
            trace_id=trace_id,
            cold_start=cold_start,
            degraded=bool(reasons),
            degraded_reasons=reasons,
        )

    # --- events ---------------------------------------------------------------------------
    async def accept_events(self, req: EventsRequest, now: int | None = None) -> EventsAccepted:
        """Validate the whole batch, then append it durably; 202 is sent only after this."""
        now = int(time.time()) if now is None else now
        events = [
            EngagementEvent(
                event_id=e.event_id or uuid.uuid4().hex,
                member_id=e.member_id,
                post_id=e.post_id,
                action=Action[e.action],
                ts=now if e.ts is None else e.ts,
                dwell_ms=e.dwell_ms,
            )
            for e in req.events
        ]
        await asyncio.to_thread(self.events.append, events)
        self.metrics.events.inc(len(events))
        return EventsAccepted(accepted=len(events), event_ids=[e.event_id for e in events])

    # --- posts ----------------------------------------------------------------------------
    async def accept_post(self, req: PostIn, now: int | None = None) -> PostAccepted:
        """Store the post, then schedule nearline indexing (prompt → embedding → log)."""
        now = int(time.time()) if now is None else now
        if req.post_id is not None:
            existing = await asyncio.to_thread(self.store.get_posts, [req.post_id])
            if existing[0] is not None:
                raise Conflict(f"post_id {req.post_id} already exists")
        post_id = req.post_id
        if post_id is None:
            post_id = await asyncio.to_thread(self.store.allocate_post_id)
        post = Post(
            post_id=post_id,
            author_id=req.author_id,
            format=req.format,
            topic=req.topic,
            text=req.text,
            created_at=now if req.created_at is None else req.created_at,
            article=req.article,
        )
        await asyncio.to_thread(self.store.put_posts, [post])
        await self.featurizer.index_post(post_id)
        self.metrics.posts.inc()
        return PostAccepted(post_id=post_id)

    async def edit_post(self, post_id: int, req: PostEdit) -> PostAccepted:
        """Change a post's content, then re-index it nearline (its embedding is replaced)."""
        existing = (await asyncio.to_thread(self.store.get_posts, [post_id]))[0]
        if existing is None:
            raise NotFound(f"post {post_id} does not exist")
        changes = req.model_dump(exclude_unset=True)
        edited = existing.model_copy(update={k: getattr(req, k) for k in changes})
        await asyncio.to_thread(self.store.put_posts, [Post.model_validate(edited.model_dump())])
        await self.featurizer.index_post(post_id)
        return PostAccepted(post_id=post_id)

    async def delete_post(self, post_id: int) -> None:
        """Remove a post from the store and, through the nearline log, from every index."""
        if not await asyncio.to_thread(self.store.delete_posts, [post_id]):
            raise NotFound(f"post {post_id} does not exist")
        record = EmbeddingRecord(op="delete", post_id=post_id, embedding=None)
        await asyncio.to_thread(self.embeddings.append, [record])


def _pairs(ids: np.ndarray, scores: np.ndarray) -> list[tuple[int, float]]:
    return [(int(p), float(s)) for p, s in zip(ids.tolist(), scores.tolist(), strict=True)]


def _cold_start_score(c: rules.Candidate) -> float:
    weight = {"popular": 1.0, "network": 0.9, "fresh": 0.8, "session": 0.75, "ebr": 0.7}
    return max(weight.get(s, 0.5) for s in c.sources) * (0.5 + 0.5 * c.retrieval_score)
