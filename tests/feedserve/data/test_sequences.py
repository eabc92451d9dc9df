"""Per-user sequences: the real ML-100K and ml-latest-small files (read from ../shared/data,
never copied), a tiny synthetic demo data set, and hand-made events."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from feedserve.contracts import Action
from feedserve.data.io import write_dataset
from feedserve.data.sequences import (
    ACTION_STRENGTH,
    DATASETS,
    SequenceData,
    SequenceDataError,
    default_sequence_dir,
    demo_sequences,
    from_events,
    load_sequences,
    rating_actions,
)
from feedserve.data.synthetic import DemoConfig, generate


def _require(name: str) -> Path:
    path = default_sequence_dir(name)
    if not path.is_dir():
        pytest.fail(f"{name} is missing at {path}: it must be available from ../shared/data")
    return path


@pytest.fixture(scope="module")
def ml100k() -> SequenceData:
    return load_sequences("ml-100k", _require("ml-100k"))


@pytest.fixture(scope="module")
def mlsmall() -> SequenceData:
    return load_sequences("ml-latest-small", _require("ml-latest-small"))


def _check_shape(data: SequenceData) -> None:
    assert data.item_ids[0] == 0 and np.all(np.diff(data.item_ids[1:]) > 0)
    assert np.all(np.diff(data.user_ids) > 0)
    for items, actions, ts in zip(data.items, data.actions, data.timestamps, strict=True):
        assert len(items) == len(actions) == len(ts) >= 1
        assert items.dtype == actions.dtype == ts.dtype == np.int64
        assert items.min() >= 1 and items.max() <= data.n_items
        assert actions.min() >= 1 and actions.max() < data.n_actions
        assert np.all(np.diff(ts) >= 0)


def test_ml100k_counts_catalogue_and_order(ml100k: SequenceData) -> None:
    assert ml100k.describe() == {
        "users": 943,
        "items": 1682,
        "events": 100_000,
        "rated_items": 1682,
        "min_len": 20,
        "max_len": 737,
    }
    assert list(ml100k.item_ids[1:4]) == [1, 2, 3]  # raw ids 1..1682 map onto themselves
    _check_shape(ml100k)
    # user 1's events, sorted by time with ties in file order, straight from u.data
    rows = np.loadtxt(default_sequence_dir("ml-100k") / "u.data", dtype=np.int64, ndmin=2)
    mine = rows[rows[:, 0] == 1]
    mine = mine[np.argsort(mine[:, 3], kind="stable")]
    assert ml100k.user_ids[0] == 1
    assert np.array_equal(ml100k.item_ids[ml100k.items[0]], mine[:, 1])
    assert np.array_equal(ml100k.timestamps[0], mine[:, 3])
    assert np.array_equal(ml100k.actions[0], rating_actions(mine[:, 2]))


def test_ml_latest_small_keeps_every_movie(mlsmall: SequenceData) -> None:
    info = mlsmall.describe()
    assert (info["users"], info["items"], info["events"]) == (610, 9742, 100_836)
    assert info["rated_items"] == 9724  # 18 movies are never rated but stay in the catalogue
    _check_shape(mlsmall)
    assert set(np.unique(np.concatenate(mlsmall.actions))) == {int(Action.click), int(Action.like)}
    raw = mlsmall.item_ids[1:]
    assert np.array_equal(mlsmall.item_ids[mlsmall.dense_ids(raw)], raw)


def test_from_events_sorts_by_time_ties_in_file_order_and_remaps() -> None:
    data = from_events(
        "toy",
        catalogue=[50, 10, 30, 70],
        users=np.array([2, 1, 2, 1, 2]),
        items=np.array([30, 10, 50, 70, 10]),
        actions=np.array([2, 3, 3, 2, 2]),
        timestamps=np.array([5, 9, 5, 1, 3]),
    )
    assert list(data.item_ids) == [0, 10, 30, 50, 70]
    assert list(data.user_ids) == [1, 2]
    assert [list(s) for s in data.items] == [[4, 1], [1, 2, 3]]  # user 2: ts 3, then 5, 5
    assert [list(s) for s in data.timestamps] == [[1, 9], [3, 5, 5]]
    assert [list(s) for s in data.actions] == [[2, 3], [2, 2, 3]]
    with pytest.raises(KeyError, match="item 99"):
        data.dense_ids([10, 99])


def test_rating_actions_like_from_four_stars() -> None:
    assert list(rating_actions(np.array([1.0, 3.5, 4.0, 5.0]))) == [2, 2, 3, 3]


def test_demo_one_event_per_pair_with_the_strongest_action(tmp_path: Path) -> None:
    ds = generate(DemoConfig(members=30, posts=60, seed=3))
    write_dataset(ds, tmp_path / "demo")
    data = demo_sequences(tmp_path / "demo")
    _check_shape(data)
    assert data.n_items == 60  # every post, shown or not
    rows = ds.interactions
    strength = {int(a): r for r, a in enumerate(ACTION_STRENGTH)}
    for u, items, actions, ts in zip(
        data.user_ids, data.items, data.actions, data.timestamps, strict=True
    ):
        assert len(set(items.tolist())) == len(items)
        mine = rows[rows["member_id"] == u]
        for item, action, t in zip(data.item_ids[items], actions, ts, strict=True):
            pair = mine[mine["post_id"] == item]
            assert t == pair["ts"].min()
            assert action == max(pair["action"].tolist(), key=lambda a: strength[int(a)])
    engaged = demo_sequences(tmp_path / "demo", include_impressions=False)
    assert engaged.n_events < data.n_events
    assert int(Action.impression) not in np.concatenate(engaged.actions).tolist()


def test_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(SequenceDataError, match="does not exist"):
        load_sequences("ml-100k", tmp_path / "nope")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "u.data").write_text("1\t1\t5\t1\n")
    with pytest.raises(SequenceDataError, match=r"lacks u\.item"):
        load_sequences("ml-100k", tmp_path / "half")
    with pytest.raises(SequenceDataError, match="unknown data set"):
        load_sequences("ml-25m")
    with pytest.raises(SequenceDataError, match="feedserve demo-data"):
        load_sequences("demo", tmp_path / "nope")
    assert DATASETS == ("ml-100k", "ml-latest-small", "demo")
