"""The wire-format benchmark runs (quick mode) and reports verified, well-formed results.

Correctness only: no timing is asserted here, speed lives in ops/results/wire_format.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.ops.conftest import Bench

PAYLOADS = {
    "hydrate_member_L128",
    "hydrate_member_L512",
    "hydrate_member_L1024",
    "embeddings_32x384",
}
CODEC_OVERHEAD_PER_MESSAGE = 512
"""Bytes the codec may add to the raw array buffers (map, keys, ext and array headers)."""


def check_results(bench: Bench, out: Path) -> dict[str, Any]:
    data = bench.results(out, "wire_format")
    assert {"device", "python", "quick", "rows", "summary"} <= set(data)
    assert data["quick"] is True
    assert data["device"] and data["python"].startswith("3.")

    rows = data["rows"]
    assert {(r["payload"], r["method"]) for r in rows} == {
        (p, m) for p in PAYLOADS for m in ("codec", "json")
    }
    for r in rows:
        assert r["roundtrip_verified"] is True
        assert r["max_abs_error"] <= 1e-6
        assert r["bytes"] > 0
        assert 0 < r["roundtrip_ns_median"] <= r["roundtrip_ns_p99"]
        assert r["reps"] >= 1

    by = {(r["payload"], r["method"]): r for r in rows}
    for payload in PAYLOADS:
        ours = by[(payload, "codec")]
        # the codec is the raw buffers plus small headers, whatever the values
        assert ours["array_nbytes"] <= ours["bytes"]
        assert ours["bytes"] <= ours["array_nbytes"] + CODEC_OVERHEAD_PER_MESSAGE
        # with the featurizer's narrow wire dtypes the binary form is smaller than JSON lists
        assert ours["bytes"] < by[(payload, "json")]["bytes"], payload
    floats = "embeddings_32x384"
    assert by[(floats, "json")]["max_abs_error"] == 0.0  # float32 → double repr → float32

    summary = data["summary"]
    l1024 = ("hydrate_member_L1024", "codec"), ("hydrate_member_L1024", "json")
    assert summary["size_ratio_json_over_codec"] == by[l1024[1]]["bytes"] / by[l1024[0]]["bytes"]
    assert summary["speedup_codec_vs_json"] > 0

    png = out / "wire_format.png"
    assert png.is_file() and png.read_bytes()[:8] == bench.PNG_MAGIC
    return data


def test_wire_format_quick(bench: Bench, tmp_path: Path) -> None:
    proc = bench.quick("wire_format.py", tmp_path, timeout=120)
    check_results(bench, tmp_path)
    assert "summary" in proc.stdout


def test_run_all_discovers_and_runs_wire_format(bench: Bench, tmp_path: Path) -> None:
    """run_all finds every benchmark script (not itself, not ``_`` helpers) and runs the named
    ones; each benchmark's own quick run is tested beside it, so only wire_format runs here."""
    found = {p.name for p in bench.load("run_all.py").discover()}
    scripts = {p.name for p in bench.DIR.glob("*.py")}
    assert found == {n for n in scripts if n != "run_all.py" and not n.startswith("_")}
    assert {"wire_format.py", "gr_quality.py", "gr_prefix_scoring.py"} <= found
    proc = bench.quick("run_all.py", tmp_path, "wire_format", timeout=300)
    assert "wire_format" in proc.stdout
    assert "failed" not in proc.stdout
    check_results(bench, tmp_path)
