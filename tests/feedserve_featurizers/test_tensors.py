"""history_tensors: the ranker's input tensors from a member's history."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from feedserve.contracts import Action
from feedserve.data.io import read_dataset
from feedserve.data.sequences import dataset_sequences
from feedserve.store.base import HISTORY_DTYPE
from feedserve_featurizers.tensors import (
    TENSOR_NAMES,
    engagements_only,
    history_tensors,
    ranker_events,
)

KEYS = ("history_post_ids", "history_actions", "history_timestamps")
T0 = 1_700_000_000


def history(rows: list[tuple[int, int, Action]]) -> np.ndarray:
    h = np.zeros(len(rows), dtype=HISTORY_DTYPE)
    for i, (post_id, ts, action) in enumerate(rows):
        h[i] = (post_id, ts, int(action))
    return h


def test_left_padding() -> None:
    h = history([(11, T0, Action.click), (12, T0 + 5, Action.like), (13, T0 + 6, Action.share)])
    out = history_tensors(h, 5)
    assert set(out) == set(KEYS) == set(TENSOR_NAMES)
    for key in KEYS:
        assert out[key].dtype == np.int64
        assert out[key].shape == (5,)
    assert out["history_post_ids"].tolist() == [0, 0, 11, 12, 13]
    assert out["history_actions"].tolist() == [0, 0, 2, 3, 5]
    assert out["history_timestamps"].tolist() == [0, 0, T0, T0 + 5, T0 + 6]


def test_exact_length_has_no_padding() -> None:
    h = history([(i, T0 + 10 * i, Action.comment) for i in range(1, 5)])
    out = history_tensors(h, 4)
    assert out["history_post_ids"].tolist() == [1, 2, 3, 4]
    assert (out["history_actions"] == int(Action.comment)).all()


def test_truncation_keeps_the_last_events() -> None:
    h = history([(100 + i, T0 + 2**i, Action.click) for i in range(10)])
    out = history_tensors(h, 4)
    assert out["history_post_ids"].tolist() == [106, 107, 108, 109]
    assert out["history_timestamps"].tolist() == [T0 + 2**i for i in range(6, 10)]


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
    assert out["history_timestamps"].tolist() == [0, 0, T0 + 1, T0 + 9]


def test_one_event_per_post_first_time_strongest_action() -> None:
    h = history(
        [
            (7, T0, Action.impression),
            (7, T0 + 2, Action.click),
            (8, T0 + 3, Action.like),
            (7, T0 + 5, Action.share),  # 7 again: stays at its first engagement, now a share
            (8, T0 + 6, Action.click),  # weaker than the like: the like stays
            (9, T0 + 8, Action.dwell),
        ]
    )
    events = ranker_events(h)
    assert events["post_id"].tolist() == [7, 8, 9]
    assert events["ts"].tolist() == [T0 + 2, T0 + 3, T0 + 8]
    assert events["action"].tolist() == [int(Action.share), int(Action.like), int(Action.dwell)]
    # dwell ranks between click and like
    h2 = history([(1, T0, Action.dwell), (1, T0 + 1, Action.click)])
    assert ranker_events(h2)["action"].tolist() == [int(Action.dwell)]


def test_out_of_order_rows_are_sorted_by_time() -> None:
    h = history([(2, T0 + 10, Action.click), (1, T0, Action.like), (2, T0 + 1, Action.like)])
    events = ranker_events(h)
    assert events["post_id"].tolist() == [1, 2]
    assert events["ts"].tolist() == [T0, T0 + 1]


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


def test_inputs_are_not_modified() -> None:
    h = history([(i, T0 + i, Action.click) for i in range(1, 6)] + [(1, T0 + 9, Action.like)])
    before = h.copy()
    out = history_tensors(h, 3)
    out["history_post_ids"][:] = -1
    np.testing.assert_array_equal(h, before)


def test_serving_tensors_equal_the_training_sequences(small_data: Path) -> None:
    """What the featurizer sends for a member = that member's training sequence (the build
    trains the ranker on ``dataset_sequences(include_impressions=False)``)."""
    ds = read_dataset(small_data)
    seqs = dataset_sequences(ds, include_impressions=False)
    histories = ds.histories()
    checked = 0
    for row, member in enumerate(seqs.user_ids.tolist()):
        length = 64
        out = history_tensors(histories[member], length)
        items = seqs.item_ids[seqs.items[row]][-length:]
        n = len(items)
        assert out["history_post_ids"][-n:].tolist() == items.tolist(), member
        assert out["history_actions"][-n:].tolist() == seqs.actions[row][-length:].tolist()
        assert out["history_timestamps"][-n:].tolist() == seqs.timestamps[row][-length:].tolist()
        assert not out["history_post_ids"][:-n].any()
        checked += 1
    assert checked > 100
