"""Post embeddings as served: the offline snapshot plus the nearline log, tailed.

Every ``post_index`` (and ``generative_ranker``) replica loads the snapshot written by
``feedserve build`` and then replays the shared embedding log from its start, so a post
added or deleted after the build is visible within ``poll_s`` of being logged, and a
restarted replica catches up by replaying. Upserts are idempotent, so replaying records
already folded into the snapshot is harmless.

A snapshot is one embedding space: ``index.json`` names it (``"space"``, the encoder's
fingerprint; "" when unknown). Log upserts of another space (written by a newer or older
encoder version) are skipped, so vectors of two spaces never mix in one index; deletes
apply whatever their space. Snapshot files::

    post_ids.npy     int64 [n]
    embeddings.npy   float32 [n, dim]
    author_ids.npy   int64 [n]  (0 = unknown; absent in snapshots written before it existed)
    index.json       {"count", "dim", "metric", "space"}
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from feedserve.models.index import ExhaustiveIndex
from feedserve.store.base import EmbeddingLog, EmbeddingRecord

logger = logging.getLogger(__name__)

SNAPSHOT_IDS = "post_ids.npy"
SNAPSHOT_EMB = "embeddings.npy"
SNAPSHOT_AUTHORS = "author_ids.npy"
SNAPSHOT_META = "index.json"
LOAD_BATCH = 65_536
"""Snapshot rows copied into the index per step (the embeddings file is memory-mapped)."""


@dataclass(frozen=True)
class Snapshot:
    """An index snapshot as read from disk."""

    ids: np.ndarray  # int64 [n]
    embeddings: np.ndarray  # float32 [n, dim] (memory-mapped, copy-on-write)
    author_ids: np.ndarray  # int64 [n]; zeros when the snapshot has no author file
    space: str  # the embedding space ("" = unknown)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])


def write_snapshot(
    index_dir: Path,
    post_ids: np.ndarray,
    embeddings: np.ndarray,
    author_ids: np.ndarray | None = None,
    space: str = "",
) -> None:
    """Write a snapshot (see the module docs); ``author_ids`` default to 0 (unknown)."""
    ids = np.asarray(post_ids, dtype=np.int64).reshape(-1)
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(ids):
        raise ValueError(f"embeddings must be [{len(ids)}, dim], got {list(emb.shape)}")
    authors = (
        np.zeros(len(ids), dtype=np.int64)
        if author_ids is None
        else np.asarray(author_ids, dtype=np.int64).reshape(-1)
    )
    if authors.shape != ids.shape:
        raise ValueError(f"author_ids must have {len(ids)} values, got {authors.shape[0]}")
    index_dir.mkdir(parents=True, exist_ok=True)
    np.save(index_dir / SNAPSHOT_IDS, ids)
    np.save(index_dir / SNAPSHOT_EMB, emb)
    np.save(index_dir / SNAPSHOT_AUTHORS, authors)
    meta = {"count": len(ids), "dim": int(emb.shape[1]), "metric": "cosine", "space": space}
    (index_dir / SNAPSHOT_META).write_text(json.dumps(meta, indent=2))


def read_snapshot(index_dir: Path) -> Snapshot:
    """The snapshot in ``index_dir``; snapshots without ``author_ids.npy`` (or without a
    ``space`` in ``index.json``) load with authors 0 and space ""."""
    ids_path, emb_path = index_dir / SNAPSHOT_IDS, index_dir / SNAPSHOT_EMB
    if not ids_path.is_file() or not emb_path.is_file():
        raise FileNotFoundError(f"no index snapshot in {index_dir}: run `feedserve build` first")
    ids = np.load(ids_path)
    emb = np.load(emb_path, mmap_mode="c")
    authors_path = index_dir / SNAPSHOT_AUTHORS
    authors = (
        np.load(authors_path) if authors_path.is_file() else np.zeros(len(ids), dtype=np.int64)
    )
    if emb.ndim != 2 or emb.shape[0] != len(ids) or authors.shape != ids.shape:
        raise ValueError(
            f"inconsistent snapshot in {index_dir}: {len(ids)} ids, embeddings "
            f"{list(emb.shape)}, {len(authors)} author ids"
        )
    space = ""
    meta_path = index_dir / SNAPSHOT_META
    if meta_path.is_file():
        space = str(json.loads(meta_path.read_text()).get("space", "") or "")
    return Snapshot(ids=ids, embeddings=emb, author_ids=authors, space=space)


class PostEmbeddingTable:
    """An ``ExhaustiveIndex`` kept current from an ``EmbeddingLog``. Thread-safe.

    ``dtype`` / ``device``: storage of the index (see ``ExhaustiveIndex``); float32 on CPU
    by default.
    """

    def __init__(
        self,
        index_dir: Path,
        log: EmbeddingLog | None,
        poll_s: float = 0.2,
        *,
        dtype: str | torch.dtype = "float32",
        device: str | torch.device = "cpu",
    ) -> None:
        snap = read_snapshot(index_dir)
        self.space = snap.space
        self.index = ExhaustiveIndex(
            dim=snap.dim, capacity=len(snap.ids) + 1024, dtype=dtype, device=device
        )
        for start in range(0, len(snap.ids), LOAD_BATCH):
            stop = start + LOAD_BATCH
            self.index.upsert(
                snap.ids[start:stop], snap.embeddings[start:stop], snap.author_ids[start:stop]
            )
        del snap
        self._log = log
        self._cursor = ""
        self._poll_s = poll_s
        self._last_poll = float("-inf")
        self._lock = threading.Lock()
        self.skipped_other_space = 0
        """Log upserts not applied because they belong to another embedding space."""
        self.skipped_bad_dim = 0
        """Log upserts not applied because their vector does not have the index's dim."""
        self.refresh(force=True)

    @property
    def dim(self) -> int:
        return self.index.dim

    def _applies(self, rec: EmbeddingRecord) -> bool:
        return rec.space in ("", self.space)

    def refresh(self, force: bool = False) -> int:
        """Apply log records written since the last call; at most once per ``poll_s``.
        Returns how many records were read (including upserts of another space, which are
        skipped)."""
        if self._log is None:
            return 0
        now = time.monotonic()
        if not force and now - self._last_poll < self._poll_s:
            return 0
        with self._lock:
            self._last_poll = now
            applied = 0
            while True:
                records, cursor = self._log.read(self._cursor)
                if not records:
                    return applied
                self._apply(records)
                self._cursor = cursor
                applied += len(records)

    def _apply(self, records: Sequence[EmbeddingRecord]) -> None:
        """Fold records into the index in log order, batching runs of upserts."""
        ids: list[int] = []
        vecs: list[np.ndarray] = []
        authors: list[int] = []

        def flush() -> None:
            if ids:
                self.index.upsert(np.asarray(ids), np.stack(vecs), np.asarray(authors))
                ids.clear()
                vecs.clear()
                authors.clear()

        for rec in records:
            if rec.op == "delete":
                flush()
                self.index.delete([rec.post_id])
            elif rec.embedding is not None:
                if not self._applies(rec):
                    self.skipped_other_space += 1
                    continue
                if rec.embedding.shape != (self.dim,):  # never applicable: skip, don't wedge
                    self.skipped_bad_dim += 1
                    logger.warning(
                        "skipping log upsert of post %d: %d values, the index has %d (space %r)",
                        rec.post_id,
                        rec.embedding.size,
                        self.dim,
                        rec.space,
                    )
                    continue
                ids.append(rec.post_id)
                vecs.append(rec.embedding)
                authors.append(rec.author_id)
        flush()

    def search(
        self,
        queries: np.ndarray,
        k: int,
        exclude: Sequence[Sequence[int]] | None = None,
        blocked_authors: Sequence[Sequence[int]] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` post ids and scores per query (see ``ExhaustiveIndex.search``)."""
        self.refresh()
        with self._lock:
            return self.index.search(queries, k, exclude, blocked_authors)

    def get(self, post_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float32 embeddings of ``post_ids`` and which of them are present."""
        self.refresh()
        with self._lock:
            return self.index.get(post_ids)

    def embeddings_of(self, post_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``get`` under the name the session-context source uses: ``(emb [n, dim] float32,
        found [n] bool)``; rows of unknown posts are zero."""
        return self.get(post_ids)
