"""The prefix-scoring benchmark runs (quick mode) and writes well-formed, agreeing results.

Correctness only: no timing is asserted here; speed lives in ops/results/gr_prefix_scoring.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.ops.conftest import Bench

CASE_KEYS = {"K", "L", "naive_ms", "shared_ms", "speedup", "max_abs_diff"}


def check_results(bench: Bench, out: Path) -> dict[str, Any]:
    data = bench.results(out, "gr_prefix_scoring")
    assert {"cases", "device", "threads", "timestamp", "config", "summary"} <= set(data)
    assert data["quick"] is True and data["device"] and data["threads"]["torch"] >= 1
    assert data["config"]["kind"] == "hstu" and data["config"]["blocks"] == 2
    cases = data["cases"]
    assert {(c["K"], c["L"]) for c in cases} == {(k, n) for k in (5, 24) for n in (16, 48)}
    for c in cases:
        assert set(c) >= CASE_KEYS
        assert c["naive_ms"] > 0 and c["shared_ms"] > 0
        assert abs(c["speedup"] - c["naive_ms"] / c["shared_ms"]) < 1e-9 * c["speedup"]
        assert 0.0 <= c["max_abs_diff"] < 1e-4
        assert 1 <= c["naive_measured_candidates"] <= c["K"]
        assert c["naive_extrapolated"] == (c["naive_measured_candidates"] < c["K"])
    summary = data["summary"]
    assert summary["max_abs_diff"] == max(c["max_abs_diff"] for c in cases)
    assert summary["speedup_k512_l1024"] is None  # not among the quick cases
    png = out / "gr_prefix_scoring.png"
    assert png.is_file() and png.read_bytes()[:8] == bench.PNG_MAGIC
    return data


def test_gr_prefix_scoring_quick(bench: Bench, tmp_path: Path) -> None:
    proc = bench.quick("gr_prefix_scoring.py", tmp_path, "--naive-max-candidates", "10")
    data = check_results(bench, tmp_path)
    measured = {c["K"]: c["naive_measured_candidates"] for c in data["cases"]}
    assert measured == {5: 5, 24: 10}
    assert "summary" in proc.stdout


def test_naive_batch_size_respects_the_attention_budget(bench: Bench) -> None:
    module = bench.load("gr_prefix_scoring.py")
    assert module.naive_batch_size(256, 64) == 64
    assert module.naive_batch_size(1024, 64) == module.ATTN_BUDGET // 1025**2 == 15
    assert module.naive_batch_size(10_000, 64) == 1
    assert module.naive_batch_size(16, 3) == 3
