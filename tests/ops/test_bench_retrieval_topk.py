"""The top-K benchmark runs (quick mode) and reports identical, well-formed results.

Correctness only: no timing is asserted here, speed lives in ops/results/retrieval_topk.json.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "ops" / "bench"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
METHODS = {"ours", "faiss", "faiss_blas"}


def load_bench() -> ModuleType:
    """ops/bench/retrieval_topk.py as a module (ops/ is not a package)."""
    name = "bench_retrieval_topk"
    if name in sys.modules:
        return sys.modules[name]
    if str(BENCH) not in sys.path:  # as when run as a script: its folder is on the path
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / "retrieval_topk.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def run_quick(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, str(BENCH / "retrieval_topk.py"), "--quick", "--out", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 0, f"retrieval_topk failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def check_results(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "retrieval_topk.json").read_text())
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
    assert png.is_file() and png.read_bytes()[:8] == PNG_MAGIC
    return data


def test_retrieval_topk_quick(tmp_path: Path) -> None:
    proc = run_quick(tmp_path)
    check_results(tmp_path)
    assert "summary" in proc.stdout


def test_compare_topk_detects_a_wrong_result_and_accepts_ties() -> None:
    retrieval_topk = load_bench()
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
