"""The generative-recommender quality benchmark runs (quick mode) and writes well-formed
results.

Correctness only: no quality or timing is asserted here; the full run's numbers live in
ops/results/gr_quality.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.ops.conftest import Bench

DATASETS = ("ml-100k", "ml-latest-small")
MODELS = ("popularity", "sasrec", "hstu")
METRICS = ("hr@10", "hr@50", "hr@200", "ndcg@10", "ndcg@50", "ndcg@200", "mrr")


def test_gr_quality_quick(bench: Bench, tmp_path: Path) -> None:
    bench.quick("gr_quality.py", tmp_path, timeout=600)
    data = bench.results(tmp_path, "gr_quality")
    meta = data["_meta"]
    assert meta["quick"] is True and meta["datasets"] == list(DATASETS)
    assert meta["device"] and meta["python"].startswith("3.")
    assert set(data) == {*DATASETS, "_meta", "summary"}
    for dataset in DATASETS:
        assert meta["data"][dataset]["eval_users"] >= 1
        assert set(data[dataset]) == set(MODELS)
        for model in MODELS:
            block = data[dataset][model]
            for m in METRICS:
                assert 0.0 <= block[m] <= 1.0, (dataset, model, m, block[m])
                assert block[f"{m}_std"] >= 0.0
            assert block["hr@10"] <= block["hr@50"] <= block["hr@200"]
            assert block["ndcg@10"] <= block["ndcg@50"] <= block["ndcg@200"] <= 1.0
            assert isinstance(block["seeds"], list)
        for model in ("sasrec", "hstu"):
            assert data[dataset][model]["seeds"] == meta["setup"]["seeds"] == [0]
            assert data[dataset][model]["epochs"] == meta["setup"]["epochs"][dataset] == 1
        assert data[dataset]["popularity"]["hr@10_std"] == 0.0
        summary = data["summary"][dataset]
        ratio = summary["hstu_over_sasrec_hr@10"]
        assert isinstance(summary["target_ge_1.08"], bool)
        assert ratio is None or ratio >= 0.0
    md = (tmp_path / "gr_quality.md").read_text()
    assert "| popularity |" in md and "HSTU HR@10 / SASRec HR@10" in md
    png = tmp_path / "gr_quality.png"
    assert png.is_file() and png.read_bytes()[:8] == bench.PNG_MAGIC
