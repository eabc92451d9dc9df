"""The ``dali`` featurizer backend: NVIDIA DALI pipelines for the tensor part of hydration.

Needs the optional extra ``feedserve[dali]`` (``nvidia-dali-cuda120``); importing this module
without it raises ImportError (``batch.make_tensorizer`` turns that into a clear start-up
error). Pipelines run on the CPU (``device_id=None``) unless a GPU is asked for, or ``auto``
finds one; they are built once per worker (per history length / bucket table) and reused,
fed through ``fn.external_source`` with a variable batch size up to ``max_batch``.

What runs where, per batch:

* numpy, vectorised over the whole batch (:func:`batch.ranker_events_batch`): the engagement
  filter and the per-post dedup keeping the first engagement's time and the strongest action.
  DALI has no sort, unique or masked-select operator, so these cannot be a DALI graph;
* DALI, per sample on its worker threads: truncation to the last L events and left padding in
  one ``fn.slice`` (anchor ``n - L``, negative when the history is short, with
  ``out_of_bounds_policy="pad"``), the uint8 → int64 cast of action codes, and percentile
  buckets of engagement counts (one comparison per grid threshold, summed, then
  ``fn.lookup_table`` from threshold index to grid level).

Time-gap buckets are not here: the ranker derives them inside the model from
``history_timestamps`` and the request time (pairwise gaps), so the featurizer sends raw
timestamps on both backends.

A pipeline object is not thread-safe (feed + run must pair up), and the Celery worker runs
tasks in threads: every call holds the tensorizer's lock.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from nvidia.dali import backend as dali_backend
from nvidia.dali import fn, types
from nvidia.dali.pipeline import Pipeline
from nvidia.dali.types import DALIDataType as DT

from feedserve.prompts import BucketTable
from feedserve_featurizers.batch import I64, check_counts, ranker_events_batch
from feedserve_featurizers.tensors import TENSOR_NAMES

Device = Literal["auto", "cpu", "gpu"]
_INPUTS = ("post_ids", "actions", "timestamps")  # external sources, in TENSOR_NAMES order


def gpu_count() -> int:
    """CUDA devices DALI can see (0 on a machine without a driver)."""
    try:
        return int(getattr(dali_backend, "GetCUDADeviceCount")())  # noqa: B009 (untyped)
    except Exception:  # no driver / CUDA runtime: a CPU machine
        return 0


def resolve_device(device: Device) -> Literal["cpu", "gpu"]:
    if device == "auto":
        return "gpu" if gpu_count() > 0 else "cpu"
    if device == "gpu" and gpu_count() == 0:
        raise ValueError("dali_device=gpu but DALI sees no CUDA device")
    return device


def _to_numpy(out: Any) -> np.ndarray:
    """A dense DALI output batch (CPU or GPU TensorList) → a numpy array [B, ...]."""
    if hasattr(out, "as_cpu"):
        out = out.as_cpu()
    return np.asarray(out.as_array())


def _new_pipeline(max_batch: int, num_threads: int, device: str) -> Pipeline:
    return Pipeline(
        batch_size=max_batch,
        num_threads=num_threads,
        device_id=0 if device == "gpu" else None,
        prefetch_queue_depth=1,  # fed and run in lock step: one batch in flight
        exec_dynamic=True,
    )


def history_pipeline(length: int, max_batch: int, num_threads: int, device: str) -> Pipeline:
    """Per-member event arrays → the ranker's three int64 [L] tensors (last L, left-padded)."""
    pipe = _new_pipeline(max_batch, num_threads, device)
    with pipe:
        post_ids = fn.external_source(name="post_ids", dtype=DT.INT64, ndim=1, no_copy=True)
        actions = fn.external_source(name="actions", dtype=DT.UINT8, ndim=1, no_copy=True)
        stamps = fn.external_source(name="timestamps", dtype=DT.INT64, ndim=1, no_copy=True)
        # the anchor: n - L (negative for a short history: the slice pads on the left)
        start = post_ids.shape(dtype=DT.INT32) - length
        outs = []
        for node in (post_ids, fn.cast(actions, dtype=DT.INT64), stamps):
            x = node.gpu() if device == "gpu" else node
            outs.append(
                fn.slice(
                    x,
                    start=start,
                    shape=[length],
                    axes=[0],
                    out_of_bounds_policy="pad",
                    fill_values=0,
                )
            )
        pipe.set_outputs(*outs)
    pipe.build()
    return pipe


def count_bucket_pipeline(
    table: BucketTable, max_batch: int, num_threads: int, device: str
) -> Pipeline:
    """Count vectors [K] (``table.kinds`` order) → grid levels [K]: the number of thresholds
    above p0 that a count reaches is its grid index (thresholds are non-decreasing, so this is
    ``bisect_right - 1``), and a lookup table maps the index to its level."""
    thr = np.asarray([table.thresholds[k] for k in table.kinds], dtype=np.int64)  # [K, G]
    grid = table.grid
    pipe = _new_pipeline(max_batch, num_threads, device)
    with pipe:
        counts = fn.external_source(name="counts", dtype=DT.INT64, ndim=1)
        x = counts.gpu() if device == "gpu" else counts
        terms = [
            fn.cast(x >= types.Constant(thr[:, j].copy()), dtype=DT.INT32)
            for j in range(1, len(grid))
        ]
        # (fn.zeros_like has no GPU kernel; counts are checked >= 0, so `x < 0` is all zeros)
        index: Any = fn.cast(x < 0, dtype=DT.INT32) if not terms else terms[0]
        for term in terms[1:]:
            index = index + term
        level = fn.lookup_table(
            index,
            keys=list(range(len(grid))),
            values=[float(g) for g in grid],
            dtype=DT.INT64,
            default_value=-1.0,
        )
        pipe.set_outputs(level)
    pipe.build()
    return pipe


class DaliTensorizer:
    """The ``dali`` backend's :class:`~feedserve_featurizers.batch.Tensorizer`."""

    name = "dali"

    def __init__(
        self,
        length: int | None = None,
        max_batch: int = 256,
        num_threads: int = 1,
        device: Device = "cpu",
    ) -> None:
        """``length``: build that history pipeline now (others are built on first use)."""
        if max_batch < 1 or num_threads < 1:
            raise ValueError("max_batch and num_threads must be >= 1")
        self.max_batch = max_batch
        self.num_threads = num_threads
        self.device = resolve_device(device)
        self._lock = threading.Lock()
        self._history: dict[int, Pipeline] = {}
        self._buckets: dict[tuple[Any, ...], Pipeline] = {}
        if length is not None:
            with self._lock:
                self._history_pipe(length)

    def pipeline(self, length: int) -> Pipeline:
        """The history pipeline for ``length`` (built now if new). Feeding and running it
        directly is for single-threaded callers only (the benchmark's stage profile)."""
        with self._lock:
            return self._history_pipe(length)

    def _history_pipe(self, length: int) -> Pipeline:
        if length <= 0:
            raise ValueError("length must be positive")
        pipe = self._history.get(length)
        if pipe is None:
            pipe = history_pipeline(length, self.max_batch, self.num_threads, self.device)
            self._history[length] = pipe
        return pipe

    def _bucket_pipe(self, table: BucketTable) -> Pipeline:
        key = (table.grid, tuple((k, tuple(v)) for k, v in table.thresholds.items()))
        pipe = self._buckets.get(key)
        if pipe is None:
            pipe = count_bucket_pipeline(table, self.max_batch, self.num_threads, self.device)
            self._buckets[key] = pipe
        return pipe

    # -- the Tensorizer interface ----------------------------------------------------------

    def history_tensors(self, history: np.ndarray, length: int) -> dict[str, I64]:
        out = self.history_tensors_batch([history], length)
        return {name: arr[0] for name, arr in out.items()}

    def history_tensors_batch(self, histories: Sequence[np.ndarray], length: int) -> dict[str, I64]:
        if length <= 0:
            raise ValueError("length must be positive")
        events = ranker_events_batch(histories)
        per_member = events.split()
        parts: list[dict[str, I64]] = []
        with self._lock:
            pipe = self._history_pipe(length)
            for lo in range(0, len(histories), self.max_batch):
                hi = lo + self.max_batch
                for name, arrays in zip(_INPUTS, per_member, strict=True):
                    pipe.feed_input(name, arrays[lo:hi])
                outs = pipe.run()
                parts.append(
                    {name: _to_numpy(o) for name, o in zip(TENSOR_NAMES, outs, strict=True)}
                )
        if not parts:
            return {name: np.zeros((0, length), dtype=np.int64) for name in TENSOR_NAMES}
        if len(parts) == 1:
            return parts[0]
        return {name: np.concatenate([p[name] for p in parts]) for name in TENSOR_NAMES}

    def count_buckets_batch(self, table: BucketTable, counts: np.ndarray) -> I64:
        arr = check_counts(table, counts)
        if not len(arr) or not arr.shape[1]:
            return np.zeros(arr.shape, dtype=np.int64)
        parts: list[npt.NDArray[np.int64]] = []
        with self._lock:
            pipe = self._bucket_pipe(table)
            for lo in range(0, len(arr), self.max_batch):
                pipe.feed_input("counts", np.ascontiguousarray(arr[lo : lo + self.max_batch]))
                parts.append(_to_numpy(pipe.run()[0]))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
