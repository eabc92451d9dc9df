"""The MovieLens adapter on the real ml-latest-small files (read from ../shared/data, never
copied): posts, activity sequences, leave-last-out without leakage, cold items held out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from feedserve.contracts import Action, PostFormat
from feedserve.data.movielens import (
    ENV_DIR,
    PLACEHOLDER_AUTHOR_ID,
    MovieLens,
    MovieLensError,
    MovieLensSplit,
    default_movielens_dir,
    describe,
    leave_last_out,
    load_movielens,
    rating_action,
    restrict_users,
)

ML_DIR = default_movielens_dir()


@pytest.fixture(scope="module")
def ml() -> MovieLens:
    if not (ML_DIR / "ratings.csv").is_file():
        pytest.fail(
            f"ml-latest-small is missing at {ML_DIR}: it must be available from ../shared/data "
            f"(or ${ENV_DIR}); these tests do not skip"
        )
    return load_movielens(ML_DIR)


@pytest.fixture(scope="module")
def split(ml: MovieLens) -> MovieLensSplit:
    return leave_last_out(ml, cold_fraction=0.1, seed=0)


def test_files_load_with_the_documented_counts(ml: MovieLens) -> None:
    assert len(ml.sequences) == 610
    assert ml.n_ratings == 100_836
    assert len(ml.posts) == 9_742
    assert len(ml.rated_items()) == 9_724
    assert ml.path == ML_DIR


def test_movies_become_posts(ml: MovieLens) -> None:
    toy = ml.posts[1]
    assert toy.text.startswith("Toy Story (1995). genres: Adventure, Animation, Children")
    assert toy.topic == "Adventure"
    assert toy.format == PostFormat.article
    assert toy.author_id == PLACEHOLDER_AUTHOR_ID
    first = min(int(s["ts"][s["item"] == 1].min()) for s in ml.sequences.values() if 1 in s["item"])
    assert toy.created_at == first
    # tags: deduplicated case-insensitively, capped, part of the text
    for item, tags in ml.tags.items():
        assert len(tags) <= 8
        assert len({t.lower() for t in tags}) == len(tags)
        if tags:
            assert ("tags: " + tags[0]) in ml.posts[item].text
    assert any(ml.tags.values())
    no_genre = [i for i, g in ml.genres.items() if not g]
    assert no_genre and all(ml.posts[i].topic == "movie" for i in no_genre)


def test_sequences_are_in_time_order(ml: MovieLens) -> None:
    for seq in ml.sequences.values():
        assert np.all(np.diff(seq["ts"]) >= 0)
        assert len(np.unique(seq["item"])) == len(seq)
    assert rating_action(4.0) == Action.like and rating_action(3.5) == Action.click


def test_leave_last_out_has_no_leakage(ml: MovieLens, split: MovieLensSplit) -> None:
    assert len(split.cases) == 610
    for case in split.cases:
        seq = ml.sequences[case.user_id]
        assert case.target == int(seq["item"][-1])  # the last rating is the target
        assert case.target not in case.seen
        assert case.seen == frozenset(int(i) for i in seq["item"][:-1])
        # the history is the past only: nothing at or after the target's position
        target_ts = int(seq["ts"][-1])
        assert np.all(case.history["ts"] <= target_ts)
        assert case.target not in set(case.history["item"].tolist())
        want = seq[:-1][~np.isin(seq[:-1]["item"], list(split.cold_items))]
        assert np.array_equal(case.history, want)
        train = split.train[case.user_id]
        assert np.array_equal(train, want)  # training sees exactly the same past, no target


def test_cold_items_are_held_out_entirely(ml: MovieLens, split: MovieLensSplit) -> None:
    cold = split.cold_items
    assert len(cold) == round(0.1 * 9_724)
    assert cold <= set(ml.rated_items().tolist())
    assert leave_last_out(ml, seed=0).cold_items == cold  # fixed by the seed
    assert leave_last_out(ml, seed=1).cold_items != cold
    for rows in split.train.values():
        assert not cold & set(rows["item"].tolist())
    for case in split.cases:
        assert not cold & set(case.history["item"].tolist())
    assert all(split.counts[i].views == 0 and split.counts[i].likes == 0 for i in cold)
    assert not cold & set(split.popularity_ranking().tolist())
    cold_cases = split.cold_cases
    assert cold_cases and all(c.target in cold for c in cold_cases)
    assert len(cold_cases) + len(split.warm_cases) == 610
    sizes = describe(split)
    assert sizes["cold_queries"] == len(cold_cases) and sizes["cold_movies"] == len(cold)


def test_training_pairs_never_touch_cold_items_or_targets(split: MovieLensSplit) -> None:
    users = [c.user_id for c in split.cases[:20]]
    sub = restrict_users(split, users)
    pairs, exclude = sub.training_pairs(160, max_pairs_per_user=None)
    cold_titles = [sub.data.titles[i] for i in sub.cold_items]
    assert cold_titles
    targets = {c.user_id: c.target for c in sub.cases}
    owners = [uid for uid, rows in sub.train.items() for _ in range(max(len(rows) - 1, 0))]
    assert len(pairs) == len(exclude) == len(owners) > 100
    for (prompt, positive), excl, uid in zip(pairs, exclude, owners, strict=True):
        assert positive not in split.cold_items
        assert positive != targets[uid]  # the test target is never a training positive
        # the user's training movies are never negatives for them; the target is not among them
        assert excl == frozenset(int(i) for i in sub.train[uid]["item"])
        assert targets[uid] not in excl
        for title in cold_titles:
            assert f": {title};" not in prompt and not prompt.endswith(f": {title}")


def test_pair_prompts_show_only_earlier_positions(split: MovieLensSplit) -> None:
    uid = next(u for u, rows in split.train.items() if len(rows) > 30)
    sub = restrict_users(split, [uid])
    pairs, _ = sub.training_pairs(512, max_pairs_per_user=5, positions="recent")
    rows = sub.train[uid]
    assert [p for _, p in pairs] == [int(i) for i in rows["item"][-5:]]
    for j, (prompt, positive) in zip(range(len(rows) - 5, len(rows)), pairs, strict=True):
        assert prompt == sub.member_prompt(uid, rows[:j], 512)
        newest = sub.data.titles[int(rows["item"][j - 1])]
        assert prompt.endswith(newest)  # the newest history item is the previous position
        assert f": {sub.data.titles[positive]};" not in prompt
    random_pairs, _ = sub.training_pairs(512, max_pairs_per_user=5, positions="random", seed=1)
    assert len(random_pairs) == 5 and random_pairs != pairs


def test_member_prompt_has_no_demographics_and_post_prompts_cover_the_corpus(
    split: MovieLensSplit,
) -> None:
    sub = restrict_users(split, [c.user_id for c in split.cases[:5]])
    member = sub.member(sub.cases[0].user_id)
    assert member.demographics.age_band is None and member.demographics.gender is None
    queries, targets, exclude = sub.eval_queries(128, cases=sub.cases)
    assert len(queries) == len(targets) == 5
    assert all(q.startswith("[member]") and "activity:" in q for q in queries)
    assert all(t not in e for t, e in zip(targets, exclude, strict=True))
    texts = sub.post_texts(96)
    assert set(texts) == set(sub.data.posts) and set(targets) <= set(texts)
    assert all("<views_p" in t for t in texts.values())


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MovieLensError, match="does not exist"):
        load_movielens(tmp_path / "nope")
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n")
    with pytest.raises(MovieLensError, match=r"lacks movies\.csv, tags\.csv"):
        load_movielens(tmp_path)
