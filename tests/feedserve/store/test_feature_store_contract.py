"""One contract suite for every FeatureStore implementation (memory and Redis)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import cast

import numpy as np
import pytest

from feedserve.contracts import (
    Action,
    ArticleMeta,
    Education,
    EngagementCounts,
    Member,
    Position,
    Post,
    PostFormat,
    Seniority,
)
from feedserve.store.base import HISTORY_DTYPE, EngagementEvent, FeatureStore
from feedserve.store.redis_store import RedisFeatureStore

StoreFactory = Callable[..., FeatureStore]

INTERACTION_DTYPE = np.dtype(
    [("member_id", "<i8"), ("post_id", "<i8"), ("action", "u1"), ("ts", "<i8")]
)


def member(member_id: int, name: str = "Ada Lovelace", **kw: object) -> Member:
    fields: dict[str, object] = {
        "member_id": member_id,
        "name": name,
        "headline": "Engineer",
        "title": "Software Engineer",
        "industry": "Software",
        "seniority": Seniority.mid,
        "location": "London",
    }
    fields.update(kw)
    return Member.model_validate(fields)


def post(post_id: int, author_id: int = 1, created_at: int = 1000, text: str = "hi") -> Post:
    return Post(
        post_id=post_id,
        author_id=author_id,
        format=PostFormat.text,
        topic="ml",
        text=text,
        created_at=created_at,
    )


_counter = iter(range(1, 10**9))


def event(
    member_id: int,
    post_id: int,
    action: Action = Action.click,
    ts: int = 100,
    event_id: str | None = None,
) -> EngagementEvent:
    return EngagementEvent(
        event_id=event_id or f"ev-{next(_counter)}",
        member_id=member_id,
        post_id=post_id,
        action=action,
        ts=ts,
    )


def history_tuples(hist: np.ndarray) -> list[tuple[int, int, int]]:
    assert hist.dtype == HISTORY_DTYPE
    return [(int(r["post_id"]), int(r["ts"]), int(r["action"])) for r in hist]


# --- basics ----------------------------------------------------------------------------------


def test_ping_and_protocol(store: FeatureStore) -> None:
    assert store.ping()
    assert isinstance(store, FeatureStore)
    assert store.history_max_len == 1024


def test_members_round_trip(store: FeatureStore) -> None:
    rich = member(
        7,
        name="Zoë Åström-李",
        headline="Ingénieure 🚀 データ",
        skills=["Python", "Русский"],
        positions=[Position(title="CTO", company="Ünïcode GmbH", start_year=2019)],
        education=[Education(school="École", degree="MSc", field="Informatique")],
        connections=[1, 2, 3],
    )
    plain = member(8)
    store.put_members([rich, plain])
    assert store.get_member(7) == rich
    assert store.get_member(8) == plain
    assert store.get_member(9) is None
    assert store.get_members([8, 9, 7]) == [plain, None, rich]
    assert store.get_members([]) == []
    updated = member(8, name="Grace Hopper")
    store.put_members([updated])
    assert store.get_member(8) == updated


def test_posts_round_trip(store: FeatureStore) -> None:
    article = Post(
        post_id=11,
        author_id=3,
        format=PostFormat.article,
        topic="système",
        text="Grüße aus Köln — 你好",
        created_at=1_700_000_000,
        article=ArticleMeta(title="Über", domain="example.org", reading_minutes=4),
    )
    store.put_posts([article, post(12)])
    assert store.get_posts([12, 13, 11]) == [post(12), None, article]
    assert store.get_posts([]) == []


def test_missing_ids_and_empty_state(store: FeatureStore) -> None:
    assert store.get_member(123) is None
    assert store.get_posts([5]) == [None]
    assert store.get_counts([5, 6]) == [EngagementCounts(), EngagementCounts()]
    assert store.get_counts([]) == []
    hist = store.get_history(123)
    assert hist.dtype == HISTORY_DTYPE and hist.size == 0
    assert store.recent_posts(10) == []
    assert store.popular_posts(10) == []
    assert store.posts_by_authors([1, 2], 10) == []


# --- histories -------------------------------------------------------------------------------


def test_history_trimmed_newest_kept_oldest_first(make_store: StoreFactory) -> None:
    store = make_store(history_max_len=5)
    assert store.history_max_len == 5
    events = [event(1, 100 + i, Action.click, ts=1000 + i) for i in range(12)]
    assert store.apply_events(events[:7]) == 7
    assert store.apply_events(events[7:]) == 5
    expected = [(100 + i, 1000 + i, int(Action.click)) for i in range(7, 12)]
    assert history_tuples(store.get_history(1)) == expected
    assert history_tuples(store.get_history(1, limit=3)) == expected[-3:]
    assert history_tuples(store.get_history(1, limit=50)) == expected
    assert store.get_history(1, limit=0).size == 0
    assert store.get_history(2).size == 0


def test_history_keeps_arrival_order_and_actions(store: FeatureStore) -> None:
    actions = [Action.impression, Action.click, Action.dwell, Action.like, Action.share]
    store.apply_events([event(4, 40 + i, a, ts=500 - i) for i, a in enumerate(actions)])
    hist = store.get_history(4)
    assert [int(a) for a in hist["action"]] == [int(a) for a in actions]
    assert hist["post_id"].tolist() == [40, 41, 42, 43, 44]
    assert hist["ts"].tolist() == [500, 499, 498, 497, 496]
    # the returned array is the caller's own
    hist["post_id"][0] = -1
    assert int(store.get_history(4)["post_id"][0]) == 40


# --- counters and rankings -------------------------------------------------------------------


def test_counters_from_events(store: FeatureStore) -> None:
    store.apply_events(
        [
            event(1, 5, Action.impression),
            event(2, 5, Action.impression),
            event(1, 5, Action.like),
            event(1, 5, Action.comment),
            event(2, 5, Action.comment),
            event(3, 5, Action.share),
            event(1, 6, Action.click),
            event(1, 6, Action.dwell),
        ]
    )
    assert store.get_counts([5, 6, 7]) == [
        EngagementCounts(views=2, likes=1, comments=2, shares=1),
        EngagementCounts(),  # click and dwell only move popularity
        EngagementCounts(),
    ]
    # 5: 2*0 + 2 + 2*4 + 6 = 16; 6: 1 + 0.5 = 1.5
    assert store.popular_posts(10) == [5, 6]


def test_popularity_ordering_and_ties(store: FeatureStore) -> None:
    store.apply_events(
        [
            event(1, 30, Action.like),  # 2
            event(1, 10, Action.share),  # 6
            event(1, 20, Action.click),  # 1
            event(2, 20, Action.click),  # 2 (tie with 30: larger id first)
            event(1, 9, Action.click),  # 1
            event(1, 99, Action.impression),  # 0: not ranked
            event(1, 8, Action.dwell),  # 0.5
        ]
    )
    assert store.popular_posts(10) == [10, 30, 20, 9, 8]
    assert store.popular_posts(2) == [10, 30]
    assert store.popular_posts(0) == []


def test_recency_and_authors_with_ties(store: FeatureStore) -> None:
    store.put_posts(
        [
            post(1, author_id=1, created_at=100),
            post(2, author_id=2, created_at=300),
            post(3, author_id=1, created_at=300),  # tie with 2: larger id first
            post(10, author_id=3, created_at=200),
            post(9, author_id=1, created_at=200),  # tie with 10
            post(4, author_id=2, created_at=50),
        ]
    )
    assert store.recent_posts(10) == [3, 2, 10, 9, 1, 4]
    assert store.recent_posts(3) == [3, 2, 10]
    assert store.recent_posts(0) == []
    assert store.posts_by_authors([1], 10) == [3, 9, 1]
    assert store.posts_by_authors([2, 1, 2], 10) == [3, 2, 9, 1, 4]
    assert store.posts_by_authors([1, 3], 3) == [3, 10, 9]
    assert store.posts_by_authors([77], 10) == []
    assert store.posts_by_authors([], 10) == []
    assert store.posts_by_authors([1], 0) == []


def test_replacing_a_post_reindexes_it(store: FeatureStore) -> None:
    store.put_posts([post(1, author_id=1, created_at=100), post(2, author_id=1, created_at=200)])
    store.put_posts([post(1, author_id=2, created_at=300, text="edited")])
    assert store.get_posts([1])[0] == post(1, author_id=2, created_at=300, text="edited")
    assert store.recent_posts(10) == [1, 2]
    assert store.posts_by_authors([1], 10) == [2]
    assert store.posts_by_authors([2], 10) == [1]


# --- post ids --------------------------------------------------------------------------------


def test_allocate_post_id_monotonic_and_above_loaded(store: FeatureStore) -> None:
    store.put_posts([post(5), post(70), post(12)])
    a = store.allocate_post_id()
    b = store.allocate_post_id()
    assert 70 < a < b
    store.put_posts([post(10_000)])
    assert store.allocate_post_id() > 10_000
    store.put_posts([post(3)])  # a smaller id never lowers the counter
    c = store.allocate_post_id()
    assert c > 10_001
    big = 2**62 - 10
    store.put_posts([post(big)])
    assert store.allocate_post_id() == big + 1


def test_allocate_post_id_after_bulk_load(store: FeatureStore) -> None:
    store.bulk_load([], [post(40), post(41)], np.zeros(0, INTERACTION_DTYPE))
    assert store.allocate_post_id() > 41


def test_allocate_post_id_unique_under_threads(store: FeatureStore) -> None:
    store.put_posts([post(500)])
    results: list[list[int]] = [[] for _ in range(8)]
    barrier = threading.Barrier(8)

    def work(i: int) -> None:
        barrier.wait()
        results[i].extend(store.allocate_post_id() for _ in range(50))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [x for r in results for x in r]
    assert len(ids) == 400 and len(set(ids)) == 400
    assert min(ids) > 500
    for r in results:
        assert r == sorted(r)


# --- idempotency -----------------------------------------------------------------------------


def test_apply_events_idempotent(store: FeatureStore) -> None:
    e1 = event(1, 5, Action.like, ts=10, event_id="dup-1")
    e2 = event(1, 6, Action.share, ts=11, event_id="dup-2")
    assert store.apply_events([e1, e1]) == 1
    assert store.apply_events([e1, e2]) == 1
    assert store.apply_events([e2]) == 0
    assert store.apply_events([]) == 0
    assert store.get_counts([5, 6]) == [EngagementCounts(likes=1), EngagementCounts(shares=1)]
    assert history_tuples(store.get_history(1)) == [
        (5, 10, int(Action.like)),
        (6, 11, int(Action.share)),
    ]
    assert store.popular_posts(5) == [6, 5]


def test_apply_events_idempotent_under_concurrent_duplicates(store: FeatureStore) -> None:
    events = [event(1 + i % 5, 100 + i % 7, Action.comment, ts=i) for i in range(60)]
    returned: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def work(seed: int) -> None:
        order = np.random.default_rng(seed).permutation(len(events))
        batch = [events[j] for j in order]
        barrier.wait()
        n = 0
        for k in range(0, len(batch), 7):
            n += store.apply_events(batch[k : k + 7])
        with lock:
            returned.append(n)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(returned) == len(events)
    counts = store.get_counts(list(range(100, 107)))
    assert sum(c.comments for c in counts) == len(events)
    assert sum(store.get_history(m).size for m in range(1, 6)) == len(events)


# --- bulk load -------------------------------------------------------------------------------


def synthetic(
    n_members: int, n_posts: int, n_events: int, seed: int = 0
) -> tuple[list[Member], list[Post], np.ndarray]:
    rng = np.random.default_rng(seed)
    members = [member(i, name=f"Member {i} — ñ") for i in range(1, n_members + 1)]
    posts = [
        post(1000 + i, author_id=int(rng.integers(1, n_members + 1)), created_at=int(t))
        for i, t in enumerate(rng.integers(0, 50, n_posts))
    ]
    inter = np.zeros(n_events, INTERACTION_DTYPE)
    inter["member_id"] = rng.integers(1, n_members + 1, n_events)
    inter["post_id"] = rng.integers(1000, 1000 + n_posts, n_events)
    inter["action"] = rng.integers(1, 7, n_events)
    inter["ts"] = rng.integers(0, 200, n_events)  # many equal timestamps
    return members, posts, inter


def events_in_ts_order(inter: np.ndarray, tag: str) -> list[EngagementEvent]:
    order = np.argsort(inter["ts"], kind="stable")
    return [
        EngagementEvent(
            event_id=f"{tag}-{j}",
            member_id=int(inter["member_id"][j]),
            post_id=int(inter["post_id"][j]),
            action=Action(int(inter["action"][j])),
            ts=int(inter["ts"][j]),
        )
        for j in order
    ]


def assert_same_state(a: FeatureStore, b: FeatureStore, members: Sequence[int], posts: list[int]):
    for m in members:
        assert history_tuples(a.get_history(m)) == history_tuples(b.get_history(m)), m
    assert a.get_counts(posts) == b.get_counts(posts)
    assert a.popular_posts(len(posts) + 1) == b.popular_posts(len(posts) + 1)
    assert a.recent_posts(len(posts) + 1) == b.recent_posts(len(posts) + 1)
    assert a.get_members(list(members)) == b.get_members(list(members))


@pytest.mark.parametrize("max_len", [16, 1024])
def test_bulk_load_equals_apply_events(make_store: StoreFactory, max_len: int) -> None:
    members, posts, inter = synthetic(40, 60, 3000)
    # two bulk loads in a row (the second appends) against one stream of apply_events
    first = inter[inter["ts"] < 100]
    second = inter[inter["ts"] >= 100]
    bulk = make_store(history_max_len=max_len)
    bulk.bulk_load(members, posts, first)
    bulk.bulk_load([], [], second)
    applied = make_store(history_max_len=max_len)
    applied.put_members(members)
    applied.put_posts(posts)
    events = events_in_ts_order(inter, "bulk")
    for k in range(0, len(events), 500):
        applied.apply_events(events[k : k + 500])
    ids = [p.post_id for p in posts]
    assert_same_state(bulk, applied, [m.member_id for m in members], ids)
    per_member = np.bincount(inter["member_id"], minlength=len(members) + 1)
    for m in members:
        assert bulk.get_history(m.member_id).size == min(max_len, per_member[m.member_id])
    counts = bulk.get_counts(ids)
    assert sum(c.views for c in counts) == int((inter["action"] == Action.impression).sum())


def test_bulk_load_rejects_bad_arrays(store: FeatureStore) -> None:
    bad = np.zeros(3, np.dtype([("member_id", "<i8"), ("post_id", "<i8")]))
    with pytest.raises(ValueError):
        store.bulk_load([], [], bad)
    unknown = np.zeros(1, INTERACTION_DTYPE)
    unknown[0] = (1, 2, 9, 3)
    with pytest.raises(ValueError):
        store.bulk_load([], [], unknown)


# --- clear -----------------------------------------------------------------------------------


def fill(store: FeatureStore) -> None:
    store.put_members([member(1)])
    store.put_posts([post(2, author_id=1, created_at=5)])
    store.apply_events([event(1, 2, Action.like, event_id="fill-1")])


def test_clear_isolated_between_prefixes(make_store: StoreFactory, backend: str) -> None:
    a = make_store()
    # in Redis, a prefix that extends the other one must not be matched by its clear()
    b = make_store(prefix=f"{cast(RedisFeatureStore, a).prefix}x" if backend == "redis" else None)
    fill(a)
    fill(b)
    a.clear()
    assert a.get_member(1) is None
    assert a.get_posts([2]) == [None]
    assert a.get_history(1).size == 0
    assert a.get_counts([2]) == [EngagementCounts()]
    assert a.recent_posts(5) == [] and a.popular_posts(5) == []
    assert a.posts_by_authors([1], 5) == []
    if backend == "redis":
        ra, rb = cast(RedisFeatureStore, a), cast(RedisFeatureStore, b)
        assert list(ra.client.scan_iter(match=f"{ra.prefix}:*")) == []
        assert list(rb.client.scan_iter(match=f"{rb.prefix}:*"))
    # the idempotency markers went too: the event applies again
    assert a.apply_events([event(1, 2, Action.like, event_id="fill-1")]) == 1
    assert b.get_member(1) == member(1)
    assert b.get_counts([2]) == [EngagementCounts(likes=1)]
    assert b.recent_posts(5) == [2] and b.popular_posts(5) == [2]
    assert b.get_history(1).size == 1
    assert b.apply_events([event(1, 2, Action.like, event_id="fill-1")]) == 0


def test_delete_posts_removes_every_index_entry(store: FeatureStore) -> None:
    posts = [
        Post(post_id=i, author_id=7, format=PostFormat.text, topic="t", text=f"p{i}", created_at=i)
        for i in (1, 2, 3)
    ]
    store.put_posts(posts)
    store.apply_events(
        [
            EngagementEvent(event_id=f"d{i}", member_id=1, post_id=i, action=Action.share, ts=10)
            for i in (1, 2)
        ]
    )
    assert store.delete_posts([2, 2, 99]) == 1
    assert store.get_posts([1, 2, 3]) == [posts[0], None, posts[2]]
    assert store.recent_posts(10) == [3, 1]
    assert store.posts_by_authors([7], 10) == [3, 1]
    assert store.popular_posts(10) == [1]
    assert store.get_counts([2])[0].shares == 0
    assert 2 in store.get_history(1)["post_id"].tolist()  # past engagement stays
    assert store.delete_posts([]) == 0


def test_materialized_vectors_round_trip_replace_and_clear(store: FeatureStore) -> None:
    from feedserve.store.base import StoredVector

    assert store.get_vectors("member_embedding", [1, 2]) == [None, None]
    assert store.vector_count("member_embedding") == 0
    v1 = StoredVector(1, np.arange(4, dtype=np.float32), "enc-a", 1_700_000_000.25)
    v2 = StoredVector(2, np.ones(4, dtype=np.float32), "", 5.0)
    store.put_vectors("member_embedding", [v1, v2])
    store.put_vectors("other", [StoredVector(1, np.zeros(2, dtype=np.float32))])
    got = store.get_vectors("member_embedding", [2, 3, 1])
    assert got[1] is None
    assert got[0] is not None and got[2] is not None
    assert got[2].key == 1 and got[2].space == "enc-a" and got[2].updated_at == 1_700_000_000.25
    assert got[2].vector.dtype == np.float32
    np.testing.assert_array_equal(got[2].vector, v1.vector)
    np.testing.assert_array_equal(got[0].vector, v2.vector)
    store.put_vectors("member_embedding", [StoredVector(1, np.full(4, 7, np.float32), "b", 9.0)])
    again = store.get_vectors("member_embedding", [1])[0]
    assert again is not None and again.space == "b" and float(again.vector[0]) == 7.0
    assert store.vector_count("member_embedding") == 2 and store.vector_count("other") == 1
    store.clear()
    assert store.get_vectors("member_embedding", [1]) == [None]


def test_member_ids_lists_profiles(store: FeatureStore) -> None:
    assert store.member_ids() == []
    store.put_members([member(12), member(3), member(7)])
    assert store.member_ids() == [3, 7, 12]


def test_member_view_reads_what_the_single_reads_do(store: FeatureStore) -> None:
    empty = store.member_view(5, 10, 10)
    assert empty.member is None and empty.history.dtype == HISTORY_DTYPE
    assert empty.history.size == 0 and empty.popular_ids == empty.fresh_ids == []
    store.put_members([member(5)])
    store.put_posts([post(i, author_id=1 + i % 3, created_at=100 * i) for i in range(1, 9)])
    store.apply_events(
        [event(5, p, a) for p, a in ((3, Action.like), (7, Action.share), (3, Action.click))]
    )
    for popular, fresh in ((10, 10), (1, 3), (0, 2), (2, 0), (0, 0)):
        view = store.member_view(5, popular, fresh)
        assert view.member == store.get_member(5) == member(5)
        assert np.array_equal(view.history, store.get_history(5)) and view.history.size == 3
        assert view.popular_ids == store.popular_posts(popular)
        assert view.fresh_ids == store.recent_posts(fresh)
    assert store.member_view(5, 0, 0).popular_ids == []  # not the whole set (stop -1)
