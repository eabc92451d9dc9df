"""In-process feature store and event log: the embedded default when no Redis is configured.

Both classes are thread-safe (the gateway calls them from worker threads) and behave exactly
like their Redis counterparts in ``redis_store``; one contract test suite runs against both.
Orderings are defined so that both implementations agree, ties included:

- recency / by author: ``created_at`` descending, then post id descending;
- popularity: score descending, then post id descending. Only posts with a non-zero score are
  ranked (impressions weigh 0 and do not enter the ranking on their own).

The pure helpers here (``plan_bulk_load``, ``pack_event``) are shared with ``redis_store`` so
that ``bulk_load`` computes the same result in both.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from feedserve.contracts import (
    ACTION_TO_COUNT,
    COUNT_KINDS,
    Action,
    EngagementCounts,
    Member,
    Post,
)
from feedserve.store.base import (
    ENGAGEMENT_WEIGHTS,
    HISTORY_DTYPE,
    EngagementEvent,
    MemberView,
    StoredVector,
    empty_history,
)

EVENT_DEDUP_TTL_S = 7 * 24 * 3600
"""How long an applied ``event_id`` is remembered: a duplicate arriving later is re-applied."""

_ACTION_CODES = np.array([int(a) for a in Action], dtype=np.int64)
_WEIGHT_BY_CODE = np.zeros(int(_ACTION_CODES.max()) + 1, dtype=np.float64)
for _action, _weight in ENGAGEMENT_WEIGHTS.items():
    _WEIGHT_BY_CODE[int(_action)] = _weight

_INTERACTION_FIELDS = ("member_id", "post_id", "action", "ts")

# --- helpers shared with redis_store ---------------------------------------------------------


def pack_event(event: EngagementEvent) -> np.ndarray:
    """One HISTORY_DTYPE record (shape ``()``) for an event."""
    rec = np.zeros((), dtype=HISTORY_DTYPE)
    rec["post_id"] = event.post_id
    rec["ts"] = event.ts
    rec["action"] = int(event.action)
    return rec


@dataclass
class BulkPlan:
    """What ``bulk_load`` writes, computed once with numpy.

    ``histories``: per member, the newest ``history_max_len`` new entries, oldest first.
    ``counts``: per counter kind, (post ids, increments). ``popularity``: (post ids, score
    increments), zero increments dropped.
    """

    histories: list[tuple[int, np.ndarray]] = field(default_factory=list)
    counts: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    popularity: tuple[np.ndarray, np.ndarray] = field(
        default_factory=lambda: (np.zeros(0, np.int64), np.zeros(0, np.float64))
    )


def plan_bulk_load(interactions: np.ndarray, history_max_len: int) -> BulkPlan:
    """Group interactions (structured array, any order) the way ``apply_events`` would apply
    them one by one in ``ts`` order (stable: equal timestamps keep their input order)."""
    names = interactions.dtype.names or ()
    missing = [f for f in _INTERACTION_FIELDS if f not in names]
    if missing:
        raise ValueError(f"interactions lack fields {missing}; need {_INTERACTION_FIELDS}")
    plan = BulkPlan()
    if interactions.size == 0:
        return plan
    flat = interactions.reshape(-1)
    order = np.argsort(flat["ts"], kind="stable")
    member = flat["member_id"][order].astype(np.int64)
    post = flat["post_id"][order].astype(np.int64)
    action = flat["action"][order].astype(np.int64)
    ts = flat["ts"][order].astype(np.int64)
    if not np.isin(action, _ACTION_CODES).all():
        raise ValueError("interactions contain unknown action codes")

    # histories: stable sort by member keeps ts order inside each member
    by_member = np.argsort(member, kind="stable")
    recs = np.empty(member.size, dtype=HISTORY_DTYPE)
    recs["post_id"] = post[by_member]
    recs["ts"] = ts[by_member]
    recs["action"] = action[by_member].astype(np.uint8)
    sorted_members = member[by_member]
    uniq, starts = np.unique(sorted_members, return_index=True)
    ends = np.append(starts[1:], sorted_members.size)
    for mid, start, end in zip(uniq.tolist(), starts.tolist(), ends.tolist(), strict=True):
        start = max(start, end - history_max_len)
        plan.histories.append((int(mid), recs[start:end]))

    for act, kind in ACTION_TO_COUNT.items():
        sel = post[action == int(act)]
        if sel.size:
            ids, n = np.unique(sel, return_counts=True)
            plan.counts[kind] = (ids, n.astype(np.int64))

    weights = _WEIGHT_BY_CODE[action]
    nz = weights != 0
    if nz.any():
        ids, inverse = np.unique(post[nz], return_inverse=True)
        totals = np.bincount(inverse, weights=weights[nz], minlength=ids.size)
        keep = totals != 0
        plan.popularity = (ids[keep], totals[keep])
    return plan


# --- feature store ---------------------------------------------------------------------------

_RankKey = tuple[int, int]  # (-created_at, -post_id): ascending order == newest first


def _rank_key(post: Post) -> _RankKey:
    return (-post.created_at, -post.post_id)


class MemoryFeatureStore:
    """The feature store held in this process's memory (see module docstring)."""

    def __init__(self, history_max_len: int = 1024) -> None:
        if history_max_len < 1:
            raise ValueError("history_max_len must be >= 1")
        self.history_max_len = history_max_len
        self._lock = threading.RLock()
        self._reset()

    def _reset(self) -> None:
        self._members: dict[int, Member] = {}
        self._posts: dict[int, Post] = {}
        self._recent: list[_RankKey] = []
        self._by_author: dict[int, list[_RankKey]] = {}
        self._histories: dict[int, np.ndarray] = {}
        self._counts: dict[int, list[int]] = {}
        self._popularity: dict[int, float] = {}
        self._max_post_id = 0
        self._applied: OrderedDict[str, float] = OrderedDict()  # event_id -> expiry (monotonic)
        self._vectors: dict[str, dict[int, StoredVector]] = {}

    def ping(self) -> bool:
        return True

    def clear(self) -> None:
        with self._lock:
            self._reset()

    # --- members -----------------------------------------------------------------------------
    def put_members(self, members: Iterable[Member]) -> None:
        with self._lock:
            for m in members:
                self._members[m.member_id] = m

    def member_view(self, member_id: int, popular: int, fresh: int) -> MemberView:
        return MemberView(
            self.get_member(member_id),
            self.get_history(member_id),
            self.popular_posts(popular),
            self.recent_posts(fresh),
        )

    def get_member(self, member_id: int) -> Member | None:
        with self._lock:
            return self._members.get(member_id)

    def member_ids(self) -> list[int]:
        with self._lock:
            return sorted(self._members)

    def get_members(self, member_ids: Sequence[int]) -> list[Member | None]:
        with self._lock:
            return [self._members.get(i) for i in member_ids]

    # --- posts -------------------------------------------------------------------------------
    def put_posts(self, posts: Iterable[Post]) -> None:
        with self._lock:
            for p in posts:
                old = self._posts.get(p.post_id)
                if old is not None:
                    self._unindex(old)
                self._posts[p.post_id] = p
                key = _rank_key(p)
                bisect.insort(self._recent, key)
                bisect.insort(self._by_author.setdefault(p.author_id, []), key)
                self._max_post_id = max(self._max_post_id, p.post_id)

    def _unindex(self, post: Post) -> None:
        key = _rank_key(post)
        for keys in (self._recent, self._by_author.get(post.author_id, [])):
            i = bisect.bisect_left(keys, key)
            if i < len(keys) and keys[i] == key:
                del keys[i]

    def get_posts(self, post_ids: Sequence[int]) -> list[Post | None]:
        with self._lock:
            return [self._posts.get(i) for i in post_ids]

    def delete_posts(self, post_ids: Sequence[int]) -> int:
        deleted = 0
        with self._lock:
            for post_id in dict.fromkeys(post_ids):
                post = self._posts.pop(post_id, None)
                if post is None:
                    continue
                self._unindex(post)
                self._counts.pop(post_id, None)
                self._popularity.pop(post_id, None)
                deleted += 1
        return deleted

    def allocate_post_id(self) -> int:
        with self._lock:
            self._max_post_id += 1
            return self._max_post_id

    def recent_posts(self, limit: int) -> list[int]:
        if limit <= 0:
            return []
        with self._lock:
            return [-k[1] for k in self._recent[:limit]]

    def posts_by_authors(self, author_ids: Sequence[int], limit: int) -> list[int]:
        if limit <= 0:
            return []
        with self._lock:
            lists = [self._by_author.get(a, [])[:limit] for a in dict.fromkeys(author_ids)]
        merged: Iterator[_RankKey] = heapq.merge(*lists)
        return [-k[1] for k in itertools.islice(merged, limit)]

    def popular_posts(self, limit: int) -> list[int]:
        if limit <= 0:
            return []
        with self._lock:
            items = list(self._popularity.items())
        top = heapq.nlargest(limit, items, key=lambda kv: (kv[1], kv[0]))
        return [pid for pid, _ in top]

    def get_counts(self, post_ids: Sequence[int]) -> list[EngagementCounts]:
        with self._lock:
            rows = [self._counts.get(i) for i in post_ids]
        zero = [0] * len(COUNT_KINDS)
        return [EngagementCounts(**dict(zip(COUNT_KINDS, r or zero, strict=True))) for r in rows]

    # --- histories and events ----------------------------------------------------------------
    def get_history(self, member_id: int, limit: int | None = None) -> np.ndarray:
        if limit is not None and limit <= 0:
            return empty_history()
        with self._lock:
            hist = self._histories.get(member_id)
            if hist is None:
                return empty_history()
            return (hist if limit is None else hist[-limit:]).copy()

    def _append_history(self, member_id: int, recs: np.ndarray) -> None:
        old = self._histories.get(member_id)
        new = recs if old is None else np.concatenate([old, recs])
        self._histories[member_id] = new[-self.history_max_len :].copy()

    def _bump(self, post_id: int, kind: str, n: int) -> None:
        row = self._counts.setdefault(post_id, [0] * len(COUNT_KINDS))
        row[COUNT_KINDS.index(kind)] += n

    def _bump_popularity(self, post_id: int, delta: float) -> None:
        if delta != 0:
            self._popularity[post_id] = self._popularity.get(post_id, 0.0) + delta

    def _seen(self, event_id: str, now: float) -> bool:
        while self._applied:
            oldest, expiry = next(iter(self._applied.items()))
            if expiry > now:
                break
            del self._applied[oldest]
        return event_id in self._applied

    def apply_events(self, events: Sequence[EngagementEvent]) -> int:
        """Idempotent by ``event_id`` for ``EVENT_DEDUP_TTL_S``; the whole batch is applied
        under the store lock, so concurrent duplicate submissions apply an event once."""
        applied = 0
        with self._lock:
            now = time.monotonic()
            pending: dict[int, list[np.ndarray]] = {}
            for ev in events:
                if self._seen(ev.event_id, now):
                    continue
                self._applied[ev.event_id] = now + EVENT_DEDUP_TTL_S
                pending.setdefault(ev.member_id, []).append(pack_event(ev))
                kind = ACTION_TO_COUNT.get(ev.action)
                if kind is not None:
                    self._bump(ev.post_id, kind, 1)
                self._bump_popularity(ev.post_id, ENGAGEMENT_WEIGHTS[ev.action])
                applied += 1
            for member_id, recs in pending.items():
                self._append_history(member_id, np.stack(recs))
        return applied

    # --- materialized vectors ------------------------------------------------------------------
    def put_vectors(self, table: str, vectors: Sequence[StoredVector]) -> None:
        with self._lock:
            rows = self._vectors.setdefault(table, {})
            for v in vectors:
                rows[int(v.key)] = StoredVector(
                    int(v.key),
                    np.asarray(v.vector, dtype=np.float32).copy(),
                    v.space,
                    float(v.updated_at),
                )

    def get_vectors(self, table: str, keys: Sequence[int]) -> list[StoredVector | None]:
        with self._lock:
            rows = self._vectors.get(table, {})
            return [rows.get(int(k)) for k in keys]

    def vector_count(self, table: str) -> int:
        with self._lock:
            return len(self._vectors.get(table, {}))

    def bulk_load(
        self, members: Iterable[Member], posts: Iterable[Post], interactions: np.ndarray
    ) -> None:
        plan = plan_bulk_load(interactions, self.history_max_len)
        with self._lock:
            self.put_members(members)
            self.put_posts(posts)
            for member_id, recs in plan.histories:
                self._append_history(member_id, recs)
            for kind, (ids, ns) in plan.counts.items():
                for pid, n in zip(ids.tolist(), ns.tolist(), strict=True):
                    self._bump(pid, kind, n)
            for pid, delta in zip(*(a.tolist() for a in plan.popularity), strict=True):
                self._bump_popularity(pid, delta)


# --- event log -------------------------------------------------------------------------------


class MemoryEventLog:
    """In-process event stream with consumer-group semantics (like one Redis consumer group).

    ``consume`` hands each new event to exactly one consumer; it stays pending until ``ack``.
    ``reclaim`` transfers events pending longer than ``min_idle_ms`` (``time.monotonic``) to the
    calling consumer. Delivery ids are ``"<seq>-0"`` strings, increasing.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._seq = 0
        self._events: dict[str, EngagementEvent] = {}  # every unacknowledged event
        self._waiting: deque[str] = deque()  # appended, not yet delivered
        self._delivered: OrderedDict[str, tuple[str, float]] = OrderedDict()  # id -> owner, t

    def append(self, events: Sequence[EngagementEvent]) -> None:
        with self._cond:
            for ev in events:
                self._seq += 1
                did = f"{self._seq}-0"
                self._events[did] = ev
                self._waiting.append(did)
            if events:
                self._cond.notify_all()

    def consume(
        self, consumer: str, count: int = 256, block_ms: int = 1000
    ) -> list[tuple[str, EngagementEvent]]:
        deadline = time.monotonic() + max(block_ms, 0) / 1000.0
        with self._cond:
            while not self._waiting:
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                self._cond.wait(left)
            now = time.monotonic()
            out: list[tuple[str, EngagementEvent]] = []
            while self._waiting and len(out) < count:
                did = self._waiting.popleft()
                self._delivered[did] = (consumer, now)
                out.append((did, self._events[did]))
            return out

    def ack(self, delivery_ids: Sequence[str]) -> None:
        with self._cond:
            for did in delivery_ids:
                if self._delivered.pop(did, None) is not None:
                    del self._events[did]

    def reclaim(
        self, consumer: str, min_idle_ms: int, count: int = 256
    ) -> list[tuple[str, EngagementEvent]]:
        with self._cond:
            now = time.monotonic()
            limit = now - min_idle_ms / 1000.0
            taken = [did for did, (_, since) in self._delivered.items() if since <= limit][:count]
            for did in taken:
                self._delivered[did] = (consumer, now)
            return [(did, self._events[did]) for did in taken]

    def pending(self) -> int:
        with self._cond:
            return len(self._events)
