"""Per-user interaction sequences for the sequential (generative) recommender.

Three sources, one shape (:class:`SequenceData`):

* ``ml-100k``: ``u.data`` (tab-separated ``user item rating ts``); the catalogue is every item
  of ``u.item`` (1,682);
* ``ml-latest-small``: ``ratings.csv`` through :func:`feedserve.data.movielens.load_movielens`;
  the catalogue is every movie of ``movies.csv`` (9,742, never-rated ones included);
* ``demo``: the project's synthetic data set (``feedserve demo-data``), read with
  :func:`feedserve.data.io.read_dataset`; the catalogue is every post.

MovieLens files are read from ``../shared/data`` (or a path given by the caller) and never
copied: they may be used for research and testing but not redistributed.

Each user's events are sorted by timestamp, ties in file order (a stable sort). Item ids are
remapped to a dense ``1..n_items`` in the order of the raw ids (``0`` is padding);
:attr:`SequenceData.item_ids` keeps the mapping. Action ids are the
:class:`~feedserve.contracts.Action` codes ``1..6`` (``0`` is padding): a rating is ``like``
from 4 stars up and ``click`` below (:func:`~feedserve.data.movielens.rating_action`, every
rating is an engagement). The demo data set logs several rows per (member, post) — an
impression, then perhaps a click and a like; :func:`demo_sequences` keeps **one event per
(member, post)**: at the time of its first kept row, with the strongest of its actions
(:data:`ACTION_STRENGTH`), so that a next-item target never repeats a history item.
Impressions are kept by default (the feed's history, as the ranker sees it: action id 1 says
"shown, not engaged"); ``include_impressions=False`` keeps engagements only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from feedserve.contracts import ACTION_STRENGTH, Action
from feedserve.data.movielens import (
    LIKE_THRESHOLD,
    RATING_DTYPE,
    default_movielens_dir,
    load_movielens,
)
from feedserve.data.synthetic import DemoDataset

__all__ = [
    "ACTION_STRENGTH",
    "DATASETS",
    "DatasetName",
    "SequenceData",
    "SequenceDataError",
    "dataset_sequences",
    "default_sequence_dir",
    "demo_sequences",
    "from_events",
    "load_sequences",
    "ml100k_sequences",
    "ml_latest_small_sequences",
    "rating_actions",
]

DatasetName = Literal["ml-100k", "ml-latest-small", "demo"]
DATASETS: tuple[str, ...] = get_args(DatasetName)
N_ACTIONS = max(int(a) for a in Action) + 1
"""Action ids ``0..6``: ``0`` padding, ``1..6`` the :class:`Action` codes."""


class SequenceDataError(FileNotFoundError):
    """A data directory or one of its files is missing, or a data set name is unknown."""


@dataclass(frozen=True)
class SequenceData:
    """Users' interaction sequences over a dense item catalogue ``1..n_items``."""

    name: str
    item_ids: np.ndarray
    """Dense id → raw id (``item_ids[0] == 0`` is padding); length ``n_items + 1``."""
    user_ids: np.ndarray
    """Raw user id of each sequence, ascending."""
    items: list[np.ndarray]
    """Per user: dense item ids (int64), oldest first."""
    actions: list[np.ndarray]
    """Per user: action ids ``1..6`` (int64)."""
    timestamps: list[np.ndarray]
    """Per user: unix seconds (int64), non-decreasing."""

    @property
    def n_items(self) -> int:
        return len(self.item_ids) - 1

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_events(self) -> int:
        return sum(len(s) for s in self.items)

    @property
    def n_actions(self) -> int:
        """Action vocabulary size including padding (``7``: ids ``0..6``)."""
        return N_ACTIONS

    def dense_ids(self, raw: np.ndarray | Sequence[int]) -> np.ndarray:
        """Raw item ids → dense ids (raises ``KeyError`` for an id outside the catalogue)."""
        raw_arr = np.asarray(raw, dtype=np.int64)
        pos = np.searchsorted(self.item_ids[1:], raw_arr)
        pos = np.minimum(pos, self.n_items - 1)
        if raw_arr.size and not np.array_equal(self.item_ids[1:][pos], raw_arr):
            missing = raw_arr[self.item_ids[1:][pos] != raw_arr]
            raise KeyError(f"item {int(missing[0])} is not in the {self.name} catalogue")
        return (pos + 1).astype(np.int64)

    def describe(self) -> dict[str, int]:
        lengths = np.array([len(s) for s in self.items]) if self.items else np.zeros(1)
        return {
            "users": self.n_users,
            "items": self.n_items,
            "events": self.n_events,
            "rated_items": len(np.unique(np.concatenate(self.items))) if self.items else 0,
            "min_len": int(lengths.min()),
            "max_len": int(lengths.max()),
        }


def rating_actions(ratings: np.ndarray) -> np.ndarray:
    """Vectorised :func:`~feedserve.data.movielens.rating_action`: ``like`` from 4 stars up,
    ``click`` below, as int64 action ids."""
    return np.where(
        np.asarray(ratings) >= LIKE_THRESHOLD, int(Action.like), int(Action.click)
    ).astype(np.int64)


def from_events(
    name: str,
    catalogue: np.ndarray | Sequence[int],
    users: np.ndarray,
    items: np.ndarray,
    actions: np.ndarray,
    timestamps: np.ndarray,
) -> SequenceData:
    """Build :class:`SequenceData` from flat event columns in file order.

    Events are grouped by user (ascending raw id) and sorted by timestamp with a stable sort,
    so ties keep the file order. ``catalogue`` is every raw item id of the data set; an event
    whose item is not in it raises ``KeyError``.
    """
    item_ids = np.concatenate([[0], np.unique(np.asarray(catalogue, dtype=np.int64))])
    base = SequenceData(name, item_ids, np.zeros(0, np.int64), [], [], [])
    dense = base.dense_ids(items)
    users = np.asarray(users, dtype=np.int64)
    order = np.lexsort((np.asarray(timestamps), users))  # by user, then ts; stable
    users_s = users[order]
    cuts = np.flatnonzero(np.diff(users_s)) + 1
    groups = np.split(order, cuts) if len(order) else []
    user_ids = users_s[np.concatenate([[0], cuts])] if len(order) else np.zeros(0, np.int64)
    ts = np.asarray(timestamps, dtype=np.int64)
    act = np.asarray(actions, dtype=np.int64)
    return SequenceData(
        name=name,
        item_ids=item_ids,
        user_ids=user_ids.astype(np.int64),
        items=[dense[g] for g in groups],
        actions=[act[g] for g in groups],
        timestamps=[ts[g] for g in groups],
    )


def _require(path: Path, files: Sequence[str], what: str) -> None:
    if not path.is_dir():
        raise SequenceDataError(f"{what} directory {path} does not exist")
    missing = [f for f in files if not (path / f).is_file()]
    if missing:
        raise SequenceDataError(f"{what} directory {path} lacks {', '.join(missing)}")


def ml100k_sequences(path: Path) -> SequenceData:
    """MovieLens 100K: ``u.data`` events over the ``u.item`` catalogue."""
    path = Path(path)
    _require(path, ("u.data", "u.item"), "ml-100k")
    rows = np.loadtxt(path / "u.data", dtype=np.int64, delimiter="\t", ndmin=2)
    with (path / "u.item").open(encoding="iso-8859-1") as fh:
        catalogue = [int(line.split("|", 1)[0]) for line in fh if line.strip()]
    return from_events(
        "ml-100k", catalogue, rows[:, 0], rows[:, 1], rating_actions(rows[:, 2]), rows[:, 3]
    )


def ml_latest_small_sequences(path: Path) -> SequenceData:
    """MovieLens ``ml-latest-small`` (via :func:`load_movielens`) over every movie."""
    ml = load_movielens(Path(path))
    users = list(ml.sequences)
    seqs = [ml.sequences[u] for u in users]
    counts = [len(s) for s in seqs]
    flat = np.concatenate(seqs) if seqs else np.zeros(0, dtype=RATING_DTYPE)
    return from_events(
        "ml-latest-small",
        sorted(ml.posts),
        np.repeat(np.asarray(users, dtype=np.int64), counts),
        flat["item"],
        rating_actions(flat["rating"]),
        flat["ts"],
    )


def demo_sequences(path: Path, *, include_impressions: bool = True) -> SequenceData:
    """The synthetic demo data set: one event per (member, post), see the module docstring."""
    from feedserve.data.io import read_dataset

    path = Path(path)
    if not path.exists():
        raise SequenceDataError(f"no demo data set at {path}: run `feedserve demo-data` first")
    return dataset_sequences(read_dataset(path), include_impressions=include_impressions)


def dataset_sequences(ds: DemoDataset, *, include_impressions: bool = True) -> SequenceData:
    """:func:`demo_sequences` of a data set already in memory."""
    rows = ds.interactions
    strength = np.zeros(N_ACTIONS, dtype=np.int64)
    for rank, kind in enumerate(ACTION_STRENGTH):
        strength[int(kind)] = rank
    if not include_impressions:
        rows = rows[rows["action"] != int(Action.impression)]
    member = rows["member_id"].astype(np.int64)
    post = rows["post_id"].astype(np.int64)
    action = rows["action"].astype(np.int64)
    # one event per (member, post): first row's time (rows are time-sorted), strongest action
    key = member * (int(post.max(initial=0)) + 1) + post
    uniq, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    best = np.zeros(len(uniq), dtype=np.int64)
    np.maximum.at(best, inverse, strength[action])
    keep = np.sort(first)  # file (time) order
    best_by_row = np.empty(len(rows), dtype=np.int64)
    best_by_row[first] = best
    return from_events(
        "demo",
        [p.post_id for p in ds.posts],
        member[keep],
        post[keep],
        np.array([int(ACTION_STRENGTH[s]) for s in best_by_row[keep]], dtype=np.int64),
        rows["ts"][keep].astype(np.int64),
    )


def default_sequence_dir(name: str) -> Path:
    """Where ``name`` is read from by default: MovieLens beside ``ml-latest-small``
    (:func:`~feedserve.data.movielens.default_movielens_dir`), the demo set in ``var/data``."""
    if name == "ml-latest-small":
        return default_movielens_dir()
    if name == "ml-100k":
        return default_movielens_dir().parent / "ml-100k"
    if name == "demo":
        return Path("var/data")
    raise SequenceDataError(f"unknown data set {name!r}: use one of {', '.join(DATASETS)}")


def load_sequences(name: str, path: Path | None = None) -> SequenceData:
    """Load data set ``name`` (``ml-100k``, ``ml-latest-small`` or ``demo``) from ``path``
    (default :func:`default_sequence_dir`)."""
    where = Path(path) if path is not None else default_sequence_dir(name)
    if name == "ml-100k":
        return ml100k_sequences(where)
    if name == "ml-latest-small":
        return ml_latest_small_sequences(where)
    if name == "demo":
        return demo_sequences(where)
    raise SequenceDataError(f"unknown data set {name!r}: use one of {', '.join(DATASETS)}")
