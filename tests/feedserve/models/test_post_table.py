"""PostEmbeddingTable: the offline snapshot plus the nearline embedding log, tailed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from feedserve.models.index import ExhaustiveIndex
from feedserve.models.post_table import (
    SNAPSHOT_AUTHORS,
    SNAPSHOT_META,
    PostEmbeddingTable,
    read_snapshot,
    write_snapshot,
)
from feedserve.store import EmbeddingRecord, FileEmbeddingLog

DIM = 8
N = 40
SPACE = "minilm-l6+buckets:5e1c"
OTHER = "minilm-l6+buckets:99aa"


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture
def snapshot(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = np.arange(1, N + 1, dtype=np.int64) * 10
    emb = rng.normal(size=(N, DIM)).astype(np.float32)
    index_dir = tmp_path / "index"
    write_snapshot(index_dir, ids, emb, author_ids=snapshot_author(ids), space=SPACE)
    return index_dir, ids, emb


def snapshot_author(ids: np.ndarray) -> np.ndarray:
    return (np.asarray(ids) // 10) % 4 + 1  # authors 1..4


@pytest.fixture
def log(tmp_path: Path) -> FileEmbeddingLog:
    return FileEmbeddingLog(tmp_path / "nearline" / "post_embeddings.log")


def upsert(post_id: int, vec: np.ndarray, author: int = 0, space: str = SPACE) -> EmbeddingRecord:
    return EmbeddingRecord("upsert", post_id, np.asarray(vec, dtype=np.float32), author, space)


def delete(post_id: int, space: str = SPACE) -> EmbeddingRecord:
    return EmbeddingRecord("delete", post_id, None, 0, space)


def top1(table: PostEmbeddingTable, vec: np.ndarray) -> int:
    ids, _ = table.search(unit(vec)[None, :].astype(np.float32), 1)
    return int(ids[0, 0])


def test_snapshot_round_trip(snapshot: tuple[Path, np.ndarray, np.ndarray]) -> None:
    index_dir, ids, emb = snapshot
    snap = read_snapshot(index_dir)
    np.testing.assert_array_equal(snap.ids, ids)
    np.testing.assert_array_equal(snap.embeddings, emb)
    np.testing.assert_array_equal(snap.author_ids, snapshot_author(ids))
    assert snap.space == SPACE
    assert snap.dim == DIM
    assert json.loads((index_dir / SNAPSHOT_META).read_text())["space"] == SPACE
    table = PostEmbeddingTable(index_dir, None)
    assert table.dim == DIM
    assert table.space == SPACE
    np.testing.assert_array_equal(table.index.authors_of(ids), snapshot_author(ids))
    assert table.refresh(force=True) == 0  # no log: nothing to apply
    assert sorted(table.index.ids().tolist()) == ids.tolist()
    assert top1(table, emb[7]) == ids[7]


def test_missing_snapshot_says_how_to_build(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="feedserve build"):
        PostEmbeddingTable(tmp_path / "nowhere", None)


def test_log_records_become_searchable_after_refresh(
    snapshot: tuple[Path, np.ndarray, np.ndarray], log: FileEmbeddingLog
) -> None:
    index_dir, _, _ = snapshot
    rng = np.random.default_rng(1)
    table = PostEmbeddingTable(index_dir, log, poll_s=3600.0)  # only forced refreshes apply
    new_vec = rng.normal(size=DIM).astype(np.float32)
    log.append([upsert(9_001, new_vec)])
    assert 9_001 not in table.index  # appended after construction: not applied yet
    assert top1(table, new_vec) != 9_001  # search's own refresh is rate-limited here
    assert table.refresh(force=True) == 1
    assert top1(table, new_vec) == 9_001
    got, found = table.get(np.array([9_001]))
    assert found.tolist() == [True]
    np.testing.assert_allclose(got[0], unit(new_vec), atol=1e-6)
    assert table.refresh(force=True) == 0  # the cursor moved past the record


def test_search_polls_the_log_itself(
    snapshot: tuple[Path, np.ndarray, np.ndarray], log: FileEmbeddingLog
) -> None:
    index_dir, _, _ = snapshot
    table = PostEmbeddingTable(index_dir, log, poll_s=0.0)  # every search polls
    vec = np.random.default_rng(2).normal(size=DIM).astype(np.float32)
    log.append([upsert(9_002, vec)])
    assert top1(table, vec) == 9_002


def test_log_overwrites_and_deletes_snapshot_posts(
    snapshot: tuple[Path, np.ndarray, np.ndarray], log: FileEmbeddingLog
) -> None:
    index_dir, ids, emb = snapshot
    table = PostEmbeddingTable(index_dir, log, poll_s=3600.0)
    moved = -emb[3]  # post ids[3] now points the other way
    log.append([upsert(int(ids[3]), moved), delete(int(ids[5])), delete(424_242)])
    table.refresh(force=True)
    assert len(table.index) == N - 1
    assert int(ids[5]) not in table.index
    assert top1(table, emb[5]) != ids[5]
    got, found = table.get(ids[[3, 5]])
    assert found.tolist() == [True, False]
    np.testing.assert_allclose(got[0], unit(moved), atol=1e-6)
    hits, _ = table.search(unit(emb[5])[None, :], N)
    assert int(ids[5]) not in hits[0].tolist()


def test_a_later_table_replays_to_the_same_state(
    snapshot: tuple[Path, np.ndarray, np.ndarray], log: FileEmbeddingLog
) -> None:
    index_dir, ids, _ = snapshot
    rng = np.random.default_rng(3)
    first = PostEmbeddingTable(index_dir, log, poll_s=3600.0)
    batches = [
        [upsert(5_000 + i, rng.normal(size=DIM)) for i in range(5)],
        [delete(5_001), delete(int(ids[0])), upsert(int(ids[1]), rng.normal(size=DIM))],
        [upsert(5_001, rng.normal(size=DIM)), upsert(5_002, rng.normal(size=DIM))],  # re-add
        [delete(5_003)],
    ]
    for batch in batches:
        log.append(batch)
        first.refresh(force=True)
    second = PostEmbeddingTable(index_dir, log, poll_s=3600.0)  # a restarted replica

    want = (set(ids.tolist()) | {5_000, 5_001, 5_002, 5_004}) - {int(ids[0])}
    assert set(first.index.ids().tolist()) == want
    assert set(second.index.ids().tolist()) == want
    every = np.array(sorted(want), dtype=np.int64)
    np.testing.assert_array_equal(first.get(every)[0], second.get(every)[0])
    queries = rng.normal(size=(4, DIM)).astype(np.float32)
    a_ids, a_scores = first.search(queries, 12)
    b_ids, b_scores = second.search(queries, 12)
    np.testing.assert_array_equal(a_ids, b_ids)
    np.testing.assert_allclose(a_scores, b_scores, atol=1e-6)


def test_old_snapshot_without_authors_or_space_loads(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    ids = np.arange(1, 11, dtype=np.int64)
    emb = rng.normal(size=(10, DIM)).astype(np.float32)
    index_dir = tmp_path / "index"
    write_snapshot(index_dir, ids, emb)
    (index_dir / SNAPSHOT_AUTHORS).unlink()  # as written before author ids existed
    (index_dir / SNAPSHOT_META).write_text(json.dumps({"count": 10, "dim": DIM}))
    snap = read_snapshot(index_dir)
    assert snap.space == ""
    assert snap.author_ids.dtype == np.int64 and not snap.author_ids.any()
    assert len(snap.author_ids) == 10
    table = PostEmbeddingTable(index_dir, None)
    assert table.space == ""
    assert top1(table, emb[4]) == 5
    assert not table.index.authors_of(ids).any()


def test_snapshot_arguments_are_checked(tmp_path: Path) -> None:
    emb = np.zeros((3, DIM), dtype=np.float32)
    with pytest.raises(ValueError, match="author_ids"):
        write_snapshot(tmp_path / "a", np.arange(1, 4), emb, author_ids=np.arange(2))
    with pytest.raises(ValueError, match="embeddings"):
        write_snapshot(tmp_path / "b", np.arange(1, 5), emb)


def test_blocked_authors_cover_snapshot_and_log_posts(
    snapshot: tuple[Path, np.ndarray, np.ndarray], log: FileEmbeddingLog
) -> None:
    index_dir, ids, emb = snapshot
    table = PostEmbeddingTable(index_dir, log, poll_s=3600.0)
    vec = emb[6] + 0.01  # close to post ids[6]
    log.append([upsert(9_100, vec, author=42)])
    table.refresh(force=True)
    q = unit(vec)[None, :].astype(np.float32)
    first = table.search(q, 2)[0][0].tolist()
    assert set(first) == {9_100, int(ids[6])}
    got = table.search(
        np.repeat(q, 3, axis=0), 2 * N, None, [[42], [int(snapshot_author(ids[6:7])[0])], []]
    )[0]
    assert 9_100 not in got[0].tolist() and int(ids[6]) in got[0].tolist()
    assert 9_100 in got[1].tolist() and int(ids[6]) not in got[1].tolist()
    assert {9_100, int(ids[6])} <= set(got[2].tolist())
    blocked_author = int(snapshot_author(ids[6:7])[0])
    assert all(
        int(snapshot_author(np.array([p]))[0]) != blocked_author
        for p in got[1].tolist()
        if p and p != 9_100
    )
    # session context: embeddings of engaged posts, unknown ids flagged
    emb_of, found = table.embeddings_of(np.array([9_100, 123, int(ids[0])]))
    assert found.tolist() == [True, False, True]
    assert emb_of.dtype == np.float32
    np.testing.assert_allclose(emb_of[0], unit(vec), atol=1e-6)
    assert not emb_of[1].any()


def test_log_records_of_another_space_are_skipped_but_deletes_apply(
    snapshot: tuple[Path, np.ndarray, np.ndarray], log: FileEmbeddingLog
) -> None:
    index_dir, ids, emb = snapshot
    table = PostEmbeddingTable(index_dir, log, poll_s=3600.0)
    rng = np.random.default_rng(5)
    log.append(
        [
            upsert(9_201, rng.normal(size=DIM), space=OTHER),  # a newer encoder's vector
            upsert(int(ids[2]), -emb[2], space=OTHER),  # would move a snapshot post
            upsert(9_202, rng.normal(size=DIM), space=""),  # unknown space: applies
            upsert(9_203, rng.normal(size=DIM), space=SPACE),
            delete(int(ids[4]), space=OTHER),  # deletes apply whatever their space
            delete(9_203, space=OTHER),
        ]
    )
    assert table.refresh(force=True) == 6
    assert table.skipped_other_space == 2
    assert 9_201 not in table.index
    assert 9_202 in table.index
    assert 9_203 not in table.index
    assert int(ids[4]) not in table.index
    got, found = table.get(ids[2:3])
    assert found.all()
    np.testing.assert_allclose(got[0], unit(emb[2]), atol=1e-6)  # unchanged
    assert len(table.index) == N - 1 + 1


def test_log_upserts_of_the_wrong_dim_are_skipped(
    snapshot: tuple[Path, np.ndarray, np.ndarray], log: FileEmbeddingLog
) -> None:
    index_dir, _, _ = snapshot
    table = PostEmbeddingTable(index_dir, log, poll_s=3600.0)
    rng = np.random.default_rng(6)
    log.append([upsert(9_301, rng.normal(size=DIM + 3)), upsert(9_302, rng.normal(size=DIM))])
    table.refresh(force=True)
    assert table.skipped_bad_dim == 1
    assert 9_301 not in table.index and 9_302 in table.index
    assert table.refresh(force=True) == 0  # the cursor moved past both


def test_restarted_replica_catches_up_without_duplicates(
    snapshot: tuple[Path, np.ndarray, np.ndarray], log: FileEmbeddingLog
) -> None:
    index_dir, ids, _ = snapshot
    rng = np.random.default_rng(7)
    first = PostEmbeddingTable(index_dir, log, poll_s=3600.0)
    # the same posts logged again and again (retries, edits), a snapshot post re-logged
    for round_ in range(3):
        log.append([upsert(6_000 + i, rng.normal(size=DIM), author=i + round_) for i in range(20)])
        log.append([upsert(int(ids[0]), rng.normal(size=DIM), author=99)])
        first.refresh(force=True)
    log.append([delete(6_005), upsert(6_100, rng.normal(size=DIM), space=OTHER)])
    first.refresh(force=True)
    second = PostEmbeddingTable(index_dir, log, poll_s=3600.0)
    for table in (first, second):
        live = table.index.ids()
        assert len(live) == len(set(live.tolist())) == len(table.index) == N + 19
        assert 6_005 not in table.index and 6_100 not in table.index
        assert table.index.authors_of([int(ids[0]), 6_001]).tolist() == [99, 1 + 2]
    every = np.array(sorted(first.index.ids().tolist()), dtype=np.int64)
    np.testing.assert_array_equal(first.get(every)[0], second.get(every)[0])
    q = rng.normal(size=(5, DIM)).astype(np.float32)
    blocked = [[99], [], [1, 2], [3], [4]]
    a_ids, a_scores = first.search(q, 30, None, blocked)
    b_ids, b_scores = second.search(q, 30, None, blocked)
    np.testing.assert_array_equal(a_ids, b_ids)
    np.testing.assert_allclose(a_scores, b_scores, atol=1e-6)


def test_half_precision_table_on_cpu(
    snapshot: tuple[Path, np.ndarray, np.ndarray], log: FileEmbeddingLog
) -> None:
    index_dir, ids, emb = snapshot
    full = PostEmbeddingTable(index_dir, log)
    half = PostEmbeddingTable(index_dir, log, dtype="float16", device="cpu")
    assert half.index.dtype != full.index.dtype
    u = ExhaustiveIndex.HALF_TOLERANCE[half.index.dtype]
    q = unit(np.random.default_rng(8).normal(size=(4, DIM))).astype(np.float32)
    f_ids, f_scores = full.search(q, 10)
    h_ids, h_scores = half.search(q, 10)
    assert (np.abs(h_scores - f_scores) <= u + 1e-6).all()
    for i in range(4):  # differences only at the boundary
        assert len(set(f_ids[i].tolist()) ^ set(h_ids[i].tolist())) <= 2
    assert top1(half, emb[9]) == ids[9]
