"""``FileEmbeddingLog``: the embedded-mode nearline embedding log, an append-only file.

Layout (little-endian)::

    header   8s magic b"FSEMBLOG", u32 version (2), u32 reserved          16 bytes
    record   u32 body_len, body, u32 crc32(body_len bytes + body)
    body v2  u8 op (3 upsert, 4 delete), i64 post_id, i64 author_id, u16 space_len, u32 dim,
             space (UTF-8, space_len bytes), float32[dim] payload
    body v1  u8 op (1 upsert, 2 delete), i64 post_id, u32 dim, float32[dim] payload

The op byte names the body layout, so one file can hold both: version 1 files (written before
records carried an author and an embedding space) hold v1 bodies only and read back with
``author_id`` 0 and ``space`` "". Writers always write v2 bodies; appending to a version-1
file first rewrites its header to version 2 (under the lock, same size, so cursors stay valid),
so that code which knows only version 1 refuses the file loudly instead of misreading it.

``body_len`` is always ``23 + space_len + 4 * dim`` (v2) or ``13 + 4 * dim`` (v1); a record
whose length field, op or checksum does not check out is treated as not (yet) written.

Writers (gateway, featurizer) append under an exclusive ``fcntl.flock`` with one ``write``
per batch followed by ``fsync``. Readers (the ``post_index`` model processes) take no lock:
they may see a half-written tail, so ``read`` returns complete, checksummed records only and
its cursor (the byte offset after the last complete record, as a string) stops before the
partial one; the next ``read`` resumes there. A tail left by a writer that crashed mid-record
is cut off by the next writer (it holds the lock, so no other writer can be mid-write).
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from feedserve.store.base import EmbeddingRecord

MAGIC = b"FSEMBLOG"
VERSION = 2
READABLE_VERSIONS = (1, 2)
_HEADER = struct.Struct("<8sII")
HEADER_SIZE = _HEADER.size  # 16
_LEN = struct.Struct("<I")
_BODY_HEAD_V1 = struct.Struct("<BqI")  # op, post_id, dim
_BODY_HEAD = struct.Struct("<BqqHI")  # op, post_id, author_id, space_len, dim
_CRC = struct.Struct("<I")
_OPS = {"upsert": 3, "delete": 4}
_OPS_V1 = {"upsert": 1, "delete": 2}
_OP_NAMES = {v: k for k, v in _OPS.items()}
_OP_NAMES_V1 = {v: k for k, v in _OPS_V1.items()}
MAX_DIM = 1 << 16
MAX_SPACE_BYTES = 1024
_MAX_BODY = _BODY_HEAD.size + MAX_SPACE_BYTES + 4 * MAX_DIM


def encode_record(rec: EmbeddingRecord) -> bytes:
    """The on-disk bytes of one record (v2 body)."""
    if rec.op not in _OPS:
        raise ValueError(f"unknown op {rec.op!r}")
    if rec.op == "upsert":
        if rec.embedding is None:
            raise ValueError(f"upsert of post {rec.post_id} without an embedding")
        payload = np.ascontiguousarray(rec.embedding, dtype="<f4").reshape(-1).tobytes()
    else:
        payload = b""
    dim = len(payload) // 4
    if dim > MAX_DIM:
        raise ValueError(f"embedding dim {dim} > {MAX_DIM}")
    space = rec.space.encode("utf-8")
    if len(space) > MAX_SPACE_BYTES:
        raise ValueError(f"embedding space name longer than {MAX_SPACE_BYTES} bytes")
    body = (
        _BODY_HEAD.pack(_OPS[rec.op], rec.post_id, rec.author_id, len(space), dim) + space + payload
    )
    head = _LEN.pack(len(body))
    return head + body + _CRC.pack(zlib.crc32(head + body))


_INCOMPLETE = "incomplete"
_INVALID = "invalid"


def _decode_at(buf: bytes, pos: int) -> tuple[EmbeddingRecord, int] | str:
    """The record starting at ``pos`` of ``buf`` and the offset after it; ``_INCOMPLETE`` if
    ``buf`` ends before the record does, ``_INVALID`` if it does not check out (a torn write
    whose bytes are not all there yet, or garbage left by a crash)."""
    end_len = pos + _LEN.size
    if end_len > len(buf):
        return _INCOMPLETE
    (body_len,) = _LEN.unpack_from(buf, pos)
    if body_len < _BODY_HEAD_V1.size or body_len > _MAX_BODY:
        return _INVALID
    end = end_len + body_len + _CRC.size
    if end > len(buf):
        return _INCOMPLETE
    op = buf[end_len]
    author_id, space_len = 0, 0
    if op in _OP_NAMES_V1:
        name = _OP_NAMES_V1[op]
        _, post_id, dim = _BODY_HEAD_V1.unpack_from(buf, end_len)
        start = end_len + _BODY_HEAD_V1.size
    elif op in _OP_NAMES and body_len >= _BODY_HEAD.size:
        name = _OP_NAMES[op]
        _, post_id, author_id, space_len, dim = _BODY_HEAD.unpack_from(buf, end_len)
        start = end_len + _BODY_HEAD.size + space_len
    else:
        return _INVALID
    if (
        start + 4 * dim != end_len + body_len
        or space_len > MAX_SPACE_BYTES
        or dim > MAX_DIM
        or (name == "delete" and dim != 0)
    ):
        return _INVALID
    (crc,) = _CRC.unpack_from(buf, end - _CRC.size)
    if zlib.crc32(buf[pos : end - _CRC.size]) != crc:
        return _INVALID
    try:
        space = bytes(buf[start - space_len : start]).decode("utf-8")
    except UnicodeDecodeError:
        return _INVALID
    if name == "delete":
        return EmbeddingRecord("delete", post_id, None, author_id, space), end
    emb = np.frombuffer(bytes(buf[start : start + 4 * dim]), dtype="<f4").astype(np.float32)
    return EmbeddingRecord("upsert", post_id, emb, author_id, space), end


def _check_header(raw: bytes, path: Path) -> int:
    """The file's format version; ValueError if it is not an embedding log we can read."""
    magic, version, _ = _HEADER.unpack(raw)
    if magic != MAGIC:
        raise ValueError(f"{path} is not an embedding log (bad magic)")
    if version not in READABLE_VERSIONS:
        raise ValueError(f"{path}: unsupported embedding log version {version}")
    return int(version)


class FileEmbeddingLog:
    """An ``EmbeddingLog`` in one append-only file, shared by processes (see module docs)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        # (st_dev, st_ino, offset): end of the records this writer has validated
        self._valid_end: tuple[int, int, int] | None = None

    # --- writing -----------------------------------------------------------------------------
    def append(self, records: Sequence[EmbeddingRecord]) -> None:
        """Append durably (one write, then fsync) under an exclusive file lock."""
        if not records:
            return
        blob = b"".join(encode_record(r) for r in records)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            created = not self.path.exists()
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    end = self._writable_end(fd)
                    _write_all(fd, blob, end)
                    os.fsync(fd)
                    st = os.fstat(fd)
                    self._valid_end = (st.st_dev, st.st_ino, end + len(blob))
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
            if created:
                _fsync_dir(self.path.parent)

    def _writable_end(self, fd: int) -> int:
        """Offset after the last complete record; writes the header into a new file and cuts
        off a torn tail left by a crashed writer. Called with the exclusive lock held."""
        st = os.fstat(fd)
        if st.st_size < HEADER_SIZE:
            header = _HEADER.pack(MAGIC, VERSION, 0)
            _write_all(fd, header, 0)
            os.ftruncate(fd, HEADER_SIZE)
            os.fsync(fd)
            return HEADER_SIZE
        if _check_header(os.pread(fd, HEADER_SIZE, 0), self.path) < VERSION:
            # v1 records stay readable as they are; new ones are v2 (see module docs)
            _write_all(fd, _HEADER.pack(MAGIC, VERSION, 0), 0)
            os.fsync(fd)
        start = HEADER_SIZE
        if self._valid_end is not None:
            dev, ino, off = self._valid_end
            if (dev, ino) == (st.st_dev, st.st_ino) and off <= st.st_size:
                start = off
        if start == st.st_size:
            return start
        end = start
        chunk = 1 << 22
        buf = b""
        buf_at = start
        while True:
            decoded = _decode_at(buf, end - buf_at)
            if isinstance(decoded, tuple):
                end = buf_at + decoded[1]
                continue
            if decoded == _INVALID:
                break
            more = os.pread(fd, chunk, buf_at + len(buf))
            if not more:
                break
            buf = buf[end - buf_at :] + more
            buf_at = end
        if end < st.st_size:
            os.ftruncate(fd, end)
        return end

    # --- reading -----------------------------------------------------------------------------
    def read(self, cursor: str, max_records: int = 10_000) -> tuple[list[EmbeddingRecord], str]:
        """Complete records after byte offset ``cursor`` ("" = start) and the offset after
        them. A partial or unverifiable tail is left for a later call."""
        offset = HEADER_SIZE if cursor == "" else int(cursor)
        if offset < HEADER_SIZE:
            raise ValueError(f"invalid embedding log cursor {cursor!r}")
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            return [], cursor
        out: list[EmbeddingRecord] = []
        with f:
            head = f.read(HEADER_SIZE)
            if len(head) < HEADER_SIZE:
                return [], cursor
            _check_header(head, self.path)
            f.seek(offset)
            buf = b""
            buf_at = offset
            pos = offset
            chunk = 1 << 20
            while len(out) < max_records:
                decoded = _decode_at(buf, pos - buf_at)
                if isinstance(decoded, tuple):
                    rec, rel_end = decoded
                    out.append(rec)
                    pos = buf_at + rel_end
                    continue
                if decoded == _INVALID:
                    break  # not fully written yet (or garbage a writer will cut off)
                more = f.read(chunk)
                if not more:
                    break
                buf = buf[pos - buf_at :] + more
                buf_at = pos
        if not out:
            return [], cursor
        return out, str(pos)


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
