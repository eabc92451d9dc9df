"""Canary traffic split: which version of a Triton model serves a request.

The operator writes a FeedModel's canary weights into the pipeline's ``<pipeline>-routing``
ConfigMap (one file per model, e.g. ``generative_ranker`` → ``{"2": 90, "3": 10}``); the
gateway mounts it and ``VersionRouter`` reads it, re-reading a file when it changes. A model
without a file is served by whatever versions Triton has ready (no version in the request).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path

log = logging.getLogger(__name__)


def pick_version(weights: Mapping[str, int], u: float) -> str:
    """The version whose cumulative share of 100 covers ``u`` in [0, 1); "" for no weights."""
    total = sum(w for w in weights.values() if w > 0)
    if total <= 0:
        return ""
    point, acc = u * total, 0
    chosen = ""
    for version, weight in sorted(weights.items(), key=lambda kv: int(kv[0])):
        if weight <= 0:
            continue
        acc += weight
        chosen = version
        if point < acc:
            break
    return chosen


def parse_weights(text: str) -> dict[str, int]:
    """``{"version": percent}``; raises ValueError for anything else."""
    raw = json.loads(text)
    if not isinstance(raw, dict) or not all(
        str(k).isdigit() and isinstance(v, int) and 0 <= v <= 100 for k, v in raw.items()
    ):
        raise ValueError(f"expected {{version: percent}}, got {text[:200]!r}")
    return {str(k): int(v) for k, v in raw.items()}


class VersionRouter:
    """Weights per model from files in ``directory``, checked for changes at most every
    ``check_every_s``; a file that does not parse keeps the last good weights."""

    def __init__(
        self,
        directory: Path,
        check_every_s: float = 1.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.directory = directory
        self.check_every_s = check_every_s
        self.rng = rng
        self._weights: dict[str, dict[str, int]] = {}
        self._stamps: dict[str, float] = {}
        self._checked: dict[str, float] = {}

    def weights(self, model: str) -> dict[str, int]:
        now = time.monotonic()
        if now - self._checked.get(model, -1e18) >= self.check_every_s:
            self._checked[model] = now
            self._reload(model)
        return self._weights.get(model, {})

    def _reload(self, model: str) -> None:
        path = self.directory / model
        try:
            stamp = path.stat().st_mtime
        except OSError:
            self._weights.pop(model, None)
            self._stamps.pop(model, None)
            return
        if self._stamps.get(model) == stamp:
            return
        try:
            self._weights[model] = parse_weights(path.read_text())
            self._stamps[model] = stamp
        except (OSError, ValueError) as exc:
            log.warning("routing file %s ignored: %s", path, exc)

    def pick(self, model: str) -> str:
        return pick_version(self.weights(model), self.rng())
