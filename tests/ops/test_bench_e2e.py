"""The end-to-end benchmark runs (quick mode) through a disaggregated and a monolith stack and
reports well-formed results. Correctness only: the numbers live in ops/results/e2e.json."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.ops.conftest import Bench

pytestmark = pytest.mark.integration


def test_e2e_quick(bench: Bench, built: Any, tmp_path: Path) -> None:
    bench.quick("e2e.py", tmp_path, "--data", str(built.data_dir),
                "--artifacts", str(built.artifacts_dir), timeout=900)  # fmt: skip
    data = bench.results(tmp_path, "e2e")
    assert data["quick"] is True and data["device"].startswith("CPU")
    assert set(data["rows"]) == {"disaggregated", "monolith"}
    assert set(data["saturation_rps"]) == {"disaggregated", "monolith"}
    for cfg, rows in data["rows"].items():
        assert [r["offered_rps"] for r in rows] == [2.0, 6.0]
        for r in rows:
            assert r["requests"] == r["ok"] + r["errors"] and r["ok"] > 0, cfg
            assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
            assert r["throughput_rps"] > 0
            assert {"featurize", "rank"} <= set(r["stages_ms"]), r["stages_ms"]
    low = data["rows"]["disaggregated"][0]
    # Triton's own compute is part of, and smaller than, the end-to-end time
    assert 0 < low["model_compute_ms"] < low["mean_ms"]
    assert data["overhead_fraction_low_load"] == pytest.approx(low["overhead_fraction"])
    assert 0 < data["overhead_fraction_low_load"] < 1
    assert "model_compute_ms" not in data["rows"]["monolith"][0]  # no Triton to ask
    split = data["where_time_goes_low_load"]
    assert sum(split.values()) == pytest.approx(low["mean_ms"])
    assert split["model_compute_ms"] == pytest.approx(low["model_compute_ms"])
    assert min(split["featurizer_work_ms"], split["featurizer_round_trip_ms"]) >= 0
    for cfg in ("disaggregated", "monolith"):
        assert data["rows"][cfg][0]["featurize_overlap_ms"] >= 0, cfg
    assert (tmp_path / "e2e.png").read_bytes().startswith(bench.PNG_MAGIC)


def test_every_configuration_split_adds_up_to_its_mean(bench: Bench, tmp_path: Path) -> None:
    e2e = bench.load("e2e.py")

    def row(mean: float, gateway: float, featurize: float, compute: float | None) -> Any:
        out = {"offered_rps": 1.0, "mean_ms": mean, "gateway_mean_ms": gateway,
               "stages_ms": {"featurize": featurize, "rank": 5.0},
               "p50_ms": mean, "p99_ms": mean, "throughput_rps": 1.0}  # fmt: skip
        return out if compute is None else {**out, "model_compute_ms": compute}

    results = {
        "disaggregated": [row(110.0, 108.0, 9.0, 80.0)],
        "disaggregated-2w": [row(104.0, 101.0, 8.0, 79.0)],
        "monolith": [row(100.0, 99.0, 4.0, None)],
    }
    for cfg, rows in results.items():
        split = e2e.config_split(results, cfg)
        assert sum(split.values()) == pytest.approx(rows[0]["mean_ms"]), cfg
        assert min(split.values()) >= 0, split
    dis = e2e.config_split(results, "disaggregated")
    assert dis["featurizer_work_ms"] == 4.0 and dis["featurizer_round_trip_ms"] == 5.0
    assert dis["client_http_ms"] == pytest.approx(2.0)
    assert e2e.config_split({"disaggregated": results["disaggregated"]}, "disaggregated") == {}
    # the featurize stage's tail that runs beside the embedding is not on the critical path
    results["disaggregated"][0]["featurize_overlap_ms"] = 2.0
    results["monolith"][0]["featurize_overlap_ms"] = 1.0
    early = e2e.config_split(results, "disaggregated")
    assert early["featurizer_work_ms"] == 3.0 and early["featurizer_round_trip_ms"] == 4.0
    assert sum(early.values()) == pytest.approx(110.0)
    assert e2e.config_split(results, "monolith")["featurizer_work_ms"] == 3.0
    assert e2e.summarize(results)["where_time_goes_low_load"] == early
    # --url (no monolith run, no Triton statistics): the plot has no split, and still draws
    png = e2e.plot({"url": results["disaggregated"]}, tmp_path / "url.png")
    assert png.read_bytes().startswith(bench.PNG_MAGIC)
