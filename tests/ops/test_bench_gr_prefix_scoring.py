"""The prefix-scoring benchmark runs (quick mode) and writes well-formed, agreeing results.

Correctness only: no timing is asserted here; speed lives in ops/results/gr_prefix_scoring.json.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "ops" / "bench"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CASE_KEYS = {"K", "L", "naive_ms", "shared_ms", "speedup", "max_abs_diff"}


def load_bench() -> ModuleType:
    """ops/bench/gr_prefix_scoring.py as a module (ops/ is not a package)."""
    name = "bench_gr_prefix_scoring"
    if name in sys.modules:
        return sys.modules[name]
    if str(BENCH) not in sys.path:  # as when run as a script: its folder is on the path
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / "gr_prefix_scoring.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def run_quick(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, str(BENCH / "gr_prefix_scoring.py"), "--quick", "--out", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 0, f"gr_prefix_scoring failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def check_results(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "gr_prefix_scoring.json").read_text())
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
    assert png.is_file() and png.read_bytes()[:8] == PNG_MAGIC
    return data


def test_gr_prefix_scoring_quick(tmp_path: Path) -> None:
    proc = run_quick(tmp_path, "--naive-max-candidates", "10")
    data = check_results(tmp_path)
    measured = {c["K"]: c["naive_measured_candidates"] for c in data["cases"]}
    assert measured == {5: 5, 24: 10}
    assert "summary" in proc.stdout


def test_naive_batch_size_respects_the_attention_budget() -> None:
    bench = load_bench()
    assert bench.naive_batch_size(256, 64) == 64
    assert bench.naive_batch_size(1024, 64) == bench.ATTN_BUDGET // 1025**2 == 15
    assert bench.naive_batch_size(10_000, 64) == 1
    assert bench.naive_batch_size(16, 3) == 3
