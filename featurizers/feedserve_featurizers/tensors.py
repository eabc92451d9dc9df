"""Pure tensor featurization: member history → the generative ranker's input tensors.

The same functions define the training sequences (``feedserve build`` trains the ranker on
:func:`ranker_events` of each member, through
:func:`feedserve.data.sequences.dataset_sequences`, which a test holds equal) and the online
tensors (featurizer tasks), so training and serving see identical features.

The ranker's events: engagements only (impressions dropped), **one event per post** — the
time of the member's first engagement with it and the strongest action
(:data:`~feedserve.contracts.ACTION_STRENGTH`) — oldest first.

Layout: the last ``length`` such events, **left-padded** with zeros so that the most recent
event is always in the last column: post ids, action codes and unix-second timestamps. The
model derives time-gap features itself (relative to the request time).
"""

from __future__ import annotations

import numpy as np

from feedserve.contracts import ACTION_STRENGTH, ENGAGEMENT_ACTIONS

_ENGAGEMENT_CODES = np.array(sorted(int(a) for a in ENGAGEMENT_ACTIONS), dtype=np.uint8)
_STRENGTH = np.zeros(max(int(a) for a in ACTION_STRENGTH) + 1, dtype=np.int64)
for _rank, _action in enumerate(ACTION_STRENGTH):
    _STRENGTH[int(_action)] = _rank
_BY_STRENGTH = np.array([int(a) for a in ACTION_STRENGTH], dtype=np.int64)

TENSOR_NAMES = ("history_post_ids", "history_actions", "history_timestamps")


def engagements_only(history: np.ndarray) -> np.ndarray:
    """Drop impressions: the ranker reads what the member engaged with."""
    return history[np.isin(history["action"], _ENGAGEMENT_CODES)]


def ranker_events(history: np.ndarray) -> np.ndarray:
    """A HISTORY_DTYPE array → the ranker's events (see the module docstring), oldest first."""
    events = engagements_only(history)
    if not len(events):
        return events
    events = events[np.argsort(events["ts"], kind="stable")]
    _, first, inverse = np.unique(events["post_id"], return_index=True, return_inverse=True)
    best = np.zeros(len(first), dtype=np.int64)
    np.maximum.at(best, inverse, _STRENGTH[events["action"].astype(np.int64)])
    order = np.sort(first)
    out = events[order].copy()
    out["action"] = _BY_STRENGTH[best[inverse[order]]]
    return out


def history_tensors(history: np.ndarray, length: int) -> dict[str, np.ndarray]:
    """Fixed-length ranker inputs from a HISTORY_DTYPE array (oldest first).

    Returns int64 arrays of shape [length]: ``history_post_ids``, ``history_actions``,
    ``history_timestamps`` (zeros on the left where the history is shorter).
    """
    if length <= 0:
        raise ValueError("length must be positive")
    events = ranker_events(history)[-length:]
    n = len(events)
    out = {name: np.zeros(length, dtype=np.int64) for name in TENSOR_NAMES}
    if n:
        out["history_post_ids"][-n:] = events["post_id"]
        out["history_actions"][-n:] = events["action"]
        out["history_timestamps"][-n:] = events["ts"]
    return out
