"""The featurize benchmark runs (quick mode) and reports verified, well-formed results.

Correctness only: no timing is asserted here, speed lives in ops/results/featurize.json.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from feedserve_featurizers.batch import PythonTensorizer
from feedserve_featurizers.tensors import ranker_events

if TYPE_CHECKING:
    from tests.ops.conftest import Bench

BATCHES, LENGTHS, WORKERS, METHODS = {1, 32, 256}, {256, 1024}, {1, 2}, {"python", "dali"}


def test_featurize_quick(bench: Bench, tmp_path: Path) -> None:
    proc = bench.quick("featurize.py", tmp_path, timeout=300)
    assert "summary" in proc.stdout
    data = bench.results(tmp_path, "featurize")
    assert data["quick"] is True and data["device"] and data["dali"] == "2.4.0"

    rows = data["rows"]
    assert {(r["method"], r["batch"], r["L"], r["workers"]) for r in rows} == {
        (m, b, n, w) for m in METHODS for b in BATCHES for n in LENGTHS for w in WORKERS
    }
    for r in rows:
        assert r["batches"] >= 3 * r["workers"]
        assert r["members_per_s"] > 0
        assert r["tensors_per_s"] == pytest.approx(r["members_per_s"] * 3)
        assert 0 < r["p50_ms"] <= r["p99_ms"]

    by = {(r["method"], r["batch"], r["L"], r["workers"]): r for r in rows}
    for s in data["speedups"]:
        key = (s["batch"], s["L"], s["workers"])
        want = by[("dali", *key)]["members_per_s"] / by[("python", *key)]["members_per_s"]
        assert s["speedup_dali_vs_python"] == want

    summary = data["summary"]
    head = next(s for s in data["speedups"] if (s["batch"], s["L"], s["workers"]) == (256, 1024, 1))
    assert summary["speedup_dali_vs_python"] == head["speedup_dali_vs_python"]
    assert data["speedup_dali_vs_python"] == summary["speedup_dali_vs_python"]
    assert summary["target_met"] == (summary["speedup_dali_vs_python"] >= 3.0)
    assert summary["identical_outputs"] is True
    verdict = "is met" if summary["target_met"] else "is not met"
    assert verdict in data["findings"][0]

    assert {(p["batch"], p["L"]) for p in data["profile"]} == {
        (b, n) for b in BATCHES for n in LENGTHS
    }
    for p in data["profile"]:
        assert p["truncated_fraction"] > 0 or p["batch"] == 1  # the workload truncates
        for stage in ("python_ms", "dali_total_ms", "numpy_prep_ms", "dali_stage_ms"):
            assert p[stage] > 0

    png = tmp_path / "featurize.png"
    assert png.is_file() and png.read_bytes()[:8] == bench.PNG_MAGIC


def test_workload_has_padded_and_truncated_members(bench: Bench) -> None:
    """The synthetic histories exercise both sides of L, and the parity check the benchmark
    runs first does compare the two backends (a broken backend fails it)."""
    mod = bench.load("featurize.py")
    pool = mod.history_pool(3, 64, 40)
    events = [len(ranker_events(h)) for h in pool]
    assert min(events) < 64 < max(events)
    assert any((h["action"] == 1).any() for h in pool)  # impressions to drop

    class Broken(PythonTensorizer):
        def history_tensors_batch(
            self, histories: Sequence[np.ndarray], length: int
        ) -> dict[str, np.ndarray]:
            out = super().history_tensors_batch(histories, length)
            out["history_actions"] = out["history_actions"][:, ::-1].copy()
            return out

    pools = {64: pool}
    mod.check_parity({"python": PythonTensorizer(), "dali": PythonTensorizer()}, pools)
    with pytest.raises(AssertionError, match="history_actions differs"):
        mod.check_parity({"python": PythonTensorizer(), "dali": Broken()}, pools)
