"""Pure tensor featurization: member history → the generative ranker's input tensors.

The same functions build the training tensors (``feedserve train``/``build``) and the online
ones (featurizer tasks), so training and serving see identical features.

Layout: the last ``length`` engagement events, oldest first, **left-padded** with zeros so
that the most recent event is always in the last column. Time is encoded as a log2 bucket of
the gap (seconds) to the previous event; the first event gets bucket 0.
"""

from __future__ import annotations

import numpy as np

from feedserve.contracts import ENGAGEMENT_ACTIONS

TIME_BUCKETS = 32
"""Number of time-gap buckets: 0 = no previous event, b ≥ 1 covers gaps in [2^(b-1), 2^b) s."""

_ENGAGEMENT_CODES = np.array(sorted(int(a) for a in ENGAGEMENT_ACTIONS), dtype=np.uint8)


def engagements_only(history: np.ndarray) -> np.ndarray:
    """Drop impressions: the ranker reads what the member engaged with."""
    return history[np.isin(history["action"], _ENGAGEMENT_CODES)]


def time_gap_buckets(ts: np.ndarray) -> np.ndarray:
    """Bucket of the gap to the previous timestamp; 0 for the first (int64)."""
    ts = np.asarray(ts, dtype=np.int64)
    out = np.zeros(len(ts), dtype=np.int64)
    if len(ts) > 1:
        gaps = np.maximum(np.diff(ts), 0)
        # bucket = 1 + floor(log2(gap)) for gap ≥ 1, so gap 0 → 1 (same second), 1 → 1, 2..3 → 2
        buckets = np.ones(len(gaps), dtype=np.int64)
        pos = gaps > 0
        buckets[pos] = 1 + np.floor(np.log2(gaps[pos])).astype(np.int64)
        out[1:] = np.clip(buckets, 1, TIME_BUCKETS - 1)
    return out


def history_tensors(history: np.ndarray, length: int) -> dict[str, np.ndarray]:
    """Fixed-length ranker inputs from a HISTORY_DTYPE array (oldest first).

    Returns int64 arrays of shape [length]: ``history_post_ids``, ``history_actions``,
    ``history_time_buckets`` (zeros on the left where the history is shorter).
    """
    if length <= 0:
        raise ValueError("length must be positive")
    events = engagements_only(history)
    # buckets are computed on the full engagement sequence, then cut: the first kept event
    # still knows the gap to the event before it
    buckets = time_gap_buckets(events["ts"])[-length:]
    events = events[-length:]
    n = len(events)
    post_ids = np.zeros(length, dtype=np.int64)
    actions = np.zeros(length, dtype=np.int64)
    times = np.zeros(length, dtype=np.int64)
    if n:
        post_ids[-n:] = events["post_id"]
        actions[-n:] = events["action"]
        times[-n:] = buckets
    return {
        "history_post_ids": post_ids,
        "history_actions": actions,
        "history_time_buckets": times,
    }
