"""Exhaustive top-K search over every post embedding (no approximate index).

Scores are inner products of unit-length vectors (cosine). Rows live in fixed-size blocks of
``chunk_rows`` rows (only the last block is smaller, and it doubles until it is full), so that
growing the index never copies more than one block and never needs twice the memory of the
whole matrix. Rows can be upserted and deleted in place (the nearline path); deleted rows are
recycled.

A search scans the rows block by block. float32 on CPU (the default; ``_search_host``): one
float32 matmul per tile of ``SCAN_ROWS`` rows (oneDNN through torch, numpy BLAS as the
fallback), the filters, then a group-max pass over the tile while it is still in cache that
keeps only scores that can reach their query's running K-th best (``_candidates``); the
candidates are merged into the running top-K (``_RunningTopK``) whenever about ``n·k/2`` are
pending. After the first tile almost no score survives, so a search costs the matmul plus
about one read of each score tile. 16-bit storage or a GPU (``_search_torch``): one torch
matmul per block with float32 scores, then the same threshold idea with torch ops.

Memory of a search (n queries, k, dimension d), beyond the stored vectors; t = ``SCAN_ROWS``
(32,768) on the float32 CPU path, t = ``chunk_rows`` (default 65,536) otherwise:

- the score tile ``n x t`` float32 (8 MiB for 64 queries on the CPU path), its group maxima
  ``n x max(1024, k)`` and the gathered candidate groups (at most ``n x t``, usually a few thousand
  values); on the torch path a boolean ``n x t`` mask as well;
- the running top-K ``n x k`` (scores and rows) and at most about ``n·k/2`` pending
  candidates (plus one tile's worth) before each merge;
- the filters: one (query, row) pair per excluded post and per post of a blocked author,
  found with one ``chunk_rows``-sized ``np.isin`` over the author column per block;
- 16-bit storage on CPU widens one block to float32 at a time (``chunk_rows x d``).

Nothing N-sized is materialised, per query or otherwise, so memory stays flat at 10M posts.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import ClassVar

import numpy as np
import torch
from numpy.lib.stride_tricks import as_strided

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
"""Storage dtypes by name (``dtype="float16"``); torch dtypes are accepted as well."""

UNIT_NORM_TOL = 1e-6
"""Rows whose L2 norm is within this of 1 are stored as given (bit for bit); others are
scaled to unit length (a zero row stays zero)."""

_NEG_INF = float("-inf")


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"unsupported index dtype {dtype}; use one of {sorted(DTYPES)}")
        return dtype
    try:
        return DTYPES[str(dtype).removeprefix("torch.")]
    except KeyError:
        raise ValueError(
            f"unsupported index dtype {dtype!r}; use one of {sorted(DTYPES)}"
        ) from None


def unit_rows(embeddings: np.ndarray) -> np.ndarray:
    """``embeddings`` (float32) with every row of norm ≠ 1 (beyond ``UNIT_NORM_TOL``) scaled
    to unit length; rows already unit length are not touched, and no copy is made when none
    needs scaling."""
    norms = np.linalg.norm(embeddings, axis=1)
    off = np.abs(norms - 1.0) > UNIT_NORM_TOL
    if not off.any():
        return embeddings
    out = embeddings.copy()
    out[off] /= np.maximum(norms[off], 1e-12)[:, None]
    return out


class ExhaustiveIndex:
    """Exact inner-product top-K over unit-normalised rows, with per-query filters.

    ``dtype``: storage precision, ``"float32"`` (default; the only sensible choice on CPU),
    ``"float16"`` or ``"bfloat16"`` (half the memory, meant for a GPU). Scores are always
    accumulated and compared in float32, so with float32 storage the result is an exact
    float32 top-K: it can differ from another float32 implementation (FAISS, a brute force
    with another summation order) or from float64 only in posts whose scores lie within
    float32 rounding (≤ d·2⁻²⁴ for unit vectors) of the K-th best.

    With 16-bit storage each stored value is rounded (relative error ``u = 2**-11`` for
    float16, ``2**-8`` for bfloat16); for unit-length vectors a score then differs from its
    float32 value by at most ``u`` (|Σ qᵢ·xᵢ·δᵢ| ≤ u·Σ|qᵢ·xᵢ| ≤ u), so returned scores are
    within ``u`` of float32 scores and the top-K differs from the float32 top-K only in
    posts whose float32 scores lie within ``2u`` of the K-th best (``HALF_TOLERANCE``). On
    CUDA the 16-bit matmul takes the query in the storage dtype too (one more rounding:
    allow ``2u`` per score and ``4u`` at the boundary).

    ``device``: where the vectors live and the scores are computed (``"cpu"``, ``"cuda"``,
    ``"cuda:1"`` …). ``get`` always returns float32 numpy on the host.

    ``chunk_rows``: rows per storage block (and per score block on the torch path; the
    float32 CPU path scores tiles of ``min(chunk_rows, SCAN_ROWS)`` rows). See the module
    docs for the memory bound.
    """

    HALF_TOLERANCE: ClassVar[dict[torch.dtype, float]] = {
        torch.float32: 0.0,
        torch.float16: 2.0**-11,
        torch.bfloat16: 2.0**-8,
    }
    """Per-score bound ``u`` of the difference to float32 scores, by storage dtype (CPU)."""

    def __init__(
        self,
        dim: int,
        capacity: int = 1024,
        chunk_rows: int = 65_536,
        *,
        dtype: str | torch.dtype = "float32",
        device: str | torch.device = "cpu",
    ) -> None:
        if dim <= 0:
            raise ValueError("dim must be positive")
        if chunk_rows <= 0:
            raise ValueError("chunk_rows must be positive")
        self.dim = dim
        self.chunk_rows = chunk_rows
        self.dtype = resolve_dtype(dtype)
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available")
        capacity = max(int(capacity), 1)
        self._blocks: list[torch.Tensor] = []
        full, rest = divmod(capacity, chunk_rows)
        for _ in range(full):
            self._blocks.append(self._new_block(chunk_rows))
        if rest:
            self._blocks.append(self._new_block(rest))
        self._ids = np.zeros(capacity, dtype=np.int64)  # 0 = empty row
        self._authors = np.zeros(capacity, dtype=np.int64)
        self._size = 0  # rows in use or freed (high-water mark)
        self._row_of: dict[int, int] = {}
        self._free: list[int] = []

    # --- storage ---------------------------------------------------------------------------
    def _new_block(self, rows: int) -> torch.Tensor:
        return torch.zeros((rows, self.dim), dtype=self.dtype, device=self.device)

    @property
    def capacity(self) -> int:
        """Rows allocated (in use, free, or not yet used)."""
        return sum(int(b.shape[0]) for b in self._blocks)

    def nbytes(self) -> int:
        """Bytes held by the stored vectors (allocated blocks), plus the id and author
        columns; not the Python id → row dictionary."""
        vectors = sum(b.numel() * b.element_size() for b in self._blocks)
        return int(vectors + self._ids.nbytes + self._authors.nbytes)

    def _grow(self, need: int) -> None:
        """Make room for ``need`` rows: double the last (partial) block up to ``chunk_rows``,
        then append full blocks. Copies at most one block."""
        cap = self.capacity
        if need <= cap:
            return
        c = self.chunk_rows
        while cap < need:
            last = self._blocks[-1]
            rows = int(last.shape[0])
            if rows < c:  # only the last block can be partial: double it (capped at c)
                new_rows = min(c, max(2 * rows, rows + need - cap))
                grown = self._new_block(new_rows)
                grown[:rows] = last
                self._blocks[-1] = grown
                cap += new_rows - rows
            else:
                new_rows = min(c, need - cap)
                self._blocks.append(self._new_block(new_rows))
                cap += new_rows
        ids = np.zeros(cap, dtype=np.int64)
        ids[: len(self._ids)] = self._ids
        authors = np.zeros(cap, dtype=np.int64)
        authors[: len(self._authors)] = self._authors
        self._ids, self._authors = ids, authors

    def _write_rows(self, rows: np.ndarray, values: torch.Tensor) -> None:
        """Store ``values`` ([len(rows), dim], storage dtype, on device) at ``rows``."""
        block_of = rows // self.chunk_rows
        if len(rows) and (block_of == block_of[0]).all():
            groups = [(int(block_of[0]), np.arange(len(rows)))]
        else:
            order = np.argsort(block_of, kind="stable")
            bounds = np.flatnonzero(np.diff(block_of[order])) + 1
            groups = [(int(block_of[g[0]]), g) for g in np.split(order, bounds) if len(g)]
        for b, sel in groups:
            local_np = rows[sel] - b * self.chunk_rows
            src = (
                values if len(sel) == len(rows) else values[torch.from_numpy(sel).to(values.device)]
            )
            lo = int(local_np[0])
            if np.array_equal(local_np, np.arange(lo, lo + len(local_np))):  # a bulk load
                self._blocks[b][lo : lo + len(local_np)] = src
            else:
                self._blocks[b].index_copy_(0, torch.from_numpy(local_np).to(self.device), src)

    # --- membership ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._row_of)

    def __contains__(self, post_id: object) -> bool:
        return isinstance(post_id, int | np.integer) and int(post_id) in self._row_of

    def ids(self) -> np.ndarray:
        live = self._ids[: self._size]
        return live[live != 0].copy()

    def authors_of(self, post_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Author ids of ``post_ids`` (0 for unknown posts or unknown authors)."""
        rows = self._rows_of(post_ids)
        return np.where(rows >= 0, self._authors[np.maximum(rows, 0)], 0)

    def _rows_of(self, post_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        get = self._row_of.get
        return np.array(
            [get(p, -1) for p in np.asarray(post_ids, dtype=np.int64).reshape(-1).tolist()],
            dtype=np.int64,
        )

    def get(self, post_ids: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings of ``post_ids`` ([n, dim] float32 numpy) and a mask of which ids are
        present (rows of absent ids are zero)."""
        rows = self._rows_of(post_ids)
        found = rows >= 0
        out = np.zeros((len(rows), self.dim), dtype=np.float32)
        if found.any():
            hit = np.flatnonzero(found)
            block_of = rows[hit] // self.chunk_rows
            for b in np.unique(block_of).tolist():
                sel = hit[block_of == b]
                local = torch.from_numpy(rows[sel] - b * self.chunk_rows).to(self.device)
                vals = self._blocks[b].index_select(0, local)
                out[sel] = vals.to(device="cpu", dtype=torch.float32).numpy()
        return out, found

    # --- updates ---------------------------------------------------------------------------
    def upsert(
        self,
        post_ids: Sequence[int] | np.ndarray,
        embeddings: np.ndarray,
        author_ids: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        """Insert or overwrite posts. Rows are scaled to unit length (see ``unit_rows``);
        ``author_ids`` default to 0 (unknown). A post id given twice keeps its last row."""
        pids = np.asarray(post_ids, dtype=np.int64).reshape(-1)
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.shape != (len(pids), self.dim):
            raise ValueError(f"embeddings must be [{len(pids)}, {self.dim}], got {list(emb.shape)}")
        if author_ids is None:
            authors = np.zeros(len(pids), dtype=np.int64)
        else:
            authors = np.asarray(author_ids, dtype=np.int64).reshape(-1)
            if authors.shape != pids.shape:
                raise ValueError(f"author_ids must have {len(pids)} values, got {authors.shape[0]}")
        if (pids <= 0).any():
            raise ValueError("post ids must be positive")
        if len(pids) == 0:
            return
        # the last occurrence of each id wins
        uniq, last_rev = np.unique(pids[::-1], return_index=True)
        if len(uniq) != len(pids):
            keep = np.sort(len(pids) - 1 - last_rev)
            pids, emb, authors = pids[keep], emb[keep], authors[keep]
        rows = self._rows_of(pids)
        new = np.flatnonzero(rows < 0)
        if len(new):
            reuse = min(len(new), len(self._free))
            if reuse:
                rows[new[:reuse]] = self._free[len(self._free) - reuse :][::-1]
                del self._free[len(self._free) - reuse :]
            fresh = len(new) - reuse
            if fresh:
                self._grow(self._size + fresh)
                rows[new[reuse:]] = np.arange(self._size, self._size + fresh)
                self._size += fresh
            self._row_of.update(zip(pids[new].tolist(), rows[new].tolist(), strict=True))
        self._ids[rows] = pids
        self._authors[rows] = authors
        step = self.chunk_rows
        for start in range(0, len(rows), step):  # bounded temporaries for bulk loads
            part = unit_rows(np.ascontiguousarray(emb[start : start + step]))
            values = torch.from_numpy(part).to(device=self.device, dtype=self.dtype)
            self._write_rows(rows[start : start + step], values)

    def delete(self, post_ids: Sequence[int] | np.ndarray) -> None:
        """Remove posts (unknown ids are ignored); their rows are reused by later upserts."""
        pop = self._row_of.pop
        rows = [
            r
            for r in (pop(p, None) for p in np.asarray(post_ids, np.int64).tolist())
            if r is not None
        ]
        if not rows:
            return
        arr = np.asarray(rows, dtype=np.int64)
        self._ids[arr] = 0
        self._authors[arr] = 0
        self._write_rows(
            arr, torch.zeros((len(arr), self.dim), dtype=self.dtype, device=self.device)
        )
        self._free.extend(rows)

    # --- search ----------------------------------------------------------------------------
    def _filter_pairs(
        self,
        n: int,
        exclude: Sequence[Sequence[int]] | None,
        blocked_authors: Sequence[Sequence[int]] | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(row, query) pairs that must not be returned, sorted by row: excluded posts (via
        the id → row map) and posts of blocked authors (one vectorised scan of the author
        column per block, only when some query blocks an author)."""
        for name, lists in (("exclude", exclude), ("blocked_authors", blocked_authors)):
            if lists is not None and len(lists) != n:
                raise ValueError(f"{name} must have one entry per query ({n}), got {len(lists)}")
        pair_rows: list[np.ndarray] = []
        pair_queries: list[np.ndarray] = []
        if exclude is not None:
            get = self._row_of.get
            for i, ids in enumerate(exclude):
                if len(ids) == 0:
                    continue
                hit = [r for r in (get(int(p)) for p in ids) if r is not None]
                if hit:
                    pair_rows.append(np.asarray(hit, dtype=np.int64))
                    pair_queries.append(np.full(len(hit), i, dtype=np.int64))
        if blocked_authors is not None:
            per_query = [
                np.unique(np.asarray(a, dtype=np.int64).reshape(-1)) for a in blocked_authors
            ]
            wanted = [a[a != 0] for a in per_query]  # 0 = unknown author: never a match
            union = np.unique(np.concatenate(wanted)) if wanted else np.zeros(0, np.int64)
            if len(union):
                cand: list[np.ndarray] = []
                for start in range(0, self._size, self.chunk_rows):
                    col = self._authors[start : min(start + self.chunk_rows, self._size)]
                    cand.append(np.flatnonzero(np.isin(col, union)) + start)
                rows_b = np.concatenate(cand)
                authors_b = self._authors[rows_b]
                for i, blocked in enumerate(wanted):
                    if len(blocked) and len(rows_b):
                        hit_rows = rows_b[np.isin(authors_b, blocked)]
                        if len(hit_rows):
                            pair_rows.append(hit_rows)
                            pair_queries.append(np.full(len(hit_rows), i, dtype=np.int64))
        if not pair_rows:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty
        rows = np.concatenate(pair_rows)
        queries = np.concatenate(pair_queries)
        order = np.argsort(rows, kind="stable")
        return rows[order], queries[order]

    def _scores(self, q: torch.Tensor, block: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """float32 ``q @ block.T`` into ``out`` (or a new tensor)."""
        if block.dtype == torch.float32:
            return torch.mm(q, block.T, out=out)
        if block.device.type == "cuda":
            try:  # 16-bit operands, float32 accumulation and output
                return torch.mm(q.to(block.dtype), block.T, out_dtype=torch.float32)
            except (TypeError, RuntimeError, NotImplementedError):
                pass
        return torch.mm(q, block.float().T, out=out)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        exclude: Sequence[Sequence[int]] | None = None,
        blocked_authors: Sequence[Sequence[int]] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` post ids and float32 scores per query row, best first.

        ``exclude[i]`` lists post ids query ``i`` must not get (already seen);
        ``blocked_authors[i]`` lists author ids whose posts query ``i`` must not get (author
        0, "unknown", blocks nothing). Rows beyond the number of eligible posts come back as
        id 0 with score -inf.
        """
        q_np = np.ascontiguousarray(queries, dtype=np.float32)
        if q_np.ndim != 2 or q_np.shape[1] != self.dim:
            raise ValueError(f"queries must be [n, {self.dim}], got {list(q_np.shape)}")
        n = q_np.shape[0]
        k = max(int(k), 0)
        if k == 0 or self._size == 0 or n == 0:
            return np.zeros((n, k), dtype=np.int64), np.full((n, k), _NEG_INF, dtype=np.float32)
        pair_rows, pair_queries = self._filter_pairs(n, exclude, blocked_authors)
        free = np.sort(np.asarray(self._free, dtype=np.int64)) if self._free else None
        if self.device.type == "cpu" and self.dtype == torch.float32:
            best_s, best_r = self._search_host(q_np, k, pair_rows, pair_queries, free)
        else:
            best_s, best_r = self._search_torch(q_np, k, pair_rows, pair_queries, free)
        valid = np.isfinite(best_s) & (best_r >= 0)
        ids = np.where(valid, self._ids[np.maximum(best_r, 0)], 0).astype(np.int64)
        return ids, best_s

    def _chunks(self) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row, rows in use) of every block that holds rows."""
        c = self.chunk_rows
        for b, block in enumerate(self._blocks):
            start = b * c
            if start >= self._size:
                return
            yield start, block[: min(int(block.shape[0]), self._size - start)]

    @staticmethod
    def _local(sorted_rows: np.ndarray, start: int, stop: int) -> slice:
        lo, hi = np.searchsorted(sorted_rows, (start, stop))
        return slice(int(lo), int(hi))

    def _search_host(
        self,
        q: np.ndarray,
        k: int,
        pair_rows: np.ndarray,
        pair_queries: np.ndarray,
        free: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """float32 on CPU: one float32 matmul per tile of ``SCAN_ROWS`` rows (see
        ``host_matmul``), the group-max candidate filter on the tile while it is in cache,
        and a merge into the running top-k whenever enough candidates are pending."""
        n = q.shape[0]
        top = _RunningTopK(n, k)
        q_t = torch.from_numpy(q)
        tile = min(self.chunk_rows, SCAN_ROWS)
        pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        pending_count = 0
        merge_at = max(n * k // 2, 1)
        for start, block in self._chunks():
            for t0 in range(0, int(block.shape[0]), tile):
                rows = block[t0 : t0 + tile]
                first = start + t0
                scores = host_matmul(q_t, rows)
                m = scores.shape[1]
                if len(pair_rows):
                    sel = self._local(pair_rows, first, first + m)
                    scores[pair_queries[sel], pair_rows[sel] - first] = _NEG_INF
                if free is not None:
                    sel = self._local(free, first, first + m)
                    scores[:, free[sel] - first] = _NEG_INF
                qi, cols, vals = _candidates(scores, top.kth(), k)
                if len(qi):
                    pending.append((qi, vals, cols + first))
                    pending_count += len(qi)
                if pending_count >= merge_at:
                    top.add(*_concat(pending))
                    pending, pending_count = [], 0
        if pending:
            top.add(*_concat(pending))
        return top.scores, top.rows

    def _search_torch(
        self,
        q_np: np.ndarray,
        k: int,
        pair_rows: np.ndarray,
        pair_queries: np.ndarray,
        free: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """16-bit storage or a GPU: torch matmul per block (float32 scores), torch merge."""
        n = q_np.shape[0]
        dev = self.device
        q = torch.from_numpy(q_np).to(dev)
        best_s = torch.full((n, k), _NEG_INF, device=dev)
        best_r = torch.full((n, k), -1, dtype=torch.int64, device=dev)
        buf = torch.empty((n, min(self.chunk_rows, self._size)), device=dev)
        for start, block in self._chunks():
            used = int(block.shape[0])
            scores = self._scores(q, block, buf[:, :used])
            if len(pair_rows):
                sel = self._local(pair_rows, start, start + used)
                if sel.stop > sel.start:
                    qi = torch.from_numpy(pair_queries[sel]).to(dev)
                    ri = torch.from_numpy(pair_rows[sel] - start).to(dev)
                    scores.index_put_((qi, ri), torch.tensor(_NEG_INF, device=dev))
            if free is not None:
                sel = self._local(free, start, start + used)
                if sel.stop > sel.start:
                    scores[:, torch.from_numpy(free[sel] - start).to(dev)] = _NEG_INF
            best_s, best_r = self._merge(scores, start, best_s, best_r, k)
        return best_s.cpu().numpy(), best_r.cpu().numpy()

    @staticmethod
    def _merge(
        scores: torch.Tensor,
        start: int,
        best_s: torch.Tensor,
        best_r: torch.Tensor,
        k: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fold one score block into the running top-k (sorted, best first).

        Only scores strictly above a query's current k-th best can enter its top-k (a tie
        keeps the earlier row), so the block is reduced to those candidates with one compare
        pass; ``torch.topk`` over the whole block is used only when a query has more than
        ``k`` of them (always the case for the first block).
        """
        n, used = scores.shape
        mask = scores > best_s[:, k - 1 : k]
        counts = mask.sum(dim=1)
        most = int(counts.max())
        if most == 0:
            return best_s, best_r
        if most > k:
            top = min(k, used)
            cand_s, cand_r = torch.topk(scores, top, dim=1)
            cand_r = cand_r + start
        else:
            qi, col = mask.nonzero(as_tuple=True)  # row-major: grouped by query
            offsets = torch.cumsum(counts, 0) - counts
            pos = torch.arange(len(qi), device=scores.device) - offsets[qi]
            cand_s = torch.full((n, most), _NEG_INF, device=scores.device)
            cand_r = torch.full((n, most), -1, dtype=torch.int64, device=scores.device)
            cand_s[qi, pos] = scores[qi, col]
            cand_r[qi, pos] = col + start
        merged_s = torch.cat([best_s, cand_s], dim=1)
        merged_r = torch.cat([best_r, cand_r], dim=1)
        best_s, idx = torch.topk(merged_s, k, dim=1)
        return best_s, torch.gather(merged_r, 1, idx)


GROUP_WIDTH = 1024
"""Columns per group in the host candidate filter (see ``_candidates``)."""

SCAN_ROWS = 32_768
"""Rows per matmul on the float32 CPU path: big enough for full-speed GEMM, small enough
that the ``queries x SCAN_ROWS`` score tile is still in cache when it is filtered."""

_ONEDNN_OK = [True]


def host_matmul(q: torch.Tensor, rows: torch.Tensor) -> np.ndarray:
    """float32 ``q @ rows.T`` on the CPU as a writable numpy array [n, len(rows)].

    Uses oneDNN's float32 inner product through ``torch.ops.mkldnn._linear_pointwise``
    (IEEE float32 arithmetic, AVX-512 kernels on any x86 vendor; measured about 2x torch's
    MKL sgemm and 1.5-2x OpenBLAS on an AMD EPYC); falls back to numpy's BLAS matmul when
    that op is unavailable or fails (for good, on the first failure).
    """
    if _ONEDNN_OK[0]:
        try:
            out = torch.ops.mkldnn._linear_pointwise(q, rows, None, "none", [], "")
            if out.dtype == torch.float32 and out.shape == (q.shape[0], rows.shape[0]):
                return out.numpy()
        except (RuntimeError, AttributeError, NotImplementedError, TypeError):
            pass
        _ONEDNN_OK[0] = False
    return np.matmul(q.numpy(), rows.numpy().T)


def host_matmul_backend() -> str:
    """Which matmul ``host_matmul`` uses now: ``"onednn"`` or ``"numpy-blas"``."""
    return "onednn" if _ONEDNN_OK[0] else "numpy-blas"


def _concat(
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if len(parts) == 1:
        return parts[0]
    return (
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        np.concatenate([p[2] for p in parts]),
    )


def _candidates(
    scores: np.ndarray, kth: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query, column, score) of every finite score in ``scores`` [n, m] that may enter its
    query's top-``k``: scores ≥ the query's current k-th best ``kth``, or, while that is
    still -inf, ≥ a lower bound of the block's own k-th best.

    Columns are split into ``R = m // W`` rows of ``W`` groups (group j holds columns j,
    W + j, 2W + j, …); one vertical ``np.maximum`` pass gives every group's maximum, and only
    groups whose maximum reaches the threshold are looked at again. The k-th largest group
    maximum is a lower bound of the block's k-th best score (k distinct elements reach it),
    which bounds the work on the first block. Columns past ``R·W`` are compared directly.
    Temporaries: ``n x W`` group maxima plus the gathered groups (at most ``n x m``)."""
    n, m = scores.shape
    width = max(GROUP_WIDTH, 1 << max(k - 1, 0).bit_length())
    groups = m // width
    thr = kth
    out_q: list[np.ndarray] = []
    out_c: list[np.ndarray] = []
    out_v: list[np.ndarray] = []
    if groups:
        grid = as_strided(
            scores, shape=(n, groups, width), strides=(scores.strides[0], width * 4, 4)
        )
        gmax = grid.max(axis=1)
        if k <= width and np.isneginf(kth).any():
            thr = np.maximum(kth, np.partition(gmax, width - k, axis=1)[:, width - k])
        gi, gj = np.nonzero(gmax >= thr[:, None])
        if len(gi):
            vals = grid[gi, :, gj]  # [len(gi), groups]
            ri, rr = np.nonzero((vals >= thr[gi, None]) & (vals > _NEG_INF))
            out_q.append(gi[ri])
            out_c.append(rr * width + gj[ri])
            out_v.append(vals[ri, rr])
    tail = scores[:, groups * width :]
    if tail.shape[1]:
        ti, tc = np.nonzero((tail >= thr[:, None]) & (tail > _NEG_INF))
        out_q.append(ti)
        out_c.append(tc + groups * width)
        out_v.append(tail[ti, tc])
    if not out_q:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=np.float32)
    return np.concatenate(out_q), np.concatenate(out_c), np.concatenate(out_v)


_LOW32 = np.int64(0xFFFFFFFF)
_KEY_MIN = np.iinfo(np.int64).min


def _sort_keys(scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """int64 keys that order (score descending, row ascending) as plain integers descending:
    the float32 score mapped to a monotone int32 in the high half, ``2**32 - 2 - row`` in
    the low half (rows ≥ -1 and < 2**32 - 1; -1 marks an empty slot)."""
    bits = np.ascontiguousarray(scores, dtype=np.float32).view(np.int32).astype(np.int64)
    mono = np.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
    return (mono << 32) | (_LOW32 - 1 - rows.astype(np.int64))


def _unsort_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mono = (keys >> 32).astype(np.int32)
    bits = np.where(mono >= 0, mono, mono ^ np.int32(0x7FFFFFFF))
    return bits.view(np.float32), _LOW32 - 1 - (keys & _LOW32)


class _RunningTopK:
    """Per-query top-k on the host: scores descending, ties by smaller row (deterministic).

    Kept as ``_sort_keys`` keys, so that a merge is one ``argpartition`` and one sort of
    ``n x (k + most candidates of one query)`` integers."""

    def __init__(self, n: int, k: int) -> None:
        self.n, self.k = n, k
        self.keys = np.full(
            (n, k), _sort_keys(np.array([_NEG_INF]), np.array([-1]))[0], dtype=np.int64
        )
        self._kth = np.full(n, _NEG_INF, dtype=np.float32)

    def kth(self) -> np.ndarray:
        """Each query's current k-th best score (-inf while it has fewer than k)."""
        return self._kth

    def add(self, queries: np.ndarray, scores: np.ndarray, rows: np.ndarray) -> None:
        if not len(queries):
            return
        n, k = self.n, self.k
        order = np.argsort(queries, kind="stable")
        q_sorted = queries[order]
        counts = np.bincount(q_sorted, minlength=n)
        starts = np.cumsum(counts) - counts
        cand = np.full((n, int(counts.max())), _KEY_MIN, dtype=np.int64)
        cand[q_sorted, np.arange(len(q_sorted)) - starts[q_sorted]] = _sort_keys(
            scores[order], rows[order]
        )
        merged = np.concatenate([self.keys, cand], axis=1)
        cut = merged.shape[1] - k
        best = np.take_along_axis(merged, np.argpartition(merged, cut, axis=1)[:, cut:], axis=1)
        best.sort(axis=1)
        self.keys = np.ascontiguousarray(best[:, ::-1])
        self._kth = _unsort_keys(self.keys[:, -1])[0]

    @property
    def scores(self) -> np.ndarray:
        return _unsort_keys(self.keys)[0]

    @property
    def rows(self) -> np.ndarray:
        return _unsort_keys(self.keys)[1]
