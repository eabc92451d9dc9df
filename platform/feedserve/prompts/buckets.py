"""Percentile buckets for engagement counts.

Numbers are not left as digits in prompts: a count becomes the percentile bucket of its corpus
distribution, written as a special token such as ``<likes_p90>`` that is added to the tokenizer.

A :class:`BucketTable` holds, per count kind, one integer threshold per grid level ``p``: the
smallest count ``c`` such that at least ``p`` percent of the corpus values are strictly below
``c``. Thresholds are therefore non-decreasing and the ``p0`` threshold is always 0. A count's
bucket is the largest grid level whose threshold it reaches. Looking a count up is a pure table
lookup (``searchsorted`` on a short sorted array) so that it can be reimplemented elsewhere (for
example in a DALI pipeline) from the saved JSON alone.

Properties worth knowing:

* a count above the corpus maximum is always ``p99`` (the top grid level);
* counts never seen in the corpus get the bucket of the next smaller value's threshold band;
* with a non-empty corpus a count of 0 is always ``p0``; a corpus that is 60 % zeros puts 0 in
  ``p0`` and 1 in ``p50``, because 60 % of the corpus is strictly below 1;
* an empty corpus gives all-zero thresholds (nothing to compare against): every count is then
  the top level.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, PrivateAttr, field_validator, model_validator

from feedserve.contracts import COUNT_KINDS, EngagementCounts

__all__ = [
    "PERCENTILE_GRID",
    "BucketTable",
    "bucket_token",
    "special_tokens",
]

PERCENTILE_GRID: tuple[int, ...] = (0, 10, 25, 50, 75, 90, 95, 99)
"""Percentile levels a count can be bucketed into (the ``p`` in ``<likes_p90>``)."""

_KIND_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def bucket_token(kind: str, level: int) -> str:
    """The special token for ``kind`` at grid level ``level``: ``bucket_token("likes", 90)``
    is ``"<likes_p90>"``."""
    return f"<{kind}_p{level}>"


def special_tokens(
    kinds: Sequence[str] = COUNT_KINDS, grid: Sequence[int] = PERCENTILE_GRID
) -> list[str]:
    """Every bucket token, kind-major then grid order (stable: add these to the tokenizer)."""
    return [bucket_token(kind, level) for kind in kinds for level in grid]


def _thresholds_for(values: npt.ArrayLike, grid: Sequence[int], kind: str) -> list[int]:
    arr = np.asarray(values).ravel()
    if arr.size == 0:
        return [0] * len(grid)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.floor(arr)):
            raise ValueError(f"counts for {kind!r} must be finite whole numbers")
    elif arr.dtype.kind not in "iub":
        raise TypeError(f"counts for {kind!r} must be numeric, got dtype {arr.dtype}")
    ints = np.sort(arr.astype(np.int64))
    if ints[0] < 0:
        raise ValueError(f"counts for {kind!r} must be >= 0, got {int(ints[0])}")
    n = int(ints.size)
    out: list[int] = []
    for level in grid:
        # smallest c with #(values < c) >= level% of n: c = (k-th smallest value) + 1,
        # where k = ceil(level * n / 100); k == 0 means c == 0.
        k = (level * n + 99) // 100
        out.append(0 if k == 0 else int(ints[k - 1]) + 1)
    return out


class BucketTable(BaseModel):
    """Per-kind percentile thresholds fitted on a corpus; maps counts to bucket tokens."""

    model_config = ConfigDict(frozen=True)

    version: int = 1
    grid: tuple[int, ...] = PERCENTILE_GRID
    thresholds: dict[str, list[int]]

    _arrays: dict[str, npt.NDArray[np.int64]] = PrivateAttr(default_factory=dict)
    _grid_arr: npt.NDArray[np.int64] = PrivateAttr(
        default_factory=lambda: np.asarray(PERCENTILE_GRID, dtype=np.int64)
    )

    @field_validator("grid")
    @classmethod
    def _check_grid(cls, grid: tuple[int, ...]) -> tuple[int, ...]:
        if not grid or grid[0] != 0:
            raise ValueError("grid must start at 0 so that every count has a bucket")
        if any(b <= a for a, b in pairwise(grid)):
            raise ValueError(f"grid must be strictly increasing, got {grid}")
        if grid[-1] > 100:
            raise ValueError(f"grid levels must be <= 100, got {grid[-1]}")
        return grid

    @model_validator(mode="after")
    def _check_thresholds(self) -> BucketTable:
        for kind, thr in self.thresholds.items():
            if not _KIND_RE.match(kind):
                raise ValueError(f"count kind {kind!r} must match {_KIND_RE.pattern}")
            if len(thr) != len(self.grid):
                raise ValueError(
                    f"{kind!r}: {len(thr)} thresholds for a grid of {len(self.grid)} levels"
                )
            if thr[0] != 0:
                raise ValueError(f"{kind!r}: the p0 threshold must be 0, got {thr[0]}")
            if any(b < a for a, b in pairwise(thr)):
                raise ValueError(f"{kind!r}: thresholds must be non-decreasing, got {thr}")
        return self

    def model_post_init(self, context: Any, /) -> None:
        self._arrays = {k: np.asarray(v, dtype=np.int64) for k, v in self.thresholds.items()}
        self._grid_arr = np.asarray(self.grid, dtype=np.int64)

    def __eq__(self, other: object) -> bool:
        # the numpy lookup caches are derived state: compare the fields only
        if not isinstance(other, BucketTable):
            return NotImplemented
        return (self.version, self.grid, self.thresholds) == (
            other.version,
            other.grid,
            other.thresholds,
        )

    __hash__ = None  # type: ignore[assignment]  # thresholds are lists: not hashable

    # -- fitting -----------------------------------------------------------------------------

    @classmethod
    def fit(
        cls, counts: Mapping[str, npt.ArrayLike], grid: Sequence[int] = PERCENTILE_GRID
    ) -> BucketTable:
        """Fit thresholds on a corpus: ``counts[kind]`` holds one count per post (any shape;
        empty is allowed and gives all-zero thresholds)."""
        grid_t = tuple(int(g) for g in grid)
        return cls(
            grid=grid_t,
            thresholds={kind: _thresholds_for(v, grid_t, kind) for kind, v in counts.items()},
        )

    @classmethod
    def fit_engagement(
        cls,
        records: Iterable[EngagementCounts],
        kinds: Sequence[str] = COUNT_KINDS,
        grid: Sequence[int] = PERCENTILE_GRID,
    ) -> BucketTable:
        """Fit on a corpus of :class:`EngagementCounts` records (one per post)."""
        cols: dict[str, list[int]] = {kind: [] for kind in kinds}
        for rec in records:
            for kind in kinds:
                cols[kind].append(rec.get(kind))
        return cls.fit({k: np.asarray(v, dtype=np.int64) for k, v in cols.items()}, grid)

    # -- lookup ------------------------------------------------------------------------------

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.thresholds)

    def _thr(self, kind: str) -> list[int]:
        try:
            return self.thresholds[kind]
        except KeyError:
            raise KeyError(
                f"unknown count kind {kind!r}; this bucket table has: {', '.join(self.kinds)}"
            ) from None

    def bucket(self, kind: str, count: int) -> int:
        """The largest grid level ``p`` with ``count >= threshold_p`` (``p0`` .. ``p99``)."""
        thr = self._thr(kind)
        if count < 0:
            raise ValueError(f"{kind} count must be >= 0, got {count}")
        return self.grid[bisect_right(thr, count) - 1]

    def bucket_many(self, kind: str, counts: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Vectorized :meth:`bucket`: same shape as ``counts``, grid levels as int64."""
        self._thr(kind)
        arr = np.asarray(counts)
        if arr.dtype.kind not in "iubf":
            raise TypeError(f"{kind} counts must be numeric, got dtype {arr.dtype}")
        if arr.size:
            if arr.dtype.kind == "f" and np.isnan(arr).any():
                raise ValueError(f"{kind} counts must not be NaN")
            if arr.min() < 0:
                raise ValueError(f"{kind} counts must be >= 0, got {arr.min()}")
        idx = np.searchsorted(self._arrays[kind], arr, side="right") - 1
        return self._grid_arr[idx]

    def token(self, kind: str, count: int) -> str:
        """The bucket's special token, e.g. ``"<likes_p90>"``."""
        return bucket_token(kind, self.bucket(kind, count))

    def special_tokens(self) -> list[str]:
        """Every token this table can produce (kind-major, grid order)."""
        return special_tokens(self.kinds, self.grid)

    # -- persistence -------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> BucketTable:
        return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))
