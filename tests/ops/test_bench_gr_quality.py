"""The generative-recommender quality benchmark runs (quick mode) and writes well-formed
results.

Correctness only: no quality or timing is asserted here; the full run's numbers live in
ops/results/gr_quality.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "ops" / "bench"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DATASETS = ("ml-100k", "ml-latest-small")
MODELS = ("popularity", "sasrec", "hstu")
METRICS = ("hr@10", "hr@50", "hr@200", "ndcg@10", "ndcg@50", "ndcg@200", "mrr")


def run_quick(out: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(BENCH / "gr_quality.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 0, f"gr_quality.py failed:\n{proc.stdout}\n{proc.stderr}"
    data: dict[str, Any] = json.loads((out / "gr_quality.json").read_text())
    return data


def test_gr_quality_quick(tmp_path: Path) -> None:
    data = run_quick(tmp_path)
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
    assert png.is_file() and png.read_bytes()[:8] == PNG_MAGIC
