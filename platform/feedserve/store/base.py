"""The feature store, event log and embedding log interfaces.

Every process reaches member, post and engagement state through these interfaces. Two
implementations exist with identical behaviour: Redis (``redis_store``; the only module that
talks to Redis) and in-memory/file (``memory``, ``filelog``) for the embedded default. One
contract test suite runs against both.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import Field

from feedserve.contracts import Action, EngagementCounts, Interaction, Member, Post

HISTORY_DTYPE = np.dtype([("post_id", "<i8"), ("ts", "<i8"), ("action", "u1")])
"""One packed history entry (17 bytes). Histories are arrays of this dtype, oldest first."""

ENGAGEMENT_WEIGHTS: dict[Action, float] = {
    Action.impression: 0.0,
    Action.click: 1.0,
    Action.like: 2.0,
    Action.comment: 4.0,
    Action.share: 6.0,
    Action.dwell: 0.5,
}
"""Increment of a post's popularity score per action (the popular-posts candidate source)."""


class EngagementEvent(Interaction):
    """An interaction as accepted by the gateway, with a client- or server-chosen unique id."""

    event_id: str = Field(min_length=1, max_length=128)


def empty_history() -> np.ndarray:
    return np.zeros(0, dtype=HISTORY_DTYPE)


@dataclass(frozen=True)
class MemberView:
    """What hydrating a member reads first, in one visit (``FeatureStore.member_view``)."""

    member: Member | None
    history: np.ndarray
    """All kept events, oldest first (``HISTORY_DTYPE``)."""
    popular_ids: list[int]
    fresh_ids: list[int]


@runtime_checkable
class FeatureStore(Protocol):
    """Member profiles, bounded histories, post metadata and engagement counters."""

    history_max_len: int

    def ping(self) -> bool:
        """True when the backing store answers."""

    def clear(self) -> None:
        """Delete everything this store owns (its key prefix in Redis)."""

    # --- members -----------------------------------------------------------------------------
    def put_members(self, members: Iterable[Member]) -> None: ...

    def get_member(self, member_id: int) -> Member | None: ...

    def get_members(self, member_ids: Sequence[int]) -> list[Member | None]: ...

    def member_ids(self) -> list[int]:
        """Every member with a stored profile, ascending (what an offline job iterates)."""

    # --- posts -------------------------------------------------------------------------------
    def put_posts(self, posts: Iterable[Post]) -> None:
        """Insert or replace posts; indexes them by recency and author."""

    def get_posts(self, post_ids: Sequence[int]) -> list[Post | None]: ...

    def delete_posts(self, post_ids: Sequence[int]) -> int:
        """Remove posts with their recency, author and popularity entries and counters.

        Returns how many existed. Members' histories keep their past engagements.
        """

    def allocate_post_id(self) -> int:
        """A fresh post id, larger than every id stored so far (atomic across processes)."""

    def recent_posts(self, limit: int) -> list[int]:
        """Newest post ids first (by ``created_at``; ties by larger id)."""

    def posts_by_authors(self, author_ids: Sequence[int], limit: int) -> list[int]:
        """Newest posts written by any of ``author_ids``, newest first."""

    def popular_posts(self, limit: int) -> list[int]:
        """Post ids by popularity score (sum of ``ENGAGEMENT_WEIGHTS``), highest first."""

    def get_counts(self, post_ids: Sequence[int]) -> list[EngagementCounts]:
        """Engagement counters; zeros for unknown posts."""

    def member_view(self, member_id: int, popular: int, fresh: int) -> MemberView:
        """``get_member``, ``get_history``, ``popular_posts(popular)`` and
        ``recent_posts(fresh)`` at once (one round trip to Redis instead of four)."""

    # --- histories and events ----------------------------------------------------------------
    def get_history(self, member_id: int, limit: int | None = None) -> np.ndarray:
        """The member's last ``limit`` events (default all kept), oldest first, HISTORY_DTYPE."""

    def apply_events(self, events: Sequence[EngagementEvent]) -> int:
        """Append to histories (trimmed to ``history_max_len``), bump counters and popularity.

        Idempotent by ``event_id``: an event applied before is skipped. Returns how many
        events were newly applied.
        """

    # --- materialized vectors (offline / nearline workflow outputs) --------------------------
    def put_vectors(self, table: str, vectors: Sequence[StoredVector]) -> None:
        """Insert or replace vectors of ``table`` (e.g. ``member_embedding``) by key."""

    def get_vectors(self, table: str, keys: Sequence[int]) -> list[StoredVector | None]:
        """The stored vectors for ``keys`` (None where absent), in order."""

    def vector_count(self, table: str) -> int:
        """How many keys ``table`` holds."""

    def bulk_load(
        self, members: Iterable[Member], posts: Iterable[Post], interactions: np.ndarray
    ) -> None:
        """Load a data set fast (no idempotency bookkeeping). ``interactions`` is a structured
        array with fields member_id, post_id, action, ts (any order; sorted here by ts)."""


@dataclass(frozen=True)
class StoredVector:
    """A vector materialized by an offline or nearline workflow step, keyed by an entity id."""

    key: int
    vector: np.ndarray  # float32 [dim]
    space: str = ""
    """Fingerprint of the model that produced ``vector`` (as for ``EmbeddingRecord``)."""
    updated_at: float = 0.0
    """Unix time (seconds) when the vector was computed: how fresh it is."""


@dataclass(frozen=True)
class EmbeddingRecord:
    """One entry of the nearline post-embedding log."""

    op: Literal["upsert", "delete"]
    post_id: int
    embedding: np.ndarray | None  # float32 [dim] for upserts, None for deletes
    author_id: int = 0
    """The post's author (0 = unknown), so that replicas can filter blocked authors."""
    space: str = ""
    """Fingerprint of the encoder that produced ``embedding`` ("" = any). A replica applies
    only records of its own snapshot's space, so a new encoder version never mixes vectors
    of two embedding spaces in one index. Deletes apply whatever their space."""


@runtime_checkable
class EmbeddingLog(Protocol):
    """Append-only log of post embeddings that every ``post_index`` replica tails."""

    def append(self, records: Sequence[EmbeddingRecord]) -> None:
        """Durably append; returns only once the records are stored."""

    def read(self, cursor: str, max_records: int = 10_000) -> tuple[list[EmbeddingRecord], str]:
        """Records after ``cursor`` ("" = from the beginning) and the cursor after them."""


@runtime_checkable
class EventLog(Protocol):
    """Durable stream of accepted engagement events, consumed by the featurizer pool."""

    def append(self, events: Sequence[EngagementEvent]) -> None:
        """Durably append; returns only once the events are stored."""

    def consume(
        self, consumer: str, count: int = 256, block_ms: int = 1000
    ) -> list[tuple[str, EngagementEvent]]:
        """New events for this consumer group member, as (delivery id, event)."""

    def ack(self, delivery_ids: Sequence[str]) -> None:
        """Mark events as applied; unacknowledged ones are redelivered by ``reclaim``."""

    def reclaim(
        self, consumer: str, min_idle_ms: int, count: int = 256
    ) -> list[tuple[str, EngagementEvent]]:
        """Take over events delivered to a consumer that did not acknowledge them in time."""

    def pending(self) -> int:
        """Events delivered or waiting but not yet acknowledged."""
