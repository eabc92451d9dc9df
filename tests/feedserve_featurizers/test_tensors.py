"""history_tensors: the ranker's input tensors from a member's history."""

from __future__ import annotations

import numpy as np
import pytest

from feedserve.contracts import Action
from feedserve.store.base import HISTORY_DTYPE
from feedserve_featurizers.tensors import (
    TIME_BUCKETS,
    engagements_only,
    history_tensors,
    time_gap_buckets,
)

KEYS = ("history_post_ids", "history_actions", "history_time_buckets")
T0 = 1_700_000_000


def history(rows: list[tuple[int, int, Action]]) -> np.ndarray:
    h = np.zeros(len(rows), dtype=HISTORY_DTYPE)
    for i, (post_id, ts, action) in enumerate(rows):
        h[i] = (post_id, ts, int(action))
    return h


def test_left_padding() -> None:
    h = history([(11, T0, Action.click), (12, T0 + 5, Action.like), (13, T0 + 6, Action.share)])
    out = history_tensors(h, 5)
    assert set(out) == set(KEYS)
    for key in KEYS:
        assert out[key].dtype == np.int64
        assert out[key].shape == (5,)
    assert out["history_post_ids"].tolist() == [0, 0, 11, 12, 13]
    assert out["history_actions"].tolist() == [0, 0, 2, 3, 5]
    # first event 0; gap 5 s → bucket 3 ([4, 8)); gap 1 s → bucket 1
    assert out["history_time_buckets"].tolist() == [0, 0, 0, 3, 1]


def test_exact_length_has_no_padding() -> None:
    h = history([(i, T0 + 10 * i, Action.comment) for i in range(1, 5)])
    out = history_tensors(h, 4)
    assert out["history_post_ids"].tolist() == [1, 2, 3, 4]
    assert (out["history_actions"] == int(Action.comment)).all()


def test_truncation_keeps_the_last_events() -> None:
    h = history([(100 + i, T0 + 2**i, Action.click) for i in range(10)])
    out = history_tensors(h, 4)
    assert out["history_post_ids"].tolist() == [106, 107, 108, 109]
    # the first kept event still knows the gap to the event before it (2^6 - 2^5 = 32 s)
    assert out["history_time_buckets"].tolist() == [6, 7, 8, 9]
    assert out["history_time_buckets"][0] != 0


def test_impressions_are_dropped() -> None:
    h = history(
        [
            (1, T0, Action.impression),
            (2, T0 + 1, Action.click),
            (3, T0 + 2, Action.impression),
            (4, T0 + 3, Action.impression),
            (5, T0 + 9, Action.dwell),
            (6, T0 + 10, Action.impression),
        ]
    )
    assert engagements_only(h)["post_id"].tolist() == [2, 5]
    out = history_tensors(h, 4)
    assert out["history_post_ids"].tolist() == [0, 0, 2, 5]
    assert out["history_actions"].tolist() == [0, 0, int(Action.click), int(Action.dwell)]
    # gaps are measured between engagements (8 s → bucket 4), not to the impressions between
    assert out["history_time_buckets"].tolist() == [0, 0, 0, 4]
    assert int(Action.impression) not in out["history_actions"].tolist()


def test_only_impressions_is_an_empty_history() -> None:
    h = history([(1, T0, Action.impression), (2, T0 + 1, Action.impression)])
    out = history_tensors(h, 3)
    for key in KEYS:
        assert out[key].tolist() == [0, 0, 0]


def test_empty_history() -> None:
    out = history_tensors(np.zeros(0, dtype=HISTORY_DTYPE), 6)
    for key in KEYS:
        assert out[key].shape == (6,)
        assert out[key].dtype == np.int64
        assert not out[key].any()


@pytest.mark.parametrize("length", [0, -3])
def test_length_must_be_positive(length: int) -> None:
    with pytest.raises(ValueError):
        history_tensors(np.zeros(0, dtype=HISTORY_DTYPE), length)


def test_time_gap_buckets_first_event_and_small_gaps() -> None:
    assert time_gap_buckets(np.zeros(0, np.int64)).tolist() == []
    assert time_gap_buckets(np.array([T0])).tolist() == [0]
    ts = T0 + np.cumsum([0, 0, 1, 2, 3, 4, 7, 8, 1000])
    # gaps:         0  1  2  3  4  7  8  1000
    assert time_gap_buckets(ts).tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 10]


def test_equal_timestamps_are_bucket_one_not_zero() -> None:
    out = time_gap_buckets(np.full(4, T0))
    assert out.tolist() == [0, 1, 1, 1]  # 0 means "no previous event" only


def test_out_of_order_timestamps_count_as_no_gap() -> None:
    # -500 s → no gap (bucket 1); then 510 s → bucket 9 ([256, 512))
    assert time_gap_buckets(np.array([T0, T0 - 500, T0 + 10])).tolist() == [0, 1, 9]


def test_bucket_bounds_for_every_level() -> None:
    gaps = np.unique(np.concatenate([2 ** np.arange(40), 2 ** np.arange(40) - 1, [3, 5, 6]]))
    gaps = gaps[gaps >= 1]
    for gap in gaps.tolist():
        b = int(time_gap_buckets(np.array([0, gap]))[1])
        if b < TIME_BUCKETS - 1:
            assert 2 ** (b - 1) <= gap < 2**b, (gap, b)
        else:
            assert gap >= 2 ** (TIME_BUCKETS - 2), (gap, b)


def test_huge_gaps_are_clipped() -> None:
    out = time_gap_buckets(np.array([0, 2**31, 2**31 + 2**60, 2**62]))
    assert out.tolist() == [0, TIME_BUCKETS - 1, TIME_BUCKETS - 1, TIME_BUCKETS - 1]
    h = history([(1, 0, Action.like), (2, 2**50, Action.like)])
    assert history_tensors(h, 2)["history_time_buckets"].max() == TIME_BUCKETS - 1


def test_inputs_are_not_modified() -> None:
    h = history([(i, T0 + i, Action.click) for i in range(1, 6)])
    before = h.copy()
    out = history_tensors(h, 3)
    out["history_post_ids"][:] = -1
    np.testing.assert_array_equal(h, before)
