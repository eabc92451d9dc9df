"""ExhaustiveIndex: exact agreement with a numpy brute force, exclusions and blocked authors,
upsert/delete, block storage, 16-bit storage within its documented tolerance."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch

import feedserve.models.index as index_module
from feedserve.models.index import ExhaustiveIndex

DIM = 12


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def brute_force(
    ids: np.ndarray,
    emb: np.ndarray,
    queries: np.ndarray,
    k: int,
    exclude: Sequence[Sequence[int]] | None = None,
    blocked: Sequence[Sequence[int]] | None = None,
    authors: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Reference top-k: float64 cosine, id 0 / -inf where fewer than k posts are eligible."""
    scores = queries.astype(np.float64) @ unit(emb.astype(np.float64)).T
    out_ids = np.zeros((len(queries), k), dtype=np.int64)
    out_scores = np.full((len(queries), k), -np.inf)
    for i, row in enumerate(scores):
        eligible = ~np.isin(ids, list(exclude[i]) if exclude else [])
        if blocked is not None and authors is not None:
            eligible &= ~np.isin(authors, [a for a in blocked[i] if a != 0])
        cand_ids, cand_scores = ids[eligible], row[eligible]
        order = np.argsort(-cand_scores, kind="stable")[:k]
        out_ids[i, : len(order)] = cand_ids[order]
        out_scores[i, : len(order)] = cand_scores[order]
    return out_ids, out_scores


def assert_same_topk(
    got: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray]
) -> None:
    got_ids, got_scores = got
    want_ids, want_scores = want
    assert got_ids.dtype == np.int64
    assert got_ids.shape == want_ids.shape == got_scores.shape
    np.testing.assert_array_equal(got_ids, want_ids)
    finite = np.isfinite(want_scores)
    np.testing.assert_array_equal(np.isfinite(got_scores), finite)
    np.testing.assert_allclose(got_scores[finite], want_scores[finite], atol=1e-5)
    assert (got_scores[~finite] == -np.inf).all()


def random_corpus(
    n: int, seed: int = 0, dim: int = DIM
) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
    rng = np.random.default_rng(seed)
    ids = rng.choice(np.arange(1, 50 * n + 1), size=n, replace=False).astype(np.int64)
    return ids, rng.normal(size=(n, dim)).astype(np.float32), rng


@pytest.mark.parametrize(
    ("n", "chunk_rows", "k"),
    [
        (300, 65_536, 10),  # one chunk
        (300, 7, 10),  # many chunks, k > chunk size
        (301, 50, 1),
        (64, 64, 64),  # k == corpus
        (40, 9, 100),  # k larger than the corpus
    ],
)
def test_search_agrees_with_brute_force(n: int, chunk_rows: int, k: int) -> None:
    ids, emb, rng = random_corpus(n, seed=n + chunk_rows)
    index = ExhaustiveIndex(DIM, capacity=4, chunk_rows=chunk_rows)  # grows several times
    index.upsert(ids, emb)
    queries = rng.normal(size=(5, DIM)).astype(np.float32)
    got = index.search(queries, k)
    assert_same_topk(got, brute_force(ids, emb, queries, k))
    # best first
    scores = got[1]
    assert (np.diff(np.where(np.isfinite(scores), scores, -1e9), axis=1) <= 1e-7).all()


def test_k_larger_than_corpus_pads_with_zero_ids() -> None:
    ids, emb, rng = random_corpus(5)
    index = ExhaustiveIndex(DIM, chunk_rows=2)
    index.upsert(ids, emb)
    got_ids, got_scores = index.search(rng.normal(size=(2, DIM)), 8)
    assert got_ids.shape == (2, 8)
    assert sorted(got_ids[0, :5].tolist()) == sorted(ids.tolist())
    assert (got_ids[:, 5:] == 0).all()
    assert (got_scores[:, 5:] == -np.inf).all()
    assert np.isfinite(got_scores[:, :5]).all()


def test_k_zero_and_empty_index() -> None:
    ids, emb, rng = random_corpus(20)
    index = ExhaustiveIndex(DIM)
    q = rng.normal(size=(3, DIM)).astype(np.float32)
    empty_ids, empty_scores = index.search(q, 4)
    assert empty_ids.shape == (3, 4)
    assert (empty_ids == 0).all()
    assert (empty_scores == -np.inf).all()
    index.upsert(ids, emb)
    zero_ids, zero_scores = index.search(q, 0)
    assert zero_ids.shape == (3, 0)
    assert zero_scores.shape == (3, 0)
    neg_ids, _ = index.search(q, -3)
    assert neg_ids.shape == (3, 0)


def test_exclusions_apply_per_query() -> None:
    ids, emb, rng = random_corpus(200, seed=3)
    index = ExhaustiveIndex(DIM, chunk_rows=16)
    index.upsert(ids, emb)
    queries = rng.normal(size=(3, DIM)).astype(np.float32)
    top = index.search(queries, 10)[0]
    exclude = [
        top[0, :5].tolist(),  # the query's own best hits
        [*top[0, :5].tolist(), 999_999_999],  # another query's hits, plus an unknown id
        [],
    ]
    got = index.search(queries, 10, exclude)
    assert_same_topk(got, brute_force(ids, emb, queries, 10, exclude))
    assert not set(got[0][0].tolist()) & set(exclude[0])
    np.testing.assert_array_equal(got[0][2], top[2])  # no exclusions: unchanged


def test_exclusions_leave_fewer_than_k() -> None:
    ids, emb, rng = random_corpus(10, seed=4)
    index = ExhaustiveIndex(DIM, chunk_rows=3)
    index.upsert(ids, emb)
    exclude = [ids[:7].tolist()]
    got_ids, got_scores = index.search(rng.normal(size=(1, DIM)), 5, exclude)
    assert sorted(got_ids[0, :3].tolist()) == sorted(ids[7:].tolist())
    assert (got_ids[0, 3:] == 0).all()
    assert (got_scores[0, 3:] == -np.inf).all()


def test_upsert_overwrites_in_place() -> None:
    ids, emb, rng = random_corpus(50, seed=5)
    index = ExhaustiveIndex(DIM, chunk_rows=8)
    index.upsert(ids, emb)
    target = rng.normal(size=DIM).astype(np.float32)
    index.upsert([ids[10]], target[None, :] * 3.0)
    assert len(index) == 50
    got, found = index.get([ids[10]])
    assert found.tolist() == [True]
    np.testing.assert_allclose(got[0], unit(target), atol=1e-6)
    # the overwritten post is now the best match for its new direction, with cosine 1
    top_ids, top_scores = index.search(unit(target)[None, :], 1)
    assert top_ids[0, 0] == ids[10]
    assert top_scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    emb[10] = target
    q = rng.normal(size=(4, DIM)).astype(np.float32)
    assert_same_topk(index.search(q, 7), brute_force(ids, emb, q, 7))


def test_delete_and_row_reuse() -> None:
    ids, emb, rng = random_corpus(30, seed=6)
    index = ExhaustiveIndex(DIM, capacity=30, chunk_rows=4)
    index.upsert(ids, emb)
    gone = ids[[0, 5, 29]]
    index.delete([*gone.tolist(), 123_456_789])  # unknown ids are ignored
    assert len(index) == 27
    assert all(int(p) not in index for p in gone)
    assert set(index.ids().tolist()) == set(ids.tolist()) - set(gone.tolist())
    _, found = index.get(gone)
    assert not found.any()
    keep = ~np.isin(ids, gone)
    q = rng.normal(size=(3, DIM)).astype(np.float32)
    assert_same_topk(index.search(q, 30), brute_force(ids[keep], emb[keep], q, 30))

    size, capacity = index._size, index.capacity
    new_ids = np.array([10_001, 10_002, 10_003], dtype=np.int64)
    new_emb = rng.normal(size=(3, DIM)).astype(np.float32)
    index.upsert(new_ids, new_emb)
    assert index._size == size  # freed rows were recycled, no growth
    assert index.capacity == capacity
    all_ids = np.concatenate([ids[keep], new_ids])
    all_emb = np.concatenate([emb[keep], new_emb])
    assert set(index.ids().tolist()) == set(all_ids.tolist())
    assert_same_topk(index.search(q, 40), brute_force(all_ids, all_emb, q, 40))

    # a deleted id can come back
    index.upsert(gone[:1], emb[:1])
    assert int(gone[0]) in index


def test_rows_are_normalised() -> None:
    rng = np.random.default_rng(7)
    emb = rng.normal(size=(6, DIM)).astype(np.float32) * np.array(
        [[0.01], [1], [5], [100], [1e4], [0]]
    )
    index = ExhaustiveIndex(DIM)
    index.upsert(np.arange(1, 7), emb)
    got, found = index.get(np.arange(1, 7))
    assert found.all()
    np.testing.assert_allclose(np.linalg.norm(got[:5], axis=1), 1.0, atol=1e-5)
    assert np.all(got[5] == 0)  # a zero vector stays zero (no NaN)
    q = rng.normal(size=(2, DIM)).astype(np.float32)
    _, scores = index.search(q, 6)
    assert np.isfinite(scores).all()
    # scale does not change scores: equal directions score equally
    index.upsert([100, 101], np.stack([emb[1], emb[1] * 1000.0]))
    ids, scores = index.search(unit(emb[1])[None, :], 2)
    assert set(ids[0].tolist()) <= {2, 100, 101}  # three posts with the same direction
    assert scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert scores[0, 1] == pytest.approx(1.0, abs=1e-5)


def test_get_reports_missing_ids() -> None:
    index = ExhaustiveIndex(DIM)
    index.upsert([4, 8], np.eye(2, DIM, dtype=np.float32))
    got, found = index.get(np.array([8, 5, 4]))
    assert found.tolist() == [True, False, True]
    assert got.shape == (3, DIM)
    assert got[0, 1] == pytest.approx(1.0)
    assert not got[1].any()


@pytest.mark.parametrize(
    ("post_ids", "shape"),
    [([1, 2], (2, DIM + 1)), ([1, 2], (3, DIM)), ([1, 2], (DIM,)), ([1], (1, DIM, 1))],
)
def test_upsert_shape_errors(post_ids: list[int], shape: tuple[int, ...]) -> None:
    index = ExhaustiveIndex(DIM)
    with pytest.raises(ValueError, match="embeddings must be"):
        index.upsert(post_ids, np.ones(shape, dtype=np.float32))
    assert len(index) == 0


@pytest.mark.parametrize("bad_id", [0, -5])
def test_upsert_rejects_non_positive_ids(bad_id: int) -> None:
    index = ExhaustiveIndex(DIM)
    with pytest.raises(ValueError, match="positive"):
        index.upsert([3, bad_id], np.ones((2, DIM), dtype=np.float32))
    assert len(index) == 0


@pytest.mark.parametrize("shape", [(DIM,), (2, DIM - 1), (1, 2, DIM)])
def test_search_shape_errors(shape: tuple[int, ...]) -> None:
    index = ExhaustiveIndex(DIM)
    index.upsert([1], np.ones((1, DIM), dtype=np.float32))
    with pytest.raises(ValueError, match="queries must be"):
        index.search(np.ones(shape, dtype=np.float32), 1)


def test_dim_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ExhaustiveIndex(0)


# --- authors and blocked authors ---------------------------------------------------------------


def corpus_with_authors(
    n: int, seed: int, n_authors: int = 7
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.random.Generator]:
    ids, emb, rng = random_corpus(n, seed=seed)
    authors = rng.integers(1, n_authors + 1, size=n).astype(np.int64)
    authors[::11] = 0  # some posts of unknown authorship
    return ids, emb, authors, rng


@pytest.mark.parametrize(("n", "chunk_rows", "k"), [(400, 65_536, 15), (400, 16, 15), (90, 7, 100)])
def test_blocked_authors_per_query(n: int, chunk_rows: int, k: int) -> None:
    ids, emb, authors, rng = corpus_with_authors(n, seed=n + chunk_rows)
    index = ExhaustiveIndex(DIM, capacity=8, chunk_rows=chunk_rows)
    index.upsert(ids, emb, author_ids=authors)
    queries = rng.normal(size=(4, DIM)).astype(np.float32)
    blocked = [[1, 2], [], [3, 3, 999], [0, 7]]  # 999 wrote nothing; 0 blocks nothing
    exclude = [[], ids[:5].tolist(), ids[authors == 3][:2].tolist(), []]
    got = index.search(queries, k, exclude, blocked)
    assert_same_topk(got, brute_force(ids, emb, queries, k, exclude, blocked, authors))
    author_of = dict(zip(ids.tolist(), authors.tolist(), strict=True))
    for i, row in enumerate(got[0]):
        hits = [int(p) for p in row if p]
        assert not {author_of[p] for p in hits} & (set(blocked[i]) - {0})
        assert not set(hits) & set(exclude[i])
    # an unfiltered query is unaffected by its neighbours' filters
    np.testing.assert_array_equal(
        got[0][1][: k - 5], index.search(queries[1:2], k, [exclude[1]])[0][0][: k - 5]
    )
    assert index.authors_of(ids[:6]).tolist() == authors[:6].tolist()
    assert index.authors_of([123_456_789]).tolist() == [0]


def test_blocking_every_author_leaves_only_unknown_authorship() -> None:
    ids, emb, authors, rng = corpus_with_authors(60, seed=11, n_authors=3)
    index = ExhaustiveIndex(DIM, chunk_rows=8)
    index.upsert(ids, emb, author_ids=authors)
    got_ids, got_scores = index.search(rng.normal(size=(1, DIM)), 60, None, [[1, 2, 3]])
    unknown = set(ids[authors == 0].tolist())
    assert set(got_ids[0, : len(unknown)].tolist()) == unknown
    assert (got_ids[0, len(unknown) :] == 0).all()
    assert (got_scores[0, len(unknown) :] == -np.inf).all()


def test_author_changes_follow_upserts_and_deletes() -> None:
    ids, emb, authors, _ = corpus_with_authors(40, seed=12)
    index = ExhaustiveIndex(DIM, chunk_rows=8)
    index.upsert(ids, emb, author_ids=authors)
    q = unit(emb[3])[None, :].astype(np.float32)
    assert index.search(q, 1, None, [[]])[0][0, 0] == ids[3]
    index.upsert(ids[3:4], emb[3:4], author_ids=[77])  # re-attributed post
    assert index.search(q, 1, None, [[77]])[0][0, 0] != ids[3]
    assert index.search(q, 1, None, [[int(authors[3])]])[0][0, 0] == ids[3]
    index.delete(ids[3:4])
    index.upsert([5_000], emb[3:4])  # reuses the freed row, author unknown
    assert index.authors_of([5_000]).tolist() == [0]
    assert index.search(q, 1, None, [[77]])[0][0, 0] == 5_000


def test_filter_lists_must_match_the_queries() -> None:
    index = ExhaustiveIndex(DIM)
    index.upsert([1, 2], np.ones((2, DIM), dtype=np.float32), author_ids=[5, 6])
    q = np.ones((2, DIM), dtype=np.float32)
    with pytest.raises(ValueError, match="exclude"):
        index.search(q, 1, [[1]])
    with pytest.raises(ValueError, match="blocked_authors"):
        index.search(q, 1, None, [[5], [6], [7]])
    with pytest.raises(ValueError, match="author_ids"):
        index.upsert([3, 4], np.ones((2, DIM), dtype=np.float32), author_ids=[1])


def test_duplicate_ids_in_one_upsert_keep_the_last() -> None:
    rng = np.random.default_rng(13)
    emb = rng.normal(size=(4, DIM)).astype(np.float32)
    index = ExhaustiveIndex(DIM, chunk_rows=2)
    index.upsert([9, 8, 9, 7], emb, author_ids=[1, 2, 3, 4])
    assert len(index) == 3
    assert sorted(index.ids().tolist()) == [7, 8, 9]
    got, found = index.get([9])
    assert found.all()
    np.testing.assert_allclose(got[0], unit(emb[2]), atol=1e-6)
    assert index.authors_of([9]).tolist() == [3]


# --- the merge: chunks that keep improving, ties ------------------------------------------------


def test_later_chunks_with_better_posts() -> None:
    """Rows sorted by ascending score: every chunk beats the running top-k (the topk path),
    then descending: no later chunk does (the skip path), then shuffled."""
    rng = np.random.default_rng(14)
    q = unit(rng.normal(size=DIM))
    emb = rng.normal(size=(500, DIM)).astype(np.float32)
    order = np.argsort(unit(emb) @ q)
    ids = np.arange(1, 501, dtype=np.int64)
    for perm in (order, order[::-1], rng.permutation(500)):
        index = ExhaustiveIndex(DIM, chunk_rows=32)
        index.upsert(ids[perm], emb[perm])
        got = index.search(q[None, :].astype(np.float32), 40)
        assert_same_topk(got, brute_force(ids[perm], emb[perm], q[None, :], 40))


def test_exact_ties_return_a_tied_set() -> None:
    rng = np.random.default_rng(15)
    base = unit(rng.normal(size=DIM)).astype(np.float32)
    others = rng.normal(size=(50, DIM)).astype(np.float32) * 0.01 - base  # far away
    emb = np.concatenate([np.repeat(base[None, :], 10, axis=0), others])
    ids = np.arange(1, 61, dtype=np.int64)
    index = ExhaustiveIndex(DIM, chunk_rows=4)
    index.upsert(ids, emb)
    got_ids, got_scores = index.search(base[None, :], 6)
    assert set(got_ids[0].tolist()) <= set(range(1, 11))
    assert len(set(got_ids[0].tolist())) == 6
    np.testing.assert_allclose(got_scores[0], 1.0, atol=1e-6)


# --- storage: blocks, growth, dtypes -----------------------------------------------------------


def test_storage_grows_in_blocks() -> None:
    ids, emb, rng = random_corpus(100, seed=16)
    index = ExhaustiveIndex(DIM, capacity=3, chunk_rows=16)
    for start in range(0, 100, 9):
        index.upsert(ids[start : start + 9], emb[start : start + 9])
    blocks = index._blocks
    assert [int(b.shape[0]) for b in blocks[:-1]] == [16] * (len(blocks) - 1)
    assert 0 < blocks[-1].shape[0] <= 16
    assert index.capacity == sum(int(b.shape[0]) for b in blocks) >= 100
    assert index.capacity < 100 + 16
    assert index.nbytes() >= 100 * DIM * 4
    q = rng.normal(size=(3, DIM)).astype(np.float32)
    assert_same_topk(index.search(q, 25), brute_force(ids, emb, q, 25))
    big = ExhaustiveIndex(DIM, capacity=40, chunk_rows=16)  # preallocated: 16 + 16 + 8
    assert [int(b.shape[0]) for b in big._blocks] == [16, 16, 8]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", torch.float16])
def test_half_storage_on_cpu_within_tolerance(dtype: str | torch.dtype) -> None:
    ids, emb, rng = random_corpus(700, seed=17, dim=64)
    ref = ExhaustiveIndex(64, chunk_rows=128)
    half = ExhaustiveIndex(64, chunk_rows=128, dtype=dtype)
    ref.upsert(ids, emb)
    half.upsert(ids, emb)
    assert half.nbytes() < ref.nbytes() * 0.6
    u = ExhaustiveIndex.HALF_TOLERANCE[half.dtype]
    got, found = half.get(ids[:5])
    assert got.dtype == np.float32 and found.all()
    np.testing.assert_allclose(got, ref.get(ids[:5])[0], atol=2 * u)
    q = unit(rng.normal(size=(6, 64))).astype(np.float32)
    k = 30
    want_ids, want_scores = ref.search(q, k)
    got_ids, got_scores = half.search(q, k)
    assert got_scores.dtype == np.float32
    assert (np.abs(got_scores - want_scores) <= u + 1e-6).all()
    exact = unit(emb.astype(np.float64)) @ q.T.astype(np.float64)  # [posts, queries]
    row_of = {int(p): r for r, p in enumerate(ids)}
    for i in range(len(q)):
        # only posts within 2u of the k-th best float32 score may differ
        differ = set(got_ids[i].tolist()) ^ set(want_ids[i].tolist())
        for p in differ:
            assert abs(exact[row_of[p], i] - want_scores[i, -1]) <= 2 * u + 1e-6


def test_dtype_and_device_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="dtype"):
        ExhaustiveIndex(DIM, dtype="int8")
    with pytest.raises(ValueError, match="dtype"):
        ExhaustiveIndex(DIM, dtype=torch.float64)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            ExhaustiveIndex(DIM, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_cuda_storage_agrees_with_cpu(dtype: str) -> None:
    ids, emb, rng = random_corpus(3000, seed=18, dim=64)
    cpu = ExhaustiveIndex(64, chunk_rows=512)
    gpu = ExhaustiveIndex(64, chunk_rows=512, dtype=dtype, device="cuda")
    authors = (ids % 5).astype(np.int64)
    cpu.upsert(ids, emb, authors)
    gpu.upsert(ids, emb, authors)
    q = unit(rng.normal(size=(8, 64))).astype(np.float32)
    blocked = [[1]] * 8
    want_ids, want_scores = cpu.search(q, 50, None, blocked)
    got_ids, got_scores = gpu.search(q, 50, None, blocked)
    u = ExhaustiveIndex.HALF_TOLERANCE[gpu.dtype]
    assert (np.abs(got_scores - want_scores) <= 2 * u + 1e-5).all()
    if dtype == "float32":
        assert (np.mean([set(a) == set(b) for a, b in zip(got_ids, want_ids, strict=True)])) == 1.0


# --- the host (float32 CPU) candidate filter ----------------------------------------------------


@pytest.mark.parametrize("width", [4, 16, 1024])
@pytest.mark.parametrize(
    ("n", "chunk_rows", "k"), [(3000, 1000, 10), (2500, 4096, 40), (700, 130, 5)]
)
def test_group_filter_agrees_with_brute_force(
    monkeypatch: pytest.MonkeyPatch, width: int, n: int, chunk_rows: int, k: int
) -> None:
    """Group widths below, at and above the block width (so that the group pass, the
    first-block bound and the direct tail all run), with filters and freed rows."""
    monkeypatch.setattr(index_module, "GROUP_WIDTH", width)
    ids, emb, authors, rng = corpus_with_authors(n, seed=width + n, n_authors=9)
    index = ExhaustiveIndex(DIM, capacity=n, chunk_rows=chunk_rows)
    index.upsert(ids, emb, author_ids=authors)
    gone = ids[rng.choice(n, size=n // 10, replace=False)]
    index.delete(gone)
    keep = ~np.isin(ids, gone)
    queries = rng.normal(size=(7, DIM)).astype(np.float32)
    exclude = [ids[keep][:50].tolist(), [], [], ids[keep][::3].tolist(), [], [], []]
    blocked = [[], [1], [2, 3, 4, 5, 6, 7, 8], [], [], [9], []]
    got = index.search(queries, k, exclude, blocked)
    want = brute_force(ids[keep], emb[keep], queries, k, exclude, blocked, authors[keep])
    assert_same_topk(got, want)


def test_group_filter_with_many_ties(monkeypatch: pytest.MonkeyPatch) -> None:
    """Equal scores everywhere (duplicated vectors): every group reaches the threshold."""
    monkeypatch.setattr(index_module, "GROUP_WIDTH", 8)
    rng = np.random.default_rng(19)
    vec = unit(rng.normal(size=DIM)).astype(np.float32)
    emb = np.repeat(vec[None, :], 500, axis=0)
    index = ExhaustiveIndex(DIM, chunk_rows=128)
    index.upsert(np.arange(1, 501), emb)
    got_ids, got_scores = index.search(vec[None, :], 20)
    assert got_ids[0].tolist() == list(range(1, 21))  # ties: earlier rows first
    np.testing.assert_allclose(got_scores, 1.0, atol=1e-6)


@pytest.mark.parametrize("onednn", [True, False])
def test_host_matmul_paths_agree(monkeypatch: pytest.MonkeyPatch, onednn: bool) -> None:
    """The oneDNN inner product and the numpy BLAS fallback give the brute-force top-k."""
    monkeypatch.setattr(index_module, "_ONEDNN_OK", [onednn])
    monkeypatch.setattr(index_module, "SCAN_ROWS", 96)  # several tiles per block
    ids, emb, rng = random_corpus(1000, seed=20)
    index = ExhaustiveIndex(DIM, chunk_rows=256)
    index.upsert(ids, emb)
    q = rng.normal(size=(5, DIM)).astype(np.float32)
    assert_same_topk(index.search(q, 30), brute_force(ids, emb, q, 30))
    if not onednn:
        assert index_module.host_matmul_backend() == "numpy-blas"
    elif torch.backends.mkldnn.is_available():
        assert index_module.host_matmul_backend() == "onednn"  # the op worked: no fallback
    scores = index_module.host_matmul(torch.from_numpy(q), index._blocks[0][:10])
    assert scores.dtype == np.float32 and scores.shape == (5, 10) and scores.flags.writeable
    np.testing.assert_allclose(scores, q @ index.get(ids[:10])[0].T, atol=1e-5)


def test_running_topk_keys_order_scores_then_rows() -> None:
    scores = np.array([0.5, -0.25, 0.5, -np.inf, 1e-30, -1e-30, 0.0, -0.0, 3.0], np.float32)
    rows = np.array([7, 3, 2, -1, 0, 1, 5, 6, 2**32 - 2], np.int64)
    keys = index_module._sort_keys(scores, rows)
    back_s, back_r = index_module._unsort_keys(keys)
    np.testing.assert_array_equal(back_s.view(np.int32), scores.view(np.int32))  # bit exact
    np.testing.assert_array_equal(back_r, rows)
    want = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), int(rows[i])))
    got = sorted(range(len(scores)), key=lambda i: -int(keys[i]))
    # -0.0 and 0.0 compare equal as floats but the keys put +0.0 first: both orders are valid
    assert [i for i in got if i not in (6, 7)] == [i for i in want if i not in (6, 7)]

    top = index_module._RunningTopK(2, 3)
    assert np.isneginf(top.kth()).all()
    top.add(
        np.array([0, 0, 1, 0, 0]),
        np.array([0.1, 0.9, 0.4, 0.9, 0.2], np.float32),
        np.array([4, 8, 1, 3, 9]),
    )
    assert top.rows.tolist() == [[3, 8, 9], [1, -1, -1]]
    np.testing.assert_array_equal(top.kth(), np.array([0.2, -np.inf], np.float32))
    top.add(np.array([1, 1, 1]), np.array([0.5, 0.4, 0.3], np.float32), np.array([7, 0, 2]))
    assert top.rows.tolist() == [[3, 8, 9], [7, 0, 1]]  # a tie at 0.4: the smaller row first
