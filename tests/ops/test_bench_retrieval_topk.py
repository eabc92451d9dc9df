"""The top-K benchmark runs (quick mode) and reports identical, well-formed results.

Correctness only: no timing is asserted here, speed lives in ops/results/retrieval_topk.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from tests.ops.conftest import Bench

METHODS = {"ours", "faiss", "faiss_blas"}


def check_results(bench: Bench, out: Path) -> dict[str, Any]:
    data = bench.results(out, "retrieval_topk")
    assert {"ratio_vs_faiss", "topk_identical", "device", "threads", "rows", "summary"} <= set(data)
    assert data["quick"] is True
    assert data["topk_identical"] is True
    assert data["device"]
    assert data["threads"]["torch"] == data["threads"]["faiss_omp"] >= 1
    assert data["queries"] == 64 and data["k"] == 100
    rows = data["rows"]
    assert {(r["dataset"], r["n"], r["dim"]) for r in rows} == {
        (ds, 20_000, d) for ds in ("random", "clustered") for d in (384, 768)
    }
    for r in rows:
        assert r["topk_identical"] is True
        assert r["topk_identical_vs_faiss_blas"] is True
        assert r["mismatched_queries"] == []
        assert 0.0 <= r["exact_order_agreement"] <= r["set_agreement"] + 1e-12 <= 1.0 + 1e-12
        assert r["ours_max_abs_score_error"] <= r["tie_tolerance"]
        assert set(r["search_s_median"]) == METHODS
        assert all(t > 0 for t in r["search_s_median"].values())
        assert r["ratio_vs_faiss"] == r["search_s_median"]["ours"] / min(
            r["search_s_median"]["faiss"], r["search_s_median"]["faiss_blas"]
        )
        assert r["nbytes"]["faiss"] == r["n"] * r["dim"] * 4
        assert r["nbytes"]["ours"] >= r["nbytes"]["faiss"]
    assert data["ratio_vs_faiss"] == max(r["ratio_vs_faiss"] for r in rows)
    png = out / "retrieval_topk.png"
    assert png.is_file() and png.read_bytes()[:8] == bench.PNG_MAGIC
    return data


def test_retrieval_topk_quick(bench: Bench, tmp_path: Path) -> None:
    proc = bench.quick("retrieval_topk.py", tmp_path)
    check_results(bench, tmp_path)
    assert "summary" in proc.stdout


def test_compare_topk_detects_a_wrong_result_and_accepts_ties(bench: Bench) -> None:
    retrieval_topk = bench.load("retrieval_topk.py")
    x, q = retrieval_topk.make_data("clustered", 3000, 32, 4, seed=1)
    exact = (x.astype(np.float64) @ q.astype(np.float64).T).T
    order = np.argsort(-exact, axis=1)[:, :10]
    ids = order + 1
    scores = np.take_along_axis(exact, order, axis=1).astype(np.float32)
    ok = retrieval_topk.compare_topk(x, q, (ids, scores), (ids.copy(), scores.copy()), 1e-6)
    assert ok["topk_identical"] and ok["exact_order_agreement"] == 1.0

    wrong = ids.copy()
    wrong[2, 0] = int(np.argsort(exact[2])[0]) + 1  # the worst post instead of the best
    bad = retrieval_topk.compare_topk(x, q, (wrong, scores), (ids, scores), 1e-6)
    assert not bad["topk_identical"] and bad["mismatched_queries"] == [2]

    swapped = ids.copy()  # same set, other order: identical, but not in exact order
    swapped[1, [0, 1]] = swapped[1, [1, 0]]
    same_set = retrieval_topk.compare_topk(x, q, (swapped, scores), (ids, scores), 1e-6)
    assert same_set["topk_identical"] and same_set["exact_order_agreement"] == 0.75

    tied = ids.copy()  # the 11th best instead of the 10th: a tie only within a wide tolerance
    tied[0, 9] = int(np.argsort(-exact[0])[10]) + 1
    gap = exact[0, ids[0, 9] - 1] - exact[0, tied[0, 9] - 1]
    assert not retrieval_topk.compare_topk(x, q, (tied, scores), (ids, scores), gap / 2)[
        "topk_identical"
    ]
    assert retrieval_topk.compare_topk(x, q, (tied, scores), (ids, scores), gap * 2)[
        "topk_identical"
    ]
