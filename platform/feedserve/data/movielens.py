"""MovieLens ``ml-latest-small`` as a feed: movies become posts, users become activity sequences.

The files are read from ``../shared/data/ml-latest-small`` (or ``$FEEDSERVE_MOVIELENS_DIR``, or
a path given by the caller) and never copied: MovieLens may be used for research and testing but
not redistributed.

Mapping onto the feed contracts:

* a **movie** is a :class:`~feedserve.contracts.Post`: ``text`` is the title, the genres and the
  movie's user tags (case-insensitively deduplicated, most used first, capped), ``topic`` its
  first genre, ``format`` ``article``, ``author_id`` the constant placeholder
  :data:`PLACEHOLDER_AUTHOR_ID` (MovieLens has no authors; prompts say "unknown author"),
  ``created_at`` its first rating's timestamp;
* a **user** is a minimal :class:`~feedserve.contracts.Member` (placeholder profile fields, no
  demographics: MovieLens-small has none, and prompts would never read them) plus an activity
  sequence: the user's ratings sorted by timestamp (ties keep the file's order). **Every rating
  counts as an engagement** (a rating means the user watched the movie): ratings of 4 stars and
  up are ``like``, the others ``click``;
* engagement counts for the post prompts' percentile buckets come from the training part only:
  ``views`` = ratings, ``likes`` = ratings >= 4, ``comments`` = tag applications (item content
  available to a cold item too), ``shares`` = 0.

:func:`leave_last_out` makes the evaluation split. Each user's **last** rating is their test
target; training pairs come from earlier positions only. A fixed random 10 % of the rated movies
(seeded) are **cold**: held out of training entirely — never a positive, never in any member
prompt's history (training or evaluation; the system has never seen anyone engage with them),
with zero engagement counts — but still in the corpus every query searches. Users whose last
movie is cold are the cold-start queries; the others are the warm queries. At evaluation every
movie the user rated before the target (cold ones included) is excluded from the results, the
usual "filter the history" protocol.
"""

from __future__ import annotations

import csv
import os
from collections import Counter, defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np

from feedserve.contracts import Action, EngagementCounts, Member, Post, PostFormat, Seniority
from feedserve.prompts import (
    ActivityItem,
    BucketTable,
    TokenCounter,
    approx_token_count,
    render_member_prompt,
    render_post_prompt,
)

__all__ = [
    "ENV_DIR",
    "LIKE_THRESHOLD",
    "PLACEHOLDER_AUTHOR_ID",
    "RATING_DTYPE",
    "MovieLens",
    "MovieLensError",
    "MovieLensSplit",
    "UserCase",
    "default_movielens_dir",
    "describe",
    "leave_last_out",
    "load_movielens",
    "rating_action",
    "restrict_users",
]

ENV_DIR = "FEEDSERVE_MOVIELENS_DIR"
FILES = ("ratings.csv", "movies.csv", "tags.csv")
PLACEHOLDER_AUTHOR_ID = 1
LIKE_THRESHOLD = 4.0
NO_GENRES = "(no genres listed)"
DEFAULT_TOPIC = "movie"

RATING_DTYPE = np.dtype([("item", "<i8"), ("rating", "<f4"), ("ts", "<i8")])
"""One rating of a user's sequence (``item`` is the MovieLens movieId = post id)."""

ActivityText = Literal["title", "full"]


class MovieLensError(FileNotFoundError):
    """The MovieLens directory or one of its files is missing."""


def default_movielens_dir() -> Path:
    """``$FEEDSERVE_MOVIELENS_DIR``, else ``../shared/data/ml-latest-small`` beside the
    repository, else ``/work/shared/data/ml-latest-small``."""
    env = os.environ.get(ENV_DIR)
    if env:
        return Path(env)
    beside_repo = Path(__file__).resolve().parents[3].parent / "shared/data/ml-latest-small"
    if beside_repo.is_dir():
        return beside_repo
    return Path("/work/shared/data/ml-latest-small")


def rating_action(rating: float) -> Action:
    """Every rating is an engagement: ``like`` from 4 stars up, ``click`` below."""
    return Action.like if rating >= LIKE_THRESHOLD else Action.click


@dataclass(frozen=True)
class MovieLens:
    """Movies as posts and users' rating sequences (oldest first)."""

    path: Path
    posts: dict[int, Post]
    titles: dict[int, str]
    genres: dict[int, tuple[str, ...]]
    tags: dict[int, tuple[str, ...]]
    tag_counts: dict[int, int]
    sequences: dict[int, np.ndarray]
    """userId → ``RATING_DTYPE`` rows sorted by timestamp (ties in file order)."""

    @property
    def n_ratings(self) -> int:
        return sum(len(s) for s in self.sequences.values())

    def rated_items(self) -> np.ndarray:
        """Sorted ids of every movie rated at least once."""
        if not self.sequences:
            return np.zeros(0, dtype=np.int64)
        return np.unique(np.concatenate([s["item"] for s in self.sequences.values()]))


def _check_dir(path: Path) -> None:
    if not path.is_dir():
        raise MovieLensError(
            f"MovieLens directory {path} does not exist: ml-latest-small is read from "
            f"../shared/data (set {ENV_DIR} or pass a path); it is never copied into the repo"
        )
    missing = [name for name in FILES if not (path / name).is_file()]
    if missing:
        raise MovieLensError(f"MovieLens directory {path} lacks {', '.join(missing)}")


def _read_rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    return rows[1:]


def load_movielens(
    path: Path | None = None,
    *,
    user_ids: Collection[int] | None = None,
    max_tags: int = 8,
) -> MovieLens:
    """Read ``ratings.csv``, ``movies.csv`` and ``tags.csv``.

    ``user_ids`` keeps only those users, and only the movies they rated (a small, fast subset
    for smoke runs). ``max_tags`` caps the user tags kept per movie.
    """
    path = Path(path) if path is not None else default_movielens_dir()
    _check_dir(path)
    keep_users = None if user_ids is None else {int(u) for u in user_ids}

    by_user: dict[int, list[tuple[int, float, int]]] = defaultdict(list)
    for u, m, r, ts in _read_rows(path / "ratings.csv"):
        uid = int(u)
        if keep_users is None or uid in keep_users:
            by_user[uid].append((int(m), float(r), int(ts)))
    sequences: dict[int, np.ndarray] = {}
    first_ts: dict[int, int] = {}
    for uid in sorted(by_user):
        arr = np.array(by_user[uid], dtype=RATING_DTYPE)
        arr = arr[np.argsort(arr["ts"], kind="stable")]
        sequences[uid] = arr
        for item, ts in zip(arr["item"].tolist(), arr["ts"].tolist(), strict=True):
            if ts < first_ts.get(item, 2**62):
                first_ts[item] = ts
    rated = set(first_ts)

    tag_counter: dict[int, Counter[str]] = defaultdict(Counter)
    tag_spelling: dict[tuple[int, str], str] = {}
    tag_total: Counter[int] = Counter()
    for _u, m, tag, _ts in _read_rows(path / "tags.csv"):
        item, text = int(m), " ".join(tag.split())
        if not text or (keep_users is not None and item not in rated):
            continue
        key = text.lower()
        tag_counter[item][key] += 1
        tag_spelling.setdefault((item, key), text)
        tag_total[item] += 1

    posts: dict[int, Post] = {}
    titles: dict[int, str] = {}
    genres: dict[int, tuple[str, ...]] = {}
    tags: dict[int, tuple[str, ...]] = {}
    for m, title, genre_field in _read_rows(path / "movies.csv"):
        item = int(m)
        if keep_users is not None and item not in rated:
            continue
        g = tuple(x for x in genre_field.split("|") if x and x != NO_GENRES)
        # most used first, then first seen (Counter keeps insertion order for ties)
        t = tuple(tag_spelling[(item, k)] for k, _ in tag_counter[item].most_common(max_tags))
        titles[item], genres[item], tags[item] = title, g, t
        posts[item] = Post(
            post_id=item,
            author_id=PLACEHOLDER_AUTHOR_ID,
            format=PostFormat.article,
            topic=g[0] if g else DEFAULT_TOPIC,
            text=_movie_text(title, g, t),
            created_at=first_ts.get(item, 0),
        )
    unknown = rated - set(posts)
    if unknown:
        raise MovieLensError(f"{len(unknown)} rated movies are not in movies.csv: {min(unknown)}")
    return MovieLens(
        path=path,
        posts=posts,
        titles=titles,
        genres=genres,
        tags=tags,
        tag_counts={item: tag_total[item] for item in posts},
        sequences=sequences,
    )


def _movie_text(title: str, genres: Sequence[str], tags: Sequence[str]) -> str:
    parts = [title]
    if genres:
        parts.append("genres: " + ", ".join(genres))
    if tags:
        parts.append("tags: " + ", ".join(tags))
    return ". ".join(parts)


@dataclass(frozen=True)
class UserCase:
    """One leave-last-out query: a user's last movie and what came before it."""

    user_id: int
    target: int
    history: np.ndarray
    """``RATING_DTYPE`` rows before the target, cold movies removed (the prompt's activity)."""
    seen: frozenset[int]
    """Every movie rated before the target (excluded from the results)."""
    cold: bool
    """The target is a cold (held-out) movie."""


@dataclass
class MovieLensSplit:
    """Leave-last-out split with cold items (see the module docstring)."""

    data: MovieLens
    cold_items: frozenset[int]
    train: dict[int, np.ndarray]
    """userId → rating rows before the last one, cold movies removed."""
    cases: list[UserCase]
    counts: dict[int, EngagementCounts]
    buckets: BucketTable
    activity_text: ActivityText = "title"
    """What a history item shows in a member prompt: ``title`` (the title, its first genre as
    topic: about 12 tokens an item, so a short prompt holds a long history) or ``full`` (the
    post text's first words: title, genres, tags)."""
    seed: int = 0
    _members: dict[int, Member] = field(default_factory=dict, repr=False)

    @property
    def warm_cases(self) -> list[UserCase]:
        return [c for c in self.cases if not c.cold]

    @property
    def cold_cases(self) -> list[UserCase]:
        return [c for c in self.cases if c.cold]

    def member(self, user_id: int) -> Member:
        """A minimal member: placeholder profile, no demographics."""
        found = self._members.get(user_id)
        if found is None:
            found = self._members[user_id] = Member(
                member_id=user_id,
                name=f"MovieLens user {user_id}",
                headline="",
                title="",
                industry="",
                seniority=Seniority.mid,
                location="",
            )
        return found

    @cached_property
    def _activity_posts(self) -> dict[int, Post]:
        if self.activity_text == "full":
            return self.data.posts
        return {
            i: p.model_copy(update={"text": self.data.titles[i]})
            for i, p in self.data.posts.items()
        }

    def activity(self, rows: np.ndarray) -> list[ActivityItem]:
        posts = self._activity_posts
        return [
            ActivityItem(rating_action(float(r)), posts[int(i)])
            for i, r in zip(rows["item"].tolist(), rows["rating"].tolist(), strict=True)
        ]

    def member_prompt(
        self,
        user_id: int,
        history: np.ndarray,
        budget: int,
        count_tokens: TokenCounter = approx_token_count,
    ) -> str:
        """The member prompt of ``user_id`` with ``history`` (oldest first) as activity."""
        return render_member_prompt(
            self.member(user_id), self.activity(history), budget=budget, count_tokens=count_tokens
        )

    def post_texts(
        self, budget: int, count_tokens: TokenCounter = approx_token_count
    ) -> dict[int, str]:
        """Every movie's post prompt (the corpus: cold and never-rated movies included)."""
        return self._render_posts(self.counts, budget, count_tokens)

    def new_post_texts(
        self, budget: int, count_tokens: TokenCounter = approx_token_count
    ) -> dict[int, str]:
        """Every movie's post prompt as if it were brand new: no ratings yet (``views`` and
        ``likes`` 0; ``comments``, from the tags, is content and stays). A cold movie's text
        is the same in both."""
        fresh = {item: EngagementCounts(comments=c.comments) for item, c in self.counts.items()}
        return self._render_posts(fresh, budget, count_tokens)

    def _render_posts(
        self, counts: Mapping[int, EngagementCounts], budget: int, count_tokens: TokenCounter
    ) -> dict[int, str]:
        return {
            item: render_post_prompt(
                post, None, counts[item], self.buckets, budget=budget, count_tokens=count_tokens
            )
            for item, post in self.data.posts.items()
        }

    def training_pairs(
        self,
        budget: int,
        count_tokens: TokenCounter = approx_token_count,
        *,
        max_pairs_per_user: int | None = None,
        positions: Literal["recent", "random"] = "recent",
        min_history: int = 1,
        seed: int | None = None,
    ) -> tuple[list[tuple[str, int]], list[frozenset[int]]]:
        """``(member prompt, positive movie)`` pairs from the training part, and per pair the
        user's training movies (never a negative for that pair).

        Position ``j`` of a user's training sequence gives the pair (prompt of positions
        ``< j``, movie ``j``) for ``j >= min_history``. With ``max_pairs_per_user`` a user
        contributes their most recent positions (``recent``: closest to the test) or a seeded
        random sample of them (``random``).
        """
        rng = np.random.default_rng(self.seed if seed is None else seed)
        pairs: list[tuple[str, int]] = []
        exclude: list[frozenset[int]] = []
        for uid, rows in self.train.items():
            positions_ = np.arange(min_history, len(rows))
            if max_pairs_per_user is not None and len(positions_) > max_pairs_per_user:
                if positions == "recent":
                    positions_ = positions_[-max_pairs_per_user:]
                else:
                    positions_ = np.sort(rng.choice(positions_, max_pairs_per_user, False))
            if len(positions_) == 0:
                continue
            items = frozenset(int(x) for x in rows["item"])
            for j in positions_.tolist():
                prompt = self.member_prompt(uid, rows[:j], budget, count_tokens)
                pairs.append((prompt, int(rows["item"][j])))
                exclude.append(items)
        return pairs, exclude

    def eval_queries(
        self,
        budget: int,
        count_tokens: TokenCounter = approx_token_count,
        cases: Sequence[UserCase] | None = None,
    ) -> tuple[list[str], list[int], list[set[int]]]:
        """Queries, targets and exclusion sets for ``cases`` (default: the warm cases)."""
        chosen = self.warm_cases if cases is None else cases
        queries = [self.member_prompt(c.user_id, c.history, budget, count_tokens) for c in chosen]
        return queries, [c.target for c in chosen], [set(c.seen) for c in chosen]

    def popularity_ranking(self) -> np.ndarray:
        """Movie ids by training rating count, most rated first (ties: lower id first);
        movies never rated in training (cold ones included) are not in it."""
        items = np.array([i for i, c in self.counts.items() if c.views > 0], dtype=np.int64)
        views = np.array([self.counts[int(i)].views for i in items], dtype=np.int64)
        return items[np.lexsort((items, -views))]


def leave_last_out(
    data: MovieLens,
    *,
    cold_fraction: float = 0.1,
    seed: int = 0,
    min_ratings: int = 2,
    activity_text: ActivityText = "title",
) -> MovieLensSplit:
    """Split ``data``: last rating per user → test; a seeded ``cold_fraction`` of the rated
    movies → cold (held out of training entirely). Users with fewer than ``min_ratings``
    ratings are skipped."""
    if not 0 <= cold_fraction < 1:
        raise ValueError("cold_fraction must be in [0, 1)")
    rng = np.random.default_rng(seed)
    rated = data.rated_items()
    n_cold = round(cold_fraction * len(rated))
    cold = frozenset(int(x) for x in rng.choice(rated, size=n_cold, replace=False))
    cold_arr = np.array(sorted(cold), dtype=np.int64)

    train: dict[int, np.ndarray] = {}
    cases: list[UserCase] = []
    for uid, seq in data.sequences.items():
        if len(seq) < min_ratings:
            continue
        before = seq[:-1]
        warm_before = before[~np.isin(before["item"], cold_arr)]
        train[uid] = warm_before
        target = int(seq["item"][-1])
        cases.append(
            UserCase(
                user_id=uid,
                target=target,
                history=warm_before,
                seen=frozenset(int(x) for x in before["item"]),
                cold=target in cold,
            )
        )

    views: Counter[int] = Counter()
    likes: Counter[int] = Counter()
    for rows in train.values():
        views.update(rows["item"].tolist())
        likes.update(rows["item"][rows["rating"] >= LIKE_THRESHOLD].tolist())
    counts = {
        item: EngagementCounts(
            views=views[item], likes=likes[item], comments=data.tag_counts.get(item, 0)
        )
        for item in data.posts
    }
    buckets = BucketTable.fit_engagement(counts.values())
    return MovieLensSplit(
        data=data,
        cold_items=cold,
        train=train,
        cases=cases,
        counts=counts,
        buckets=buckets,
        activity_text=activity_text,
        seed=seed,
    )


def restrict_users(split: MovieLensSplit, user_ids: Collection[int]) -> MovieLensSplit:
    """The same split (cold movies, counts and buckets unchanged) for ``user_ids`` only, with the
    corpus cut to the movies those users rated: a small, fast subset for smoke runs."""
    keep = {int(u) for u in user_ids}
    sequences = {u: s for u, s in split.data.sequences.items() if u in keep}
    items = {int(i) for s in sequences.values() for i in s["item"]}
    data = MovieLens(
        path=split.data.path,
        posts={i: p for i, p in split.data.posts.items() if i in items},
        titles={i: t for i, t in split.data.titles.items() if i in items},
        genres={i: g for i, g in split.data.genres.items() if i in items},
        tags={i: t for i, t in split.data.tags.items() if i in items},
        tag_counts={i: c for i, c in split.data.tag_counts.items() if i in items},
        sequences=sequences,
    )
    return MovieLensSplit(
        data=data,
        cold_items=split.cold_items & items,
        train={u: r for u, r in split.train.items() if u in keep},
        cases=[c for c in split.cases if c.user_id in keep],
        counts={i: c for i, c in split.counts.items() if i in items},
        buckets=split.buckets,
        activity_text=split.activity_text,
        seed=split.seed,
    )


def describe(split: MovieLensSplit) -> Mapping[str, int]:
    """Sizes worth printing next to results."""
    return {
        "users": len(split.data.sequences),
        "movies": len(split.data.posts),
        "rated_movies": len(split.data.rated_items()),
        "ratings": split.data.n_ratings,
        "cold_movies": len(split.cold_items),
        "warm_queries": len(split.warm_cases),
        "cold_queries": len(split.cold_cases),
        "training_ratings": sum(len(r) for r in split.train.values()),
    }
