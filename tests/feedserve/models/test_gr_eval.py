"""The reference evaluation protocol on hand-made sequences and scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor

from feedserve.data.sequences import SequenceData, from_events
from feedserve.models.gr_eval import (
    MAX_K,
    METRIC_NAMES,
    history_arrays,
    leave_one_out,
    left_pad,
    model_ranks,
    popularity_ranks,
    popularity_scores,
    rank_metrics,
    ranking_metrics,
    ranks_from_scores,
)


def toy() -> SequenceData:
    # user 1: items 1,2,3 then 4 (target); user 2: 2,3 then 1; user 3: a single event
    return from_events(
        "toy",
        catalogue=[1, 2, 3, 4, 5],
        users=np.array([1, 1, 1, 1, 2, 2, 2, 3]),
        items=np.array([1, 2, 3, 4, 2, 3, 1, 5]),
        actions=np.full(8, 2),
        timestamps=np.array([1, 2, 3, 4, 1, 2, 3, 1]),
    )


def test_leave_one_out_holds_out_the_last_event() -> None:
    split = leave_one_out(toy())
    assert list(split.user_ids) == [1, 2]  # a single-event user has nothing to train on
    assert [list(s) for s in split.items] == [[1, 2, 3], [2, 3]]
    assert list(split.targets) == [4, 1]
    assert list(split.target_timestamps) == [4, 3]
    sub = split.subset([1])
    assert list(sub.targets) == [1] and sub.n_items == 5


def test_left_pad_keeps_the_most_recent() -> None:
    out = left_pad([np.array([1, 2, 3, 4]), np.array([7]), np.array([], dtype=np.int64)], 3)
    assert out.tolist() == [[2, 3, 4], [0, 0, 7], [0, 0, 0]]
    split = leave_one_out(toy())
    items, actions, ts = history_arrays(split, 2)
    assert items.tolist() == [[2, 3], [2, 3]] and ts.tolist() == [[2, 3], [1, 2]]
    assert actions.shape == (2, 2)


def test_ranks_filter_history_and_padding() -> None:
    scores = np.array(
        [
            [9.0, 5.0, 4.0, 3.0, 2.0, 1.0],  # padding column would be first: ignored
            [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
        ]
    )
    history = np.array([[0, 1], [5, 4]])
    ranks = ranks_from_scores(scores, np.array([3, 3]), history)
    # row 0: allowed 2 (4.0), 3 (3.0) ... → rank 2; row 1: 5 and 4 filtered → rank 1
    assert ranks.tolist() == [2.0, 1.0]
    # a target inside its own history is a miss; so is one beyond the cut-off
    assert ranks_from_scores(scores[:1], np.array([1]), history[:1]).tolist() == [math.inf]
    assert ranks_from_scores(scores[:1], np.array([5]), history[:1], max_k=2)[0] == math.inf


def test_metrics_by_hand() -> None:
    ranks = np.array([1.0, 3.0, 60.0, math.inf])
    m = ranking_metrics(ranks, (1, 10, 100))
    assert m["hr@1"] == 0.25 and m["hr@10"] == 0.5 and m["hr@100"] == 0.75
    assert m["ndcg@10"] == pytest.approx((1.0 + 1 / math.log2(4)) / 4)
    assert m["ndcg@100"] == pytest.approx((1.0 + 0.5 + 1 / math.log2(61)) / 4)
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 60) / 4)
    assert tuple(rank_metrics(ranks)) == METRIC_NAMES
    assert all(v == 0.0 for v in ranking_metrics(np.zeros(0)).values())
    assert MAX_K == 2500


def test_popularity_counts_training_events_only() -> None:
    split = leave_one_out(toy())
    scores = popularity_scores(split)
    # training counts: item 2: 2, item 3: 2, item 1: 1, items 4, 5: 0 (targets not counted)
    order = np.argsort(-scores[1:]) + 1
    assert order.tolist() == [2, 3, 1, 4, 5]
    # user 1 (history 1,2,3): target 4 is the first allowed item; user 2 (2,3): target 1 too
    assert popularity_ranks(split, max_len=200).tolist() == [1.0, 1.0]
    # with history truncated to 1 item, user 1's items 1 and 2 come back before item 4
    assert popularity_ranks(split, max_len=1).tolist() == [3.0, 2.0]


class Lookup:
    """A fake model: the user vector is the one-hot of the next item after the last one."""

    def __init__(self, n_items: int, successor: dict[int, int]) -> None:
        self.n, self.successor = n_items, successor

    def encode(
        self, items: Tensor, actions: Tensor, timestamps: Tensor, table: Tensor | None = None
    ) -> Tensor:
        out = torch.zeros(*items.shape, self.n + 1)
        for b in range(items.shape[0]):
            for pos in range(items.shape[1]):
                nxt = self.successor.get(int(items[b, pos]), 0)
                out[b, pos, nxt] = 1.0
        return out

    def item_embeddings(self, ids: Tensor, table: Tensor | None = None) -> Tensor:
        return torch.nn.functional.one_hot(ids, self.n + 1).float()


def test_model_ranks_use_the_last_position() -> None:
    split = leave_one_out(toy())
    perfect = Lookup(5, {3: 4})  # after 3 comes 4 (user 1) — user 2's target 1 is not known
    ranks = model_ranks(perfect, split, max_len=200, batch_size=1)
    assert ranks[0] == 1.0 and ranks[1] > 1.0
    both = Lookup(5, {3: 1})
    assert model_ranks(both, split, max_len=200)[1] == 1.0
