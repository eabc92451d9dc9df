"""``autoscale simulate`` as a real subprocess: the metrics table, the PNG, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def autoscale(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "from feedserve.cli import app; app()",
            "autoscale",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_simulate_prints_the_metrics_and_draws_a_png(tmp_path: Path) -> None:
    trace = tmp_path / "short.csv"
    trace.write_text("t_s,rps\n0,400\n300,1600\n600,1600\n")
    png = tmp_path / "run.png"
    proc = autoscale(
        "simulate", "--trace", str(trace), "--policy", "coupled", "--seed", "1", "--out", str(png)
    )
    assert proc.returncode == 0, proc.stderr
    for word in ("SLO-violation s", "p99 ms", "GPU replica-h", "CPU replica-h", "coupled"):
        assert word in proc.stdout
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_unknown_trace_is_one_clear_error() -> None:
    proc = autoscale("simulate", "--trace", "no_such_trace", "--policy", "hpa")
    assert proc.returncode == 2
    assert "unknown trace 'no_such_trace'" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_bad_file_and_bad_policy_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("t_s,rps\n0,1\n1,lots\n")
    proc = autoscale("simulate", "--trace", str(bad))
    assert proc.returncode == 2
    assert "not two numbers" in proc.stderr and "Traceback" not in proc.stderr
    proc = autoscale("simulate", "--trace", "ramp", "--policy", "magic")
    assert proc.returncode == 2
    assert "magic" in proc.stderr and "Traceback" not in proc.stderr
