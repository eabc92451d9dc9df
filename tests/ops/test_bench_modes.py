"""The inference-modes benchmark runs (quick mode) through two real stacks and reports
well-formed results. Correctness only: the numbers live in ops/results/modes.json."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.ops.conftest import Bench

pytestmark = pytest.mark.integration


def test_modes_quick(bench: Bench, built: Any, tmp_path: Path) -> None:
    proc = bench.quick(
        "modes.py",
        tmp_path,
        "--data",
        str(built.data_dir),
        "--artifacts",
        str(built.artifacts_dir),
        timeout=900,
    )
    data = bench.results(tmp_path, "modes")
    assert data["quick"] is True and data["device"].startswith("CPU")
    rows = data["modes"]
    assert set(rows) == {"online", "offline+nearline"}
    for mode, r in rows.items():
        assert r["ok_fraction"] == 1.0, mode
        assert 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]
        assert r["freshness_s"]["p50"] > 0 and r["trials"] >= 1
        assert r["stack_cpu_ms_per_request"] > 0
    online, pre = rows["online"], rows["offline+nearline"]
    # the defining difference: the online mode runs the encoder in every request, the
    # precomputed mode reads the stored embedding (the offline job covered every member)
    assert online["encoder_calls_per_request"] == pytest.approx(1.0)
    # (the gateway asks the encoder for its embedding space at most every 30 s)
    assert pre["encoder_calls_per_request"] < 0.1
    assert set(online["embed_member_status"]) == {"ok"}
    assert set(pre["embed_member_status"]) == {"stored"}
    assert pre["offline_job"]["members"] > 0
    assert (tmp_path / "modes.png").read_bytes()[:8] == bench.PNG_MAGIC
    assert "summary" in proc.stdout
