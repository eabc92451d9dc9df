"""The gateway's request logic. A feed request runs the feed workflow (``feedserve.workflow``):
featurizer pool → candidate sources → merge → ranking → business rules, each step in the mode
the workflow file gives it.

Stage failures degrade instead of failing the request where the workflow gives a fallback
(the default one: ranker down → retrieval order; embedding retrieval down → the
popular/fresh/network sources); ``degraded_reasons`` names each step that fell back. A step
without a fallback fails the request (a featurizer outage: HTTP 503).
"""

from __future__ import annotations

import asyncio
import time
import uuid

import numpy as np

from feedserve.contracts import Action, Post
from feedserve.gateway import feed as rules
from feedserve.gateway.metrics import GatewayMetrics
from feedserve.gateway.schemas import (
    EventsAccepted,
    EventsRequest,
    FeedExplain,
    FeedItem,
    FeedRequest,
    FeedResponse,
    PostAccepted,
    PostEdit,
    PostIn,
    StepRun,
)
from feedserve.store.base import (
    EmbeddingLog,
    EmbeddingRecord,
    EngagementEvent,
    EventLog,
    FeatureStore,
)
from feedserve.triton_client import InferenceClient
from feedserve.workflow.ops import EncoderSpace, FeedConfig, OpContext
from feedserve.workflow.runner import RemoteClients, Runner, RunResult
from feedserve.workflow.spec import Workflow, WorkflowError, load_default
from feedserve_featurizers.client import Featurizer
from feedserve_featurizers.hydrate import SessionContext

__all__ = ["FEED_OUTPUTS", "Conflict", "FeedConfig", "FeedService", "NotFound"]

FEED_OUTPUTS = ("page", "ranked", "post_meta", "member")
"""Values a feed workflow must output for the gateway to build its response."""


class NotFound(Exception):
    """A referenced entity does not exist (mapped to HTTP 404)."""


class Conflict(Exception):
    """The request conflicts with stored state (mapped to HTTP 409)."""


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
        workflow: Workflow | None = None,
        remote_timeout_s: float = 2.0,
    ) -> None:
        self.store = store
        self.events = events
        self.embeddings = embeddings
        self.featurizer = featurizer
        self.triton = triton
        self.metrics = metrics
        self.config = config
        self.workflow = workflow or load_default()
        missing = [v for v in FEED_OUTPUTS if v not in self.workflow.spec.outputs]
        if missing:
            raise WorkflowError(
                [f"a feed workflow must output {', '.join(missing)}"], self.workflow.spec.name
            )
        posts = [s for s in self.workflow.spec.steps if s.op_name == "embed_posts"]
        self.index_posts_nearline = not posts or any(s.mode.streaming for s in posts)
        """New and edited posts are indexed within seconds unless the workflow declares the
        post embeddings offline only (then the next `feedserve index build` picks them up)."""
        self.remote = RemoteClients(remote_timeout_s)
        ctx = OpContext(featurizer, triton, store, config, self.remote, EncoderSpace(triton))
        self.runner = Runner(self.workflow, ctx, self._observe)

    def _observe(self, stage: str, seconds: float) -> None:
        self.metrics.stage.labels(stage).observe(seconds)

    async def close(self) -> None:
        await self.remote.close()

    # --- feed -----------------------------------------------------------------------------
    async def feed(self, req: FeedRequest, now: int | None = None) -> FeedResponse:
        trace_id = uuid.uuid4().hex
        now = int(time.time()) if now is None else now
        session = SessionContext(**req.session.model_dump()) if req.session else None
        result = await self.runner.run(
            {"member_id": req.member_id, "session_context": session, "now": now, "count": req.count}
        )
        for reason in result.degraded:
            self.metrics.degraded.labels(reason.split(" ", 1)[0]).inc()
        return self._assemble(req, trace_id, result)

    def _assemble(self, req: FeedRequest, trace_id: str, result: RunResult) -> FeedResponse:
        values = result.values
        meta = values["post_meta"]
        ids = np.asarray(meta["post_ids"]).tolist()
        author_of = dict(zip(ids, np.asarray(meta["author_ids"]).tolist(), strict=True))
        info = {
            pid: (fmt, topic)
            for pid, fmt, topic in zip(ids, meta["formats"], meta["topics"], strict=True)
        }
        by_id: dict[int, rules.Candidate] = {c.post_id: c for c in values["ranked"]}
        items = [
            FeedItem(
                post_id=pid,
                author_id=author_of[pid],
                rank=i + 1,
                score=round(by_id[pid].final_score, 6),
                sources=by_id[pid].sources,
                format=info[pid][0],
                topic=info[pid][1],
            )
            for i, pid in enumerate(values["page"])
        ]
        explain = None
        if req.explain:
            explain = FeedExplain(
                workflow=self.workflow.spec.name,
                steps=[StepRun(**t.__dict__) for t in result.trace],
                as_of=result.as_of(),
            )
        return FeedResponse(
            member_id=req.member_id,
            items=items,
            trace_id=trace_id,
            cold_start=not bool(values["member"]["known"]),
            degraded=bool(result.degraded),
            degraded_reasons=result.degraded,
            explain=explain,
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
        if self.index_posts_nearline:
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
        if self.index_posts_nearline:
            await self.featurizer.index_post(post_id)
        return PostAccepted(post_id=post_id)

    async def delete_post(self, post_id: int) -> None:
        """Remove a post from the store and, through the nearline log, from every index."""
        if not await asyncio.to_thread(self.store.delete_posts, [post_id]):
            raise NotFound(f"post {post_id} does not exist")
        record = EmbeddingRecord(op="delete", post_id=post_id, embedding=None)
        await asyncio.to_thread(self.embeddings.append, [record])
