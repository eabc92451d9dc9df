"""EmbeddingLog contract (file and Redis stream) and the file log's crash/torn-tail behaviour."""

from __future__ import annotations

import multiprocessing as mp
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from feedserve.store.base import EmbeddingLog, EmbeddingRecord
from feedserve.store.filelog import HEADER_SIZE, FileEmbeddingLog, encode_record
from feedserve.store.redis_store import RedisEmbeddingLog, client_for

DIM = 8
SPACE = "minilm-l6:3f9a"  # an encoder fingerprint


def emb(post_id: int, dim: int = DIM) -> np.ndarray:
    return (np.arange(dim, dtype=np.float32) + np.float32(post_id)) / np.float32(7.0)


def author_of(post_id: int) -> int:
    return 3 * post_id + 1


def upsert(post_id: int, dim: int = DIM, space: str = SPACE) -> EmbeddingRecord:
    return EmbeddingRecord("upsert", post_id, emb(post_id, dim), author_of(post_id), space)


def delete(post_id: int, space: str = SPACE) -> EmbeddingRecord:
    return EmbeddingRecord("delete", post_id, None, author_of(post_id), space)


def same(a: list[EmbeddingRecord], b: list[EmbeddingRecord]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if (x.op, x.post_id, x.author_id, x.space) != (y.op, y.post_id, y.author_id, y.space):
            return False
        if x.embedding is None or y.embedding is None:
            if x.embedding is not y.embedding:
                return False
        elif x.embedding.dtype != np.float32 or not np.array_equal(x.embedding, y.embedding):
            return False
    return True


def read_all(log: EmbeddingLog, cursor: str = "", page: int = 10_000):
    out: list[EmbeddingRecord] = []
    while True:
        recs, cursor = log.read(cursor, max_records=page)
        if not recs:
            return out, cursor
        out.extend(recs)


# --- contract (both backends) ----------------------------------------------------------------


def test_append_and_read_from_cursor(embedding_log: EmbeddingLog) -> None:
    assert isinstance(embedding_log, EmbeddingLog)
    assert embedding_log.read("") == ([], "")
    first = [upsert(1), upsert(2, dim=384), delete(1)]
    embedding_log.append(first)
    embedding_log.append([])
    recs, cursor = embedding_log.read("")
    assert same(recs, first)
    assert cursor != ""
    assert embedding_log.read(cursor) == ([], cursor)
    second = [upsert(3), delete(2), upsert(1)]
    embedding_log.append(second)
    recs2, cursor2 = embedding_log.read(cursor)
    assert same(recs2, second)
    assert embedding_log.read(cursor2) == ([], cursor2)
    everything, _ = read_all(embedding_log)
    assert same(everything, first + second)


def test_paging_with_max_records(embedding_log: EmbeddingLog) -> None:
    recs = [upsert(i) if i % 4 else delete(i) for i in range(1, 24)]
    embedding_log.append(recs)
    got, _ = read_all(embedding_log, page=5)
    assert same(got, recs)


def test_upsert_without_embedding_is_rejected(embedding_log: EmbeddingLog) -> None:
    with pytest.raises(ValueError):
        embedding_log.append([EmbeddingRecord("upsert", 1, None)])


def test_author_and_space_round_trip(embedding_log: EmbeddingLog) -> None:
    recs = [
        EmbeddingRecord("upsert", 7, emb(7), author_id=123_456_789_012, space="e5-base@v2 ✓"),
        EmbeddingRecord("upsert", 8, emb(8)),  # defaults: unknown author, any space
        EmbeddingRecord("delete", 7, None, author_id=123_456_789_012, space="e5-base@v2 ✓"),
        EmbeddingRecord("delete", 9, None, space="other-space"),  # a delete from elsewhere
        EmbeddingRecord("upsert", 10, emb(10, dim=3), author_id=-4, space=""),
    ]
    embedding_log.append(recs)
    got, _ = read_all(embedding_log)
    assert same(got, recs)
    assert [(r.author_id, r.space) for r in got] == [
        (123_456_789_012, "e5-base@v2 ✓"),
        (0, ""),
        (123_456_789_012, "e5-base@v2 ✓"),
        (0, "other-space"),
        (-4, ""),
    ]


# --- file log specifics ----------------------------------------------------------------------


def test_file_log_torn_tail_is_skipped_then_completed(tmp_path: Path) -> None:
    path = tmp_path / "emb.log"
    log = FileEmbeddingLog(path)
    log.append([upsert(1), delete(5)])
    blob = encode_record(upsert(2, dim=64))
    cut = len(blob) // 2
    with open(path, "ab") as f:  # a writer caught in the middle of its write
        f.write(blob[:cut])
    recs, cursor = log.read("")
    assert same(recs, [upsert(1), delete(5)])
    assert log.read(cursor) == ([], cursor)
    with open(path, "ab") as f:
        f.write(blob[cut:])
    recs, cursor2 = log.read(cursor)
    assert same(recs, [upsert(2, dim=64)])
    assert int(cursor2) == path.stat().st_size


def test_file_log_partial_length_prefix(tmp_path: Path) -> None:
    path = tmp_path / "emb.log"
    log = FileEmbeddingLog(path)
    log.append([upsert(1)])
    blob = encode_record(upsert(2))
    with open(path, "ab") as f:
        f.write(blob[:2])
    recs, cursor = log.read("")
    assert same(recs, [upsert(1)])
    with open(path, "ab") as f:
        f.write(blob[2:])
    assert same(log.read(cursor)[0], [upsert(2)])


def test_file_log_writer_cuts_a_crashed_tail(tmp_path: Path) -> None:
    path = tmp_path / "emb.log"
    FileEmbeddingLog(path).append([upsert(1)])
    with open(path, "ab") as f:  # a writer died mid-record, leaving half a record
        f.write(encode_record(upsert(9))[:20])
    reader = FileEmbeddingLog(path)
    recs, cursor = reader.read("")
    assert same(recs, [upsert(1)])
    FileEmbeddingLog(path).append([upsert(2), delete(1)])  # a new writer process
    assert same(reader.read(cursor)[0], [upsert(2), delete(1)])
    everything, _ = read_all(reader)
    assert same(everything, [upsert(1), upsert(2), delete(1)])


def test_file_log_corrupt_record_is_not_returned(tmp_path: Path) -> None:
    path = tmp_path / "emb.log"
    log = FileEmbeddingLog(path)
    log.append([upsert(1), upsert(2)])
    size_one = HEADER_SIZE + len(encode_record(upsert(1)))
    data = bytearray(path.read_bytes())
    data[size_one + 20] ^= 0xFF  # the last record did not fully reach the disk before a crash
    path.write_bytes(bytes(data))
    recs, cursor = log.read("")
    assert same(recs, [upsert(1)])
    assert int(cursor) == size_one
    assert log.read(cursor) == ([], cursor)
    # the restarted writer drops the bad record and appends after the good one
    FileEmbeddingLog(path).append([upsert(3)])
    assert same(log.read(cursor)[0], [upsert(3)])


def test_file_log_rejects_foreign_files_and_bad_cursors(tmp_path: Path) -> None:
    path = tmp_path / "not-a-log"
    path.write_bytes(b"hello world, this is not an embedding log")
    with pytest.raises(ValueError):
        FileEmbeddingLog(path).read("")
    with pytest.raises(ValueError):
        FileEmbeddingLog(path).append([upsert(1)])
    with pytest.raises(ValueError):
        FileEmbeddingLog(tmp_path / "x.log").read("3")


def test_file_log_missing_file_and_header_only(tmp_path: Path) -> None:
    log = FileEmbeddingLog(tmp_path / "deep" / "dir" / "emb.log")
    assert log.read("") == ([], "")
    log.append([delete(3)])
    recs, cursor = log.read("")
    assert same(recs, [delete(3)])
    assert log.read(cursor) == ([], cursor)


def encode_v1(rec: EmbeddingRecord) -> bytes:
    """A record as version 1 of the file format wrote it (no author, no space)."""
    payload = b"" if rec.embedding is None else rec.embedding.astype("<f4").tobytes()
    body = struct.pack("<BqI", 1 if rec.op == "upsert" else 2, rec.post_id, len(payload) // 4)
    head = struct.pack("<I", len(body) + len(payload))
    blob = head + body + payload
    return blob + struct.pack("<I", zlib.crc32(blob))


def write_v1_file(path: Path, records: list[EmbeddingRecord]) -> None:
    header = struct.pack("<8sII", b"FSEMBLOG", 1, 0)
    path.write_bytes(header + b"".join(encode_v1(r) for r in records))


def version_of(path: Path) -> int:
    return int(struct.unpack_from("<I", path.read_bytes(), 8)[0])


def test_file_log_reads_version_1_files(tmp_path: Path) -> None:
    path = tmp_path / "old.log"
    old = [
        EmbeddingRecord("upsert", 1, emb(1)),
        EmbeddingRecord("delete", 2, None),
        EmbeddingRecord("upsert", 3, emb(3, dim=5)),
    ]
    write_v1_file(path, old)
    log = FileEmbeddingLog(path)
    recs, cursor = log.read("")
    assert same(recs, old)
    assert all(r.author_id == 0 and r.space == "" for r in recs)
    assert version_of(path) == 1  # reading does not touch the file

    # a new writer appends v2 records after the v1 ones and marks the file as version 2
    log.append([upsert(4), delete(1)])
    assert version_of(path) == 2
    recs2, _ = log.read(cursor)  # the reader's byte cursor is still valid
    assert same(recs2, [upsert(4), delete(1)])
    everything, _ = read_all(FileEmbeddingLog(path))
    assert same(everything, [*old, upsert(4), delete(1)])


def test_file_log_v1_torn_tail_and_unknown_versions(tmp_path: Path) -> None:
    path = tmp_path / "old.log"
    write_v1_file(path, [EmbeddingRecord("upsert", 1, emb(1))])
    with open(path, "ab") as f:  # half a v1 record
        f.write(encode_v1(EmbeddingRecord("upsert", 2, emb(2)))[:15])
    recs, _ = FileEmbeddingLog(path).read("")
    assert same(recs, [EmbeddingRecord("upsert", 1, emb(1))])
    FileEmbeddingLog(path).append([upsert(5)])  # cuts the torn v1 tail
    everything, _ = read_all(FileEmbeddingLog(path))
    assert same(everything, [EmbeddingRecord("upsert", 1, emb(1)), upsert(5)])

    future = tmp_path / "future.log"
    future.write_bytes(struct.pack("<8sII", b"FSEMBLOG", 3, 0))
    with pytest.raises(ValueError, match="version 3"):
        FileEmbeddingLog(future).read("")
    with pytest.raises(ValueError, match="version 3"):
        FileEmbeddingLog(future).append([upsert(1)])


def test_file_log_rejects_oversized_space_names(tmp_path: Path) -> None:
    log = FileEmbeddingLog(tmp_path / "emb.log")
    with pytest.raises(ValueError, match="space"):
        log.append([upsert(1), upsert(2, space="x" * 5000)])
    assert log.read("") == ([], "")  # nothing of the batch was written


def test_redis_entries_without_author_or_space_read_as_defaults(redis_url: str) -> None:
    client = client_for(redis_url)
    prefix = f"fs-test-v1-{time.monotonic_ns()}"
    log = RedisEmbeddingLog(client, prefix=prefix)
    try:  # entries as written before the stream carried author and space
        client.xadd(log.key, {"op": "upsert", "post_id": "5", "emb": emb(5).tobytes()})
        client.xadd(log.key, {"op": "delete", "post_id": "6", "emb": b""})
        log.append([upsert(7)])
        got, _ = read_all(log)
        assert same(
            got,
            [EmbeddingRecord("upsert", 5, emb(5)), EmbeddingRecord("delete", 6, None), upsert(7)],
        )
    finally:
        client.delete(log.key)


# --- concurrent writers in two processes -----------------------------------------------------


def _append_in_child(backend: str, target: str, redis_url: str, ids: list[int]) -> None:
    log: EmbeddingLog
    if backend == "file":
        log = FileEmbeddingLog(target)
    else:
        log = RedisEmbeddingLog(client_for(redis_url), prefix=target)
    for k in range(0, len(ids), 7):
        log.append([upsert(i) for i in ids[k : k + 7]])


def test_two_processes_append_concurrently(
    embedding_backend: str, embedding_target: str, embedding_log: EmbeddingLog, redis_url: str
) -> None:
    child_ids = list(range(1, 301))
    parent_ids = list(range(1001, 1301))
    seen: list[EmbeddingRecord] = []
    stop = threading.Event()
    cursor = ""

    def tail() -> None:  # a reader tailing while both write
        nonlocal cursor
        reader = (
            FileEmbeddingLog(embedding_target)
            if embedding_backend == "file"
            else RedisEmbeddingLog(client_for(redis_url), prefix=embedding_target)
        )
        while not stop.is_set():
            recs, cursor = reader.read(cursor, max_records=50)
            seen.extend(recs)
            if not recs:
                time.sleep(0.002)

    ctx = mp.get_context("fork")
    child = ctx.Process(
        target=_append_in_child, args=(embedding_backend, embedding_target, redis_url, child_ids)
    )
    reader_thread = threading.Thread(target=tail)
    child.start()  # fork before starting threads: no lock can be held at fork time
    reader_thread.start()
    try:
        for k in range(0, len(parent_ids), 5):
            embedding_log.append([upsert(i) for i in parent_ids[k : k + 5]])
        child.join(timeout=30)
        assert child.exitcode == 0
        deadline = time.monotonic() + 10
        while len(seen) < len(child_ids) + len(parent_ids) and time.monotonic() < deadline:
            time.sleep(0.005)
    finally:
        stop.set()
        reader_thread.join(timeout=10)
        if child.is_alive():
            child.kill()
    assert sorted(r.post_id for r in seen) == sorted(child_ids + parent_ids)
    for r in seen:
        assert r.op == "upsert" and r.embedding is not None
        assert np.array_equal(r.embedding, emb(r.post_id))
    # each writer's records appear in its own order
    order = [r.post_id for r in seen]
    assert [i for i in order if i < 1000] == child_ids
    assert [i for i in order if i > 1000] == parent_ids
    everything, _ = read_all(embedding_log)
    assert [r.post_id for r in everything] == order
