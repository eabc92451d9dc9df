"""The retrieval-quality benchmark runs (quick mode) and writes well-formed results.

Correctness only: no quality or timing is asserted here; the full run's numbers live in
ops/results/retrieval_quality.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.ops.conftest import Bench

METHODS = ("popularity", "untrained", "trained")
METRICS = ("recall@10", "recall@100", "ndcg@10", "mrr")


def test_retrieval_quality_quick(bench: Bench, tmp_path: Path) -> None:
    bench.quick("retrieval_quality.py", tmp_path)
    data = bench.results(tmp_path, "retrieval_quality")
    assert data["quick"] is True
    assert data["device"] and data["python"].startswith("3.")
    assert set(data["recall@100"]) == set(METHODS)
    cold = data["cold_start_recall@100"]
    assert {"popularity", "untrained", "trained", "queries", "popularity_note"} <= set(cold)
    assert cold["popularity"] == 0.0 and cold["queries"] >= 1
    for method in METHODS:
        assert 0.0 <= data["recall@100"][method] <= 1.0
        for part in ("warm", "cold", "all"):
            values = data["metrics"][method][part]
            assert set(METRICS) <= set(values)
            assert all(0.0 <= values[m] <= 1.0 for m in METRICS), (method, part, values)
            assert values["recall@10"] <= values["recall@100"]
        assert data["metrics"][method]["warm"]["recall@100"] == data["recall@100"][method]
    assert data["data"]["warm_queries"] >= 1 and data["data"]["cold_queries"] >= 1
    train = data["train"]
    assert train["steps"] == data["setup"]["train_config"]["steps"] >= 1
    assert len(train["losses"]) == train["steps"]
    assert train["fingerprint_trained"] != train["fingerprint_untrained"]
    assert set(data["targets"]) >= {"trained_ge_2x_popularity", "cold_start_gt_0"}
    assert isinstance(data["summary"], dict) and data["summary"]
    png = tmp_path / "retrieval_quality.png"
    assert png.is_file() and png.read_bytes()[:8] == bench.PNG_MAGIC
