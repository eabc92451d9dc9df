"""Pure feed logic: merging candidate sources with quotas, and the business rules.

No I/O here; ``service`` feeds these functions what the featurizer and Triton returned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

DEFAULT_QUOTAS: dict[str, int] = {
    "ebr": 150,
    "session": 30,
    "network": 40,
    "popular": 30,
    "fresh": 30,
}
"""Maximum candidates each source may contribute (embedding retrieval first)."""

SOURCE_ORDER: tuple[str, ...] = ("ebr", "session", "network", "popular", "fresh")
"""Merge order: ``ebr`` (member prompt embedding), ``session`` (posts like the ones engaged
with in this session), ``network`` (posts by connections and followed authors),
``popular``, ``fresh``."""


@dataclass
class Candidate:
    post_id: int
    sources: list[str] = field(default_factory=list)
    retrieval_score: float = 0.0
    """Score in the first source that proposed the post (cosine for ebr; rank-based otherwise)."""
    score: float | None = None
    """Ranking score, once ranked (None: not ranked, e.g. the ranker's fallback)."""

    @property
    def final_score(self) -> float:
        return self.retrieval_score if self.score is None else self.score


def merge_candidates(
    sources: Mapping[str, Sequence[tuple[int, float]]],
    quotas: Mapping[str, int] = DEFAULT_QUOTAS,
    exclude: set[int] | None = None,
) -> list[Candidate]:
    """Union of the sources in ``SOURCE_ORDER``, each capped by its quota, deduplicated.

    A post proposed by several sources appears once and lists every source. Within a source,
    the given order is kept; quotas count only posts a source adds first.
    """
    exclude = exclude or set()
    merged: dict[int, Candidate] = {}
    for name in [s for s in SOURCE_ORDER if s in sources] + sorted(
        set(sources) - set(SOURCE_ORDER)
    ):
        added = 0
        quota = quotas.get(name, 0)
        for post_id, score in sources[name]:
            if post_id in exclude or post_id <= 0:
                continue
            cand = merged.get(post_id)
            if cand is not None:
                if name not in cand.sources:
                    cand.sources.append(name)
                continue
            if added >= quota:
                continue
            merged[post_id] = Candidate(post_id, [name], float(score))
            added += 1
    return list(merged.values())


def rank_scores(ids: Sequence[int]) -> list[tuple[int, float]]:
    """Pair ids from an ordered source with a descending score in (0, 1]."""
    n = max(len(ids), 1)
    return [(int(p), 1.0 - i / n) for i, p in enumerate(ids)]


def diversify(
    ordered: Sequence[int], author_of: Mapping[int, int], max_per_author: int, count: int
) -> list[int]:
    """Keep order, but no author more than ``max_per_author`` times in the first ``count``.

    Posts held back are appended after the diverse ones only if the page is still short.
    """
    taken: list[int] = []
    held: list[int] = []
    per_author: dict[int, int] = {}
    for post_id in ordered:
        if len(taken) >= count:
            break
        author = author_of.get(post_id, -post_id)
        if per_author.get(author, 0) >= max_per_author:
            held.append(post_id)
            continue
        per_author[author] = per_author.get(author, 0) + 1
        taken.append(post_id)
    return (taken + held)[:count]
