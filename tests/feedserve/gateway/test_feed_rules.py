"""Pure feed logic: candidate merging with quotas and the author-diversity rule."""

from __future__ import annotations

from feedserve.gateway.feed import diversify, merge_candidates, rank_scores


def test_merge_respects_quotas_order_and_lists_every_source() -> None:
    sources = {
        "popular": [(5, 1.0), (6, 0.9), (7, 0.8)],
        "ebr": [(1, 0.9), (2, 0.8), (5, 0.7), (3, 0.6)],
        "fresh": [(2, 1.0), (8, 0.5)],
    }
    merged = merge_candidates(sources, {"ebr": 3, "popular": 2, "fresh": 5})
    assert [c.post_id for c in merged] == [1, 2, 5, 6, 7, 8]
    by_id = {c.post_id: c for c in merged}
    assert by_id[5].sources == ["ebr", "popular"]  # proposed by both, listed once
    assert by_id[2].sources == ["ebr", "fresh"]
    assert by_id[1].retrieval_score == 0.9
    assert 3 not in by_id  # beyond the ebr quota of 3


def test_merge_excludes_seen_and_invalid_ids() -> None:
    merged = merge_candidates({"ebr": [(1, 1.0), (0, 0.9), (2, 0.8)]}, {"ebr": 10}, exclude={2})
    assert [c.post_id for c in merged] == [1]


def test_merge_keeps_unknown_sources_after_known_ones() -> None:
    merged = merge_candidates({"zeta": [(9, 1.0)], "ebr": [(1, 1.0)]}, {"ebr": 5, "zeta": 5})
    assert [c.post_id for c in merged] == [1, 9]


def test_rank_scores_descend_in_unit_interval() -> None:
    scored = rank_scores([10, 20, 30, 40])
    assert [p for p, _ in scored] == [10, 20, 30, 40]
    values = [s for _, s in scored]
    assert values == sorted(values, reverse=True) and values[0] == 1.0 and values[-1] > 0
    assert rank_scores([]) == []


def test_diversify_caps_authors_and_backfills_when_short() -> None:
    author = {1: 100, 2: 100, 3: 100, 4: 200, 5: 300}
    assert diversify([1, 2, 3, 4, 5], author, max_per_author=2, count=4) == [1, 2, 4, 5]
    # only one author: the page is short, so held-back posts fill it in order
    assert diversify([1, 2, 3], author, max_per_author=1, count=3) == [1, 2, 3]
    assert diversify([1, 2, 3], author, max_per_author=1, count=2) == [1, 2]
    assert diversify([1, 4, 2, 5], author, max_per_author=1, count=3) == [1, 4, 5]
