"""Percentile buckets: thresholds, lookups, tokens and persistence."""

from __future__ import annotations

import json
import re
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from feedserve.contracts import COUNT_KINDS, EngagementCounts
from feedserve.prompts import PERCENTILE_GRID, BucketTable, bucket_token, special_tokens


def brute_threshold(values: np.ndarray, level: int) -> int:
    """Smallest c with #(values < c) >= level% of n, by trying every c."""
    n = values.size
    c = 0
    while 100 * int((values < c).sum()) < level * n:
        c += 1
    return c


def brute_bucket(values: np.ndarray, count: int) -> int:
    n = values.size
    below = int((values < count).sum())
    return max(p for p in PERCENTILE_GRID if 100 * below >= p * n)


def test_grid_is_the_documented_one() -> None:
    assert PERCENTILE_GRID == (0, 10, 25, 50, 75, 90, 95, 99)


def test_hand_computed_thresholds_and_buckets() -> None:
    corpus = np.array([0, 0, 0, 0, 0, 0, 1, 2, 3, 10])
    table = BucketTable.fit({"likes": corpus})
    assert table.thresholds["likes"] == [0, 1, 1, 1, 3, 4, 11, 11]
    assert table.bucket("likes", 0) == 0
    assert table.bucket("likes", 1) == 50  # 60% of the corpus is strictly below 1
    assert table.bucket("likes", 2) == 50
    assert table.bucket("likes", 3) == 75
    assert table.bucket("likes", 10) == 90
    assert table.bucket("likes", 11) == 99


@pytest.mark.parametrize("seed", range(6))
def test_thresholds_match_definition_on_random_corpora(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    corpus = rng.geometric(float(rng.uniform(0.05, 0.9)), n) - 1
    if seed % 2:
        corpus[: n // 2] = 0  # mostly zeros
    table = BucketTable.fit({"views": corpus})
    thr = table.thresholds["views"]
    assert thr == [brute_threshold(corpus, p) for p in PERCENTILE_GRID]
    assert thr[0] == 0
    assert all(a <= b for a, b in pairwise(thr))
    for count in range(int(corpus.max()) + 5):
        assert table.bucket("views", count) == brute_bucket(corpus, count)


def test_mostly_zero_corpus() -> None:
    corpus = np.zeros(1000, dtype=np.int64)
    corpus[:30] = np.arange(1, 31)  # 97% zeros
    table = BucketTable.fit({"shares": corpus})
    assert table.bucket("shares", 0) == 0
    assert table.bucket("shares", 1) == 95  # 97% of posts are strictly below 1
    assert table.bucket("shares", 10) == 95
    assert table.bucket("shares", 30) == 99
    assert table.token("shares", 0) == "<shares_p0>"


def test_all_zero_corpus() -> None:
    table = BucketTable.fit({"comments": np.zeros(50, dtype=np.int64)})
    assert table.thresholds["comments"] == [0, 1, 1, 1, 1, 1, 1, 1]
    assert table.bucket("comments", 0) == 0
    assert table.bucket("comments", 1) == 99


def test_unseen_values_above_max_and_in_gaps() -> None:
    corpus = np.array([0, 5, 5, 5, 100, 100, 100, 100, 1000, 1000])
    table = BucketTable.fit({"views": corpus})
    assert table.bucket("views", 10**12) == 99  # far above the corpus max
    assert table.bucket("views", 1001) == 99
    # 50 and 7 were never seen: they fall in the band of the values below them
    assert table.bucket("views", 50) == table.bucket("views", 6)
    assert table.bucket("views", 7) == brute_bucket(corpus, 7)
    many = table.bucket_many("views", np.array([7, 50, 99, 101, 999, 10**12]))
    assert many.tolist() == [brute_bucket(corpus, c) for c in [7, 50, 99, 101, 999, 10**12]]


def test_empty_corpus_gives_zero_thresholds() -> None:
    table = BucketTable.fit({kind: np.array([], dtype=np.int64) for kind in COUNT_KINDS})
    for kind in COUNT_KINDS:
        assert table.thresholds[kind] == [0] * len(PERCENTILE_GRID)
        assert table.bucket(kind, 0) == 99
        assert table.bucket_many(kind, np.array([0, 3])).tolist() == [99, 99]
        assert table.bucket_many(kind, np.array([], dtype=np.int64)).shape == (0,)


def test_negative_counts_rejected() -> None:
    table = BucketTable.fit({"likes": np.arange(10)})
    with pytest.raises(ValueError, match="likes"):
        table.bucket("likes", -1)
    with pytest.raises(ValueError, match="likes"):
        table.token("likes", -1)
    with pytest.raises(ValueError, match="likes"):
        table.bucket_many("likes", np.array([3, -2, 5]))
    with pytest.raises(ValueError, match=">= 0"):
        BucketTable.fit({"likes": np.array([1, -1])})


def test_non_integer_corpus_rejected() -> None:
    with pytest.raises(ValueError, match="whole numbers"):
        BucketTable.fit({"likes": np.array([1.0, 2.5])})
    whole = BucketTable.fit({"likes": np.array([0.0, 1.0, 2.0, 3.0])})
    assert whole.thresholds == BucketTable.fit({"likes": np.array([0, 1, 2, 3])}).thresholds


def test_unknown_kind_is_a_clear_key_error() -> None:
    table = BucketTable.fit({"likes": np.arange(10)})
    for call in (
        lambda: table.bucket("reposts", 1),
        lambda: table.token("reposts", 1),
        lambda: table.bucket_many("reposts", np.array([1])),
    ):
        with pytest.raises(KeyError, match=r"unknown count kind 'reposts'.*likes"):
            call()


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint32, np.uint64, np.float64])
def test_bucket_many_equals_bucket(dtype: type) -> None:
    rng = np.random.default_rng(7)
    corpus = np.concatenate([np.zeros(600, dtype=np.int64), rng.geometric(0.02, 400)])
    table = BucketTable.fit({"views": corpus})
    probe = np.concatenate(
        [
            np.arange(0, int(corpus.max()) + 3),
            np.array(table.thresholds["views"]),
            np.array(table.thresholds["views"]) - 1 + (np.array(table.thresholds["views"]) == 0),
            np.array([10**9]),
        ]
    ).astype(dtype)
    many = table.bucket_many("views", probe)
    assert many.dtype == np.int64
    assert many.tolist() == [table.bucket("views", int(c)) for c in probe]
    grid2d = probe[: (probe.size // 4) * 4].reshape(4, -1)
    assert table.bucket_many("views", grid2d).shape == grid2d.shape


def test_token_format() -> None:
    table = BucketTable.fit({kind: np.arange(100) for kind in COUNT_KINDS})
    assert table.token("likes", 95) == "<likes_p95>"
    assert table.token("views", 0) == "<views_p0>"
    assert table.token("comments", 10**6) == "<comments_p99>"
    assert bucket_token("shares", 50) == "<shares_p50>"
    pattern = re.compile(r"^<(views|likes|comments|shares)_p(0|10|25|50|75|90|95|99)>$")
    tokens = set(special_tokens())
    for kind in COUNT_KINDS:
        for count in range(0, 120):
            token = table.token(kind, count)
            assert pattern.match(token)
            assert token in tokens


def test_special_tokens_are_stable() -> None:
    tokens = special_tokens()
    assert tokens[:9] == [
        "<views_p0>",
        "<views_p10>",
        "<views_p25>",
        "<views_p50>",
        "<views_p75>",
        "<views_p90>",
        "<views_p95>",
        "<views_p99>",
        "<likes_p0>",
    ]
    assert tokens[-1] == "<shares_p99>"
    assert len(tokens) == len(set(tokens)) == len(COUNT_KINDS) * len(PERCENTILE_GRID)
    assert tokens == special_tokens()
    assert tokens == [f"<{k}_p{p}>" for k in COUNT_KINDS for p in PERCENTILE_GRID]
    table = BucketTable.fit({kind: np.arange(3) for kind in COUNT_KINDS})
    assert table.special_tokens() == tokens


def test_save_load_roundtrip(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    table = BucketTable.fit({kind: rng.geometric(0.1, 500) - 1 for kind in COUNT_KINDS})
    path = tmp_path / "buckets.json"
    table.save(path)
    raw = json.loads(path.read_text())
    assert raw["version"] == 1
    assert raw["grid"] == list(PERCENTILE_GRID)
    assert set(raw["thresholds"]) == set(COUNT_KINDS)
    loaded = BucketTable.load(path)
    assert loaded == table
    probe = np.arange(200)
    for kind in COUNT_KINDS:
        assert loaded.bucket_many(kind, probe).tolist() == table.bucket_many(kind, probe).tolist()


def test_fit_engagement_matches_fit() -> None:
    records = [
        EngagementCounts(views=i * 3, likes=i % 4, comments=0, shares=i // 5) for i in range(40)
    ]
    table = BucketTable.fit_engagement(records)
    cols = {k: np.array([r.get(k) for r in records]) for k in COUNT_KINDS}
    assert table.thresholds == BucketTable.fit(cols).thresholds


@pytest.mark.parametrize(
    "thresholds",
    [
        {"likes": [0, 1, 1, 1, 3, 2, 11, 11]},  # decreasing
        {"likes": [1, 1, 1, 1, 3, 4, 11, 11]},  # p0 threshold not 0
        {"likes": [0, 1, 2]},  # wrong length
        {"Likes!": [0] * 8},  # kind that would make a malformed token
    ],
)
def test_invalid_tables_rejected(thresholds: dict[str, list[int]]) -> None:
    with pytest.raises(ValidationError):
        BucketTable(thresholds=thresholds)


def test_invalid_grid_rejected() -> None:
    with pytest.raises(ValidationError):
        BucketTable(grid=(10, 50), thresholds={})
    with pytest.raises(ValidationError):
        BucketTable(grid=(0, 50, 50), thresholds={})
