"""The generative-recommender evaluation protocol of ``meta-recsys/generative-recommenders``.

As pure functions over :class:`~feedserve.data.sequences.SequenceData`:

* **leave-one-out by timestamp** (:func:`leave_one_out`): each user's last event is the test
  target; training uses the sequence without it (no separate validation item);
* the query is the user's training sequence **truncated to the most recent** ``max_len``
  (200) events, left-padded (:func:`history_arrays`);
* **full ranking over every item** of the catalogue (never-rated ones included), with the
  user's (truncated) history items filtered out (:func:`ranks_from_scores`);
* metrics (:func:`ranking_metrics`): HR@K (rank ≤ K), NDCG@K (``1/log2(rank+1)``, a single
  target), MRR (``1/rank``); ranks beyond the cut-off :data:`MAX_K` (2,500, as the reference)
  count as misses (``inf``).

Scores come from a model (the user embedding at the last history position · every item
embedding, :func:`model_ranks`) or from popularity (training-event counts,
:func:`popularity_ranks`). A rank is ``1 +`` the number of allowed items scoring strictly
higher than the target, so it does not depend on any top-k implementation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from feedserve.data.sequences import SequenceData

__all__ = [
    "KS",
    "MAX_K",
    "METRIC_NAMES",
    "LeaveOneOut",
    "SequenceScorer",
    "history_arrays",
    "leave_one_out",
    "left_pad",
    "model_ranks",
    "popularity_ranks",
    "popularity_scores",
    "rank_metrics",
    "ranking_metrics",
    "ranks_from_scores",
]

KS: tuple[int, ...] = (10, 50, 200)
MAX_K = 2500
"""Rank cut-off, as the reference's ``MAX_K``: a target ranked lower counts as a miss."""
METRIC_NAMES: tuple[str, ...] = (
    *(f"hr@{k}" for k in KS),
    *(f"ndcg@{k}" for k in KS),
    "mrr",
)


class SequenceScorer(Protocol):
    """What evaluation needs from a sequential model (``SequentialRecommender`` has it)."""

    def encode(
        self, items: Tensor, actions: Tensor, timestamps: Tensor, table: Tensor | None = None
    ) -> Tensor: ...

    def item_embeddings(self, ids: Tensor, table: Tensor | None = None) -> Tensor: ...


@dataclass(frozen=True)
class LeaveOneOut:
    """Each user's last event held out as the target; the rest is the training sequence."""

    n_items: int
    user_ids: np.ndarray
    items: list[np.ndarray]
    """Per user: the training sequence (every event but the last), oldest first."""
    actions: list[np.ndarray]
    timestamps: list[np.ndarray]
    targets: np.ndarray
    """Per user: the held-out last item (dense id)."""
    target_timestamps: np.ndarray

    @property
    def n_users(self) -> int:
        return len(self.targets)

    def subset(self, rows: Sequence[int] | np.ndarray) -> LeaveOneOut:
        """Only the users at positions ``rows`` (same catalogue)."""
        idx = [int(r) for r in rows]
        return LeaveOneOut(
            n_items=self.n_items,
            user_ids=self.user_ids[idx],
            items=[self.items[i] for i in idx],
            actions=[self.actions[i] for i in idx],
            timestamps=[self.timestamps[i] for i in idx],
            targets=self.targets[idx],
            target_timestamps=self.target_timestamps[idx],
        )


def leave_one_out(data: SequenceData) -> LeaveOneOut:
    """Split every user with at least two events: last event = target, the rest = training."""
    keep = [i for i, s in enumerate(data.items) if len(s) >= 2]
    return LeaveOneOut(
        n_items=data.n_items,
        user_ids=data.user_ids[keep],
        items=[data.items[i][:-1] for i in keep],
        actions=[data.actions[i][:-1] for i in keep],
        timestamps=[data.timestamps[i][:-1] for i in keep],
        targets=np.array([data.items[i][-1] for i in keep], dtype=np.int64),
        target_timestamps=np.array([data.timestamps[i][-1] for i in keep], dtype=np.int64),
    )


def left_pad(seqs: Sequence[np.ndarray], length: int) -> np.ndarray:
    """``[len(seqs), length]`` int64: each sequence's most recent ``length`` entries,
    right-aligned, left-padded with 0."""
    out = np.zeros((len(seqs), length), dtype=np.int64)
    for row, seq in enumerate(seqs):
        tail = np.asarray(seq[-length:] if length else seq[:0], dtype=np.int64)
        if len(tail):
            out[row, length - len(tail) :] = tail
    return out


def history_arrays(split: LeaveOneOut, max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The evaluation queries: items, actions, timestamps ``[U, max_len]``, left-padded."""
    return (
        left_pad(split.items, max_len),
        left_pad(split.actions, max_len),
        left_pad(split.timestamps, max_len),
    )


def ranks_from_scores(
    scores: np.ndarray, targets: np.ndarray, history: np.ndarray, max_k: int = MAX_K
) -> np.ndarray:
    """1-based rank of each target among the allowed items (float; ``inf`` = a miss).

    ``scores`` is ``[U, n_items + 1]`` (column 0, padding, is never ranked); ``history`` is
    ``[U, L]`` item ids (0 = padding) removed from the ranking. A target in its own history
    or ranked beyond ``max_k`` is a miss.
    """
    s = np.array(scores, dtype=np.float64, copy=True)
    rows = np.arange(len(s))[:, None]
    s[:, 0] = -np.inf
    s[rows, history] = -np.inf
    target_score = s[np.arange(len(s)), targets]
    ranks = 1.0 + (s > target_score[:, None]).sum(axis=1)
    ranks[~np.isfinite(target_score)] = np.inf
    ranks[ranks > max_k] = np.inf
    return ranks


def ranking_metrics(ranks: np.ndarray, ks: Sequence[int] = KS) -> dict[str, float]:
    """HR@K, NDCG@K for each K, and MRR (``inf`` ranks contribute 0)."""
    r = np.asarray(ranks, dtype=np.float64)
    if r.size == 0:
        return {**{f"hr@{k}": 0.0 for k in ks}, **{f"ndcg@{k}": 0.0 for k in ks}, "mrr": 0.0}
    out: dict[str, float] = {}
    for k in ks:
        out[f"hr@{k}"] = float(np.mean(r <= k))
    with np.errstate(divide="ignore"):
        gain = np.where(np.isfinite(r), 1.0 / np.log2(r + 1.0), 0.0)
        rr = np.where(np.isfinite(r), 1.0 / r, 0.0)
    for k in ks:
        out[f"ndcg@{k}"] = float(np.mean(np.where(r <= k, gain, 0.0)))
    out["mrr"] = float(np.mean(rr))
    return out


def popularity_scores(split: LeaveOneOut) -> np.ndarray:
    """``[n_items + 1]`` float64: training-event counts, ties broken by the lower item id
    (so the ranking is a strict order; never-seen items come last)."""
    counts = np.zeros(split.n_items + 1, dtype=np.float64)
    if split.items:
        np.add.at(counts, np.concatenate(split.items), 1.0)
    ids = np.arange(split.n_items + 1, dtype=np.float64)
    return counts * (split.n_items + 2) - ids


def popularity_ranks(
    split: LeaveOneOut, max_len: int, max_k: int = MAX_K, chunk: int = 512
) -> np.ndarray:
    """Ranks of the targets under the popularity ranking (history filtered)."""
    scores = popularity_scores(split)
    history = left_pad(split.items, max_len)
    out = [
        ranks_from_scores(
            np.broadcast_to(scores, (min(chunk, split.n_users - lo), len(scores))),
            split.targets[lo : lo + chunk],
            history[lo : lo + chunk],
            max_k,
        )
        for lo in range(0, split.n_users, chunk)
    ]
    return np.concatenate(out) if out else np.zeros(0)


@torch.no_grad()
def model_ranks(
    model: SequenceScorer,
    split: LeaveOneOut,
    max_len: int,
    *,
    batch_size: int = 256,
    max_k: int = MAX_K,
    device: str | torch.device = "cpu",
    table: Tensor | None = None,
) -> np.ndarray:
    """Ranks of the targets under ``model``: the encoding at the last history position
    (the queries are left-padded, so position ``-1``) · every item embedding (rows of
    ``table`` for a content-aware model, see ``SequentialRecommender.item_vectors``).

    The caller puts the model in eval mode (``model.eval()``) and on ``device``.
    """
    items, actions, ts = history_arrays(split, max_len)
    all_items = model.item_embeddings(torch.arange(split.n_items + 1, device=device), table)
    out: list[np.ndarray] = []
    for lo in range(0, split.n_users, batch_size):
        hi = lo + batch_size
        user = model.encode(
            torch.from_numpy(items[lo:hi]).to(device),
            torch.from_numpy(actions[lo:hi]).to(device),
            torch.from_numpy(ts[lo:hi]).to(device),
            table,
        )[:, -1, :]
        scores = (user @ all_items.T).float().cpu().numpy()
        out.append(ranks_from_scores(scores, split.targets[lo:hi], items[lo:hi], max_k))
    return np.concatenate(out) if out else np.zeros(0)


def rank_metrics(ranks: np.ndarray) -> dict[str, float]:
    """:func:`ranking_metrics` at the protocol's cut-offs :data:`KS` (``hr@10`` … ``mrr``)."""
    return ranking_metrics(ranks, KS)
