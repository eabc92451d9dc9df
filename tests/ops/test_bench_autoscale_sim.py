"""The autoscaling benchmark runs (quick mode) and writes well-formed results.

Correctness only: the target (coupled vs hpa) is judged on the full run, in
ops/results/autoscale_sim.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.ops.conftest import Bench

TRACES = {"diurnal", "flash_spike", "ramp"}
POLICIES = {"hpa", "coupled", "hpa_gpu_util"}
METRICS = {"slo_violation_s", "gpu_replica_hours", "cpu_replica_hours", "p99_ms"}


def test_autoscale_sim_quick(bench: Bench, tmp_path: Path) -> None:
    proc = bench.quick("autoscale_sim.py", tmp_path, timeout=120)
    data = bench.results(tmp_path, "autoscale_sim")
    assert set(data) == TRACES | {"_meta"}
    for trace in TRACES:
        assert set(data[trace]) == POLICIES
        for metrics in data[trace].values():
            assert set(metrics) == METRICS
            assert isinstance(metrics["slo_violation_s"], int)
            assert 0 <= metrics["slo_violation_s"] <= 1200
            assert metrics["gpu_replica_hours"] > 0 and metrics["cpu_replica_hours"] > 0
            assert metrics["p99_ms"] > 0
    meta = data["_meta"]
    assert meta["quick"] is True and meta["device"] and meta["python"].startswith("3.")
    assert set(meta["trace_seconds"].values()) == {1200}
    assert set(meta["ratios"]) == TRACES
    for trace, ratios in meta["ratios"].items():
        hpa, ours = data[trace]["hpa"], data[trace]["coupled"]
        gpu = ratios["vs_hpa"]["gpu_hours_ratio"]
        assert abs(gpu - ours["gpu_replica_hours"] / hpa["gpu_replica_hours"]) < 1e-9
    assert isinstance(meta["target_met"], bool)
    png = tmp_path / "autoscale_sim.png"
    assert png.is_file() and png.read_bytes()[:8] == bench.PNG_MAGIC
    assert "coupled" in proc.stdout and "wrote" in proc.stdout
