"""Pure featurization: member and candidate hydration, post prompts for indexing.

Everything the featurizer pool computes lives here as plain functions over a
``FeaturizerContext``; Celery tasks and the in-process featurizer only call them. Results are
plain dicts of numpy arrays and scalars so that they cross the wire in the compact codec.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from feedserve.contracts import ENGAGEMENT_ACTIONS, Action, EngagementCounts, Member, Post
from feedserve.models.tokenizer import PromptTokenizer
from feedserve.prompts import ActivityItem, BucketTable, render_member_prompt, render_post_prompt
from feedserve.settings import FeaturizerSettings
from feedserve.store import open_store
from feedserve.store.base import HISTORY_DTYPE, EmbeddingLog, EmbeddingRecord, FeatureStore
from feedserve_featurizers.batch import PythonTensorizer, Tensorizer, make_tensorizer

BUCKETS_FILE = "buckets.json"
ACTIVITY_ITEMS = 64
"""Most recent engagements read for the member prompt (the token budget may keep fewer)."""
SEEN_WINDOW = 512
"""Most recent history entries (any action) whose posts are filtered out of the feed."""

WIRE_DTYPES: dict[str, type[np.integer]] = {
    "input_ids": np.int32,
    "history_actions": np.uint8,
    "history_timestamps": np.uint32,
}
"""Narrow dtypes for small-valued fields of featurizer results: the binary codec spends the
item size per value, so int64 action codes would cost 8 bytes where 1 does. The Triton client
widens every tensor to the model's declared type."""


def to_wire(result: dict[str, object]) -> dict[str, object]:
    """Cast the fields named in ``WIRE_DTYPES`` to their narrow dtype (values are checked)."""
    out = dict(result)
    for key, dtype in WIRE_DTYPES.items():
        if key in out:
            arr = np.asarray(out[key])
            info = np.iinfo(dtype)
            if arr.size and (arr.min() < info.min or arr.max() > info.max):
                raise ValueError(f"{key} does not fit {np.dtype(dtype).name}")
            out[key] = arr.astype(dtype)
    return out


def prompt_wire(input_ids: np.ndarray) -> np.ndarray:
    """Prompt token ids in their wire dtype (what ``to_wire`` makes of ``input_ids``)."""
    return np.asarray(to_wire({"input_ids": input_ids})["input_ids"])


class SessionContext(BaseModel):
    """What the client knows about the current session and the store may not have yet."""

    engaged_post_ids: list[int] = Field(default_factory=list, max_length=100)
    seen_post_ids: list[int] = Field(default_factory=list, max_length=1000)


@dataclass
class FeaturizerContext:
    """Loaded once per worker process and reused by every task."""

    store: FeatureStore
    tokenizer: PromptTokenizer
    buckets: BucketTable
    settings: FeaturizerSettings
    tensorizer: Tensorizer = field(default_factory=PythonTensorizer)
    """The ranker tensors' backend (``settings.featurizer_backend``; see ``batch``)."""

    @classmethod
    def load(
        cls, settings: FeaturizerSettings, store: FeatureStore | None = None
    ) -> FeaturizerContext:
        artifacts = Path(settings.artifacts_dir)
        buckets_path = artifacts / BUCKETS_FILE
        if not buckets_path.is_file():
            raise FileNotFoundError(f"{buckets_path} is missing: run `feedserve build` first")
        return cls(
            store=store if store is not None else open_store(settings),
            tokenizer=PromptTokenizer.from_dir(
                artifacts / "encoder", settings.member_prompt_tokens
            ),
            buckets=BucketTable.load(buckets_path),
            settings=settings,
            tensorizer=make_tensorizer(settings),
        )


def with_session(history: np.ndarray, session: SessionContext | None, now: int) -> np.ndarray:
    """The stored history plus this session's engagements (as clicks at ``now``)."""
    if session is None or not session.engaged_post_ids:
        return history
    extra = np.zeros(len(session.engaged_post_ids), dtype=HISTORY_DTYPE)
    extra["post_id"] = session.engaged_post_ids
    extra["ts"] = max(now, int(history["ts"][-1]) if len(history) else now)
    extra["action"] = int(Action.click)
    return np.concatenate([history, extra])


def recent_activity(store: FeatureStore, history: np.ndarray, limit: int) -> list[ActivityItem]:
    """The member's last ``limit`` engagements with their posts, oldest first."""
    codes = [int(a) for a in ENGAGEMENT_ACTIONS]
    engaged = history[np.isin(history["action"], codes)][-limit:]
    posts = store.get_posts(engaged["post_id"].tolist())
    return [
        ActivityItem(action=Action(int(code)), post=post)
        for code, post in zip(engaged["action"].tolist(), posts, strict=True)
        if post is not None
    ]


def member_prompt(ctx: FeaturizerContext, member: Member, history: np.ndarray) -> str:
    activity = recent_activity(ctx.store, history, ACTIVITY_ITEMS)
    return render_member_prompt(
        member,
        activity,
        budget=ctx.settings.member_prompt_tokens,
        count_tokens=ctx.tokenizer.count_tokens,
    )


def hydrate_member(
    ctx: FeaturizerContext,
    member_id: int,
    session: SessionContext | None,
    now: int,
    with_prompt: bool = True,
    on_prompt: Callable[[np.ndarray], None] | None = None,
) -> dict[str, object]:
    """Everything the online path needs about one member, from one feature-store visit.

    ``on_prompt`` receives the prompt's token ids (wire dtype) as soon as they exist, before
    the rest is computed: the caller can start the embedding meanwhile.

    Keys: ``known`` (profile or history exists), ``input_ids`` (member prompt tokens; empty
    without a profile, or when ``with_prompt`` is false: the member embedding is read from
    the store, not computed, so the prompt is not rendered), the ranker history tensors,
    ``seen_ids``, ``blocked_author_ids`` and
    the non-embedding candidate sources ``network_ids`` (posts by connections and followed
    authors), ``popular_ids``, ``fresh_ids``, and ``request_time`` (``now``: the time the
    ranker scores candidates at).
    """
    s = ctx.settings
    view = ctx.store.member_view(member_id, s.popular_candidates, s.fresh_candidates)
    member = view.member
    history = with_session(view.history, session, now)
    input_ids = np.zeros(0, dtype=np.int64)
    if member is not None and with_prompt:
        input_ids = ctx.tokenizer.encode(member_prompt(ctx, member, history))
        if on_prompt is not None:
            on_prompt(prompt_wire(input_ids))
    seen = set(history["post_id"][-SEEN_WINDOW:].tolist())
    if session is not None:
        seen.update(session.seen_post_ids)
    network: list[int] = []
    followed = [] if member is None else sorted(set(member.connections) | set(member.follows))
    if followed and s.network_candidates:
        network = ctx.store.posts_by_authors(followed, s.network_candidates)
    blocked = [] if member is None else sorted(set(member.blocked_authors))
    out: dict[str, object] = {
        "member_id": member_id,
        "known": member is not None or len(history) > 0,
        "input_ids": input_ids,
        "seen_ids": np.array(sorted(seen), dtype=np.int64),
        "blocked_author_ids": np.array(blocked, dtype=np.int64),
        "network_ids": np.array(network, dtype=np.int64),
        "popular_ids": np.array(view.popular_ids, dtype=np.int64),
        "fresh_ids": np.array(view.fresh_ids, dtype=np.int64),
        "request_time": int(now),
    }
    out.update(ctx.tensorizer.history_tensors(history, s.ranker_history_len))
    return to_wire(out)


def hydrate_candidates(ctx: FeaturizerContext, post_ids: Sequence[int]) -> dict[str, object]:
    """Metadata of candidate posts, for business rules and the response (unknown ids dropped)."""
    posts = [p for p in ctx.store.get_posts(list(post_ids)) if p is not None]
    return {
        "post_ids": np.array([p.post_id for p in posts], dtype=np.int64),
        "author_ids": np.array([p.author_id for p in posts], dtype=np.int64),
        "created_at": np.array([p.created_at for p in posts], dtype=np.int64),
        "formats": [p.format.value for p in posts],
        "topics": [p.topic for p in posts],
    }


def post_prompt(
    ctx: FeaturizerContext,
    post: Post,
    author: Member | None,
    counts: EngagementCounts,
) -> str:
    return render_post_prompt(
        post,
        author,
        counts,
        ctx.buckets,
        budget=ctx.settings.post_prompt_tokens,
        count_tokens=ctx.tokenizer.count_tokens,
    )


def post_prompt_ids(ctx: FeaturizerContext, post_id: int) -> np.ndarray:
    """Token ids of a stored post's prompt (author and current engagement read from the store)."""
    post = ctx.store.get_posts([post_id])[0]
    if post is None:
        raise KeyError(f"post {post_id} is not in the feature store")
    author = ctx.store.get_member(post.author_id)
    counts = ctx.store.get_counts([post_id])[0]
    return ctx.tokenizer.encode(post_prompt(ctx, post, author, counts))


def index_post(
    ctx: FeaturizerContext,
    post_id: int,
    embed: Callable[[np.ndarray], tuple[np.ndarray, str]],
    log: EmbeddingLog,
) -> None:
    """Nearline indexing of a new or edited post: prompt → embedding (``embed`` calls Triton
    and names the embedding space) → the shared embedding log that every index tails."""
    post = ctx.store.get_posts([post_id])[0]
    if post is None:  # deleted before it was indexed: nothing to add
        return
    embedding, space = embed(post_prompt_ids(ctx, post_id))
    record = EmbeddingRecord(
        op="upsert",
        post_id=post_id,
        embedding=np.asarray(embedding, dtype=np.float32),
        author_id=post.author_id,
        space=space,
    )
    log.append([record])
