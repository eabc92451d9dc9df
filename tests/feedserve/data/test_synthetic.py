"""The synthetic professional-network generator: invariants, determinism and learnability."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from feedserve.contracts import ACTION_TO_COUNT, COUNT_KINDS, Action, PostFormat
from feedserve.data.synthetic import (
    INTERACTION_DTYPE,
    TOPICS,
    DemoConfig,
    DemoDataset,
    generate,
)
from feedserve.store.base import HISTORY_DTYPE

IMPRESSION = int(Action.impression)


@pytest.fixture(scope="module")
def ds() -> DemoDataset:
    return generate(DemoConfig(members=600, posts=1500, seed=11))


def _engagements(ds: DemoDataset) -> np.ndarray:
    return ds.interactions[ds.interactions["action"] != IMPRESSION]


def _impressions(ds: DemoDataset) -> np.ndarray:
    return ds.interactions[ds.interactions["action"] == IMPRESSION]


# --- config -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"members": 1}, "members must be >= 2"),
        ({"posts": 0}, "posts must be >= 1"),
        ({"topics": 0}, "topics must be in 1..12"),
        ({"topics": len(TOPICS) + 1}, "topics must be in"),
        ({"days": 0}, "days must be in"),
        ({"seed": -1}, "seed must be >= 0"),
        ({"members": 3.5}, "members must be an int"),
        ({"impressions_per_session": 0.5}, "impressions_per_session"),
        ({"affinity_floor": 1.0}, "affinity_floor"),
    ],
)
def test_invalid_config_raises(kwargs: dict[str, object], match: str) -> None:
    base: dict[str, object] = {"members": 10, "posts": 10, "seed": 0}
    with pytest.raises(ValueError, match=match):
        DemoConfig(**{**base, **kwargs})  # type: ignore[arg-type]


def test_config_defaults_and_float_normalization() -> None:
    cfg = DemoConfig(members=5, posts=5, seed=1, impressions_per_member=40)
    assert cfg.days == 30 and cfg.topics == len(TOPICS) == 12
    assert cfg.start_ts == 1_767_225_600
    assert isinstance(cfg.impressions_per_member, float)
    assert cfg.end_ts == cfg.start_ts + 30 * 86_400


# --- shape and ids ------------------------------------------------------------------------------


def test_counts_ids_and_dtypes(ds: DemoDataset) -> None:
    assert [m.member_id for m in ds.members] == list(range(1, 601))
    assert [p.post_id for p in ds.posts] == list(range(1, 1501))
    assert ds.topics == [t.name for t in TOPICS]
    assert ds.interactions.dtype == INTERACTION_DTYPE
    rows = ds.interactions
    assert rows["member_id"].min() >= 1 and rows["member_id"].max() <= 600
    assert rows["post_id"].min() >= 1 and rows["post_id"].max() <= 1500
    assert set(np.unique(rows["action"]).tolist()) <= {int(a) for a in Action}
    assert all(1 <= p.author_id <= 600 for p in ds.posts)
    assert {p.topic for p in ds.posts} <= set(ds.topics)


def test_affinities_are_distributions(ds: DemoDataset) -> None:
    aff = ds.affinities
    assert aff.dtype == np.float32 and aff.shape == (600, 12)
    assert (aff > 0).all()
    np.testing.assert_allclose(aff.sum(axis=1), 1.0, atol=1e-5)
    # concentrated: the top topic carries a large share for most members
    assert np.median(aff.max(axis=1)) > 0.35


def test_fewer_topics() -> None:
    small = generate(DemoConfig(members=40, posts=60, seed=3, topics=3))
    assert small.topics == [t.name for t in TOPICS[:3]]
    assert small.affinities.shape == (40, 3)
    assert {p.topic for p in small.posts} <= set(small.topics)


def test_tiny_config() -> None:
    tiny = generate(DemoConfig(members=2, posts=1, seed=0, days=1))
    assert len(tiny.members) == 2 and len(tiny.posts) == 1
    assert tiny.interactions.dtype == INTERACTION_DTYPE


# --- determinism --------------------------------------------------------------------------------


def test_same_seed_same_dataset() -> None:
    cfg = DemoConfig(members=120, posts=300, seed=5)
    assert generate(cfg) == generate(cfg)


def test_different_seed_different_dataset() -> None:
    a = generate(DemoConfig(members=120, posts=300, seed=5))
    b = generate(DemoConfig(members=120, posts=300, seed=6))
    assert a != b
    assert [m.name for m in a.members] != [m.name for m in b.members]
    assert not np.array_equal(a.affinities, b.affinities)


# --- profiles -----------------------------------------------------------------------------------


def test_member_profiles(ds: DemoDataset) -> None:
    industries = {t.industry for t in TOPICS}
    for m in ds.members:
        assert m.name and m.headline and m.title and m.location
        assert m.industry in industries
        assert 3 <= len(m.skills) <= 10 and len(set(m.skills)) == len(m.skills)
        assert 1 <= len(m.positions) <= 4
        assert m.positions[0].end_year is None and m.positions[0].title == m.title
        assert all(p.end_year is not None for p in m.positions[1:])
        assert 0 <= len(m.education) <= 2
        assert m.demographics.age_band and m.demographics.gender


def test_skills_mostly_from_main_topics(ds: DemoDataset) -> None:
    by_skill: dict[str, set[int]] = {}
    for i, t in enumerate(TOPICS):
        for s in t.skills:
            by_skill.setdefault(s, set()).add(i)
    on_topic = total = 0
    for m in ds.members:
        top = set(np.argsort(-ds.affinities[m.member_id - 1])[:3].tolist())
        for s in m.skills:
            total += 1
            on_topic += bool(by_skill[s] & top)
    assert on_topic / total > 0.8


def test_connections_symmetric_without_self_loops(ds: DemoDataset) -> None:
    adj = {m.member_id: set(m.connections) for m in ds.members}
    for mid, friends in adj.items():
        assert mid not in friends
        assert len(friends) == len(ds.members[mid - 1].connections)  # no duplicates
        for f in friends:
            assert 1 <= f <= len(ds.members)
            assert mid in adj[f]
    degrees = np.array([len(f) for f in adj.values()])
    assert 8 <= degrees.mean() <= 30
    assert degrees.max() <= ds.config.max_connections


def test_connections_biased_to_shared_industry(ds: DemoDataset) -> None:
    industry = {m.member_id: m.industry for m in ds.members}
    same = total = 0
    for m in ds.members:
        for f in m.connections:
            total += 1
            same += industry[f] == m.industry
    _, sizes = np.unique(list(industry.values()), return_counts=True)
    base_rate = float(((sizes / sizes.sum()) ** 2).sum())  # same-industry rate of random pairs
    assert same / total > 2 * base_rate


def test_posts(ds: DemoDataset) -> None:
    cfg = ds.config
    formats = {p.format for p in ds.posts}
    assert formats == set(PostFormat)
    for p in ds.posts:
        assert (p.article is not None) == (p.format is PostFormat.article)
        assert 0 < len(p.text) < 2000
        assert p.created_at < cfg.end_ts
    backlog = sum(p.created_at < cfg.start_ts for p in ds.posts)
    assert 0 < backlog < 0.3 * len(ds.posts)


def test_post_text_carries_topic_vocabulary(ds: DemoDataset) -> None:
    phrases = {t.name: t.phrases for t in TOPICS}
    for p in ds.posts:
        assert any(ph.lower() in p.text.lower() for ph in phrases[p.topic]), p.text


def test_post_topic_follows_author_affinity(ds: DemoDataset) -> None:
    topic_ids = ds.post_topic_ids()
    authors = np.array([p.author_id for p in ds.posts]) - 1
    top2 = np.argsort(-ds.affinities, axis=1)[:, :2]
    on_top = (top2[authors] == topic_ids[:, None]).any(axis=1).mean()
    assert on_top > 0.6


def test_non_ascii_present(ds: DemoDataset) -> None:
    assert any(not m.name.isascii() for m in ds.members)
    assert any(not m.location.isascii() for m in ds.members)
    assert any(not p.text.isascii() for p in ds.posts)


# --- interaction log ----------------------------------------------------------------------------


def test_log_sorted_by_ts_then_member(ds: DemoDataset) -> None:
    rows = ds.interactions
    order = np.lexsort((rows["member_id"], rows["ts"]))
    assert np.array_equal(order, np.arange(len(rows)))


def test_interactions_after_post_creation(ds: DemoDataset) -> None:
    created = np.array([p.created_at for p in ds.posts])
    rows = ds.interactions
    assert (created[rows["post_id"] - 1] <= rows["ts"]).all()
    assert rows["ts"].min() >= ds.config.start_ts


def test_no_self_impressions_and_one_impression_per_pair(ds: DemoDataset) -> None:
    imp = _impressions(ds)
    author = np.array([p.author_id for p in ds.posts])
    assert (author[imp["post_id"] - 1] != imp["member_id"]).all()
    pairs = imp["member_id"] * 10_000 + imp["post_id"]
    assert len(np.unique(pairs)) == len(pairs)


def test_every_engagement_preceded_by_its_impression(ds: DemoDataset) -> None:
    imp = _impressions(ds)
    eng = _engagements(ds)
    assert len(eng) > 0
    key_imp = imp["member_id"] * 10_000 + imp["post_id"]
    order = np.argsort(key_imp)
    key_eng = eng["member_id"] * 10_000 + eng["post_id"]
    pos = np.searchsorted(key_imp[order], key_eng)
    pos = np.minimum(pos, len(order) - 1)
    assert (key_imp[order][pos] == key_eng).all()
    imp_ts = imp["ts"][order][pos]
    assert (imp_ts < eng["ts"]).all()
    assert (eng["ts"] - imp_ts < 3600).all()  # same session


def test_member_timeline_is_sequential(ds: DemoDataset) -> None:
    """A member's impressions never share a timestamp: sessions do not overlap."""
    imp = _impressions(ds)
    order = np.lexsort((imp["ts"], imp["member_id"]))
    mem, ts = imp["member_id"][order], imp["ts"][order]
    same = mem[1:] == mem[:-1]
    assert (ts[1:][same] > ts[:-1][same]).all()


def test_engagements_come_before_the_next_impression(ds: DemoDataset) -> None:
    """In a member's time-ordered log, each engagement is on the latest impression's post."""
    rows = ds.interactions
    rows = rows[np.lexsort((rows["action"], rows["ts"], rows["member_id"]))]
    is_imp = rows["action"] == IMPRESSION
    latest = np.maximum.accumulate(np.where(is_imp, np.arange(len(rows)), -1))
    eng = ~is_imp
    assert (latest[eng] >= 0).all()
    assert np.array_equal(rows["post_id"][eng], rows["post_id"][latest[eng]])
    assert np.array_equal(rows["member_id"][eng], rows["member_id"][latest[eng]])


def test_dwell_only_on_dwell_actions(ds: DemoDataset) -> None:
    rows = ds.interactions
    dwell = rows["action"] == int(Action.dwell)
    assert (rows["dwell_ms"][dwell] > 0).all()
    assert (rows["dwell_ms"][~dwell] == 0).all()


def test_scale_with_defaults(ds: DemoDataset) -> None:
    n = len(ds.members)
    per_member_imp = len(_impressions(ds)) / n
    per_member_eng = len(_engagements(ds)) / n
    assert 30 <= per_member_imp <= 80
    assert 8 <= per_member_eng <= 25
    assert len(np.unique(ds.interactions["member_id"])) > 0.8 * n


def test_engagement_concentrated_on_affine_topics(ds: DemoDataset) -> None:
    topic_ids = ds.post_topic_ids()
    top2 = np.argsort(-ds.affinities, axis=1)[:, :2]

    def share_on_top2(rows: np.ndarray) -> float:
        t = topic_ids[rows["post_id"] - 1]
        return float((top2[rows["member_id"] - 1] == t[:, None]).any(axis=1).mean())

    base = share_on_top2(_impressions(ds))
    engaged = share_on_top2(_engagements(ds))
    assert engaged > 0.85
    assert engaged > base + 0.3
    # per member too: most members engage mostly with their own top topics
    assert ds.member_top_topics(1, n=2) == [ds.topics[int(i)] for i in top2[0]]


def test_engagement_rate_rises_with_affinity(ds: DemoDataset) -> None:
    imp = _impressions(ds)
    eng = _engagements(ds)
    engaged_pairs = set(zip(eng["member_id"].tolist(), eng["post_id"].tolist(), strict=True))
    topic_ids = ds.post_topic_ids()
    aff = ds.affinities[imp["member_id"] - 1, topic_ids[imp["post_id"] - 1]]
    hit = np.array(
        [(m, p) in engaged_pairs for m, p in zip(imp["member_id"], imp["post_id"], strict=True)]
    )
    low, high = hit[aff < 0.05].mean(), hit[aff > 0.4].mean()
    assert high > 5 * low


def test_demographics_do_not_drive_engagement(ds: DemoDataset) -> None:
    n = len(ds.members)
    imp = np.bincount(_impressions(ds)["member_id"], minlength=n + 1)[1:]
    eng = np.bincount(_engagements(ds)["member_id"], minlength=n + 1)[1:]
    active = imp >= 5
    rate = eng[active] / imp[active]
    genders = np.array([m.demographics.gender for m in ds.members])[active]
    means = {g: rate[genders == g].mean() for g in ("female", "male")}
    assert abs(means["female"] - means["male"]) < 0.1
    bands = sorted({m.demographics.age_band or "" for m in ds.members})
    age = np.array([bands.index(m.demographics.age_band or "") for m in ds.members])[active]
    assert abs(np.corrcoef(age, rate)[0, 1]) < 0.15
    # nor topics: gender is not tied to the member's main topic
    main = ds.affinities.argmax(axis=1)[active]
    female_share = [(genders[main == t] == "female").mean() for t in range(12) if (main == t).sum()]
    assert max(female_share) - min(female_share) < 0.5


def test_engagement_counts(ds: DemoDataset) -> None:
    counts = ds.engagement_counts()
    assert set(counts) == set(COUNT_KINDS)
    rows = ds.interactions
    for action, kind in ACTION_TO_COUNT.items():
        arr = counts[kind]
        assert arr.dtype == np.int64 and arr.shape == (len(ds.posts),)
        sel = rows["post_id"][rows["action"] == int(action)]
        expected = np.bincount(sel, minlength=len(ds.posts) + 1)[1:]
        assert np.array_equal(arr, expected)
    assert counts["views"].sum() == len(_impressions(ds))


def test_member_top_topics(ds: DemoDataset) -> None:
    top = ds.member_top_topics(3, n=3)
    assert len(top) == 3 and len(set(top)) == 3
    row = ds.affinities[2]
    assert top[0] == ds.topics[int(row.argmax())]
    with pytest.raises(KeyError):
        ds.member_top_topics(0)
    with pytest.raises(KeyError):
        ds.member_top_topics(len(ds.members) + 1)


def test_histories(ds: DemoDataset) -> None:
    hist = ds.histories()
    assert set(hist) == {m.member_id for m in ds.members}
    assert sum(len(h) for h in hist.values()) == len(ds.interactions)
    h = hist[int(ds.interactions["member_id"][0])]
    assert h.dtype == HISTORY_DTYPE
    assert (np.diff(h["ts"]) >= 0).all()


def test_iter_interactions_small() -> None:
    small = generate(DemoConfig(members=10, posts=20, seed=2))
    records = list(small.iter_interactions())
    assert len(records) == len(small.interactions)
    if records:
        first = records[0]
        assert first.member_id == small.interactions["member_id"][0]
        assert first.action == Action(int(small.interactions["action"][0]))


def test_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    generate(DemoConfig(members=20, posts=30, seed=1), progress=True)
    assert "members" in capsys.readouterr().err


def test_config_is_frozen() -> None:
    cfg = DemoConfig(members=5, posts=5, seed=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.members = 6  # type: ignore[misc]
