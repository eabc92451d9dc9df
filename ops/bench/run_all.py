"""Run every benchmark in ops/bench/ (each in its own process) and print a summary.

    python ops/bench/run_all.py                    # full runs, results in ops/results/
    python ops/bench/run_all.py --quick --out DIR  # correctness-only runs into DIR
    python ops/bench/run_all.py wire_format        # only the named benchmarks

A benchmark is any ``ops/bench/*.py`` except this file and ``_``-prefixed helpers. It accepts
``--quick`` and ``--out DIR`` and writes ``DIR/<name>.json`` with a ``summary`` object, which is
printed here. Exit status: 0 when every benchmark exited 0, else 1.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = BENCH_DIR.parent / "results"


@dataclass
class Outcome:
    name: str
    returncode: int
    seconds: float
    summary: dict[str, Any] | None


def discover(bench_dir: Path = BENCH_DIR) -> list[Path]:
    """The benchmark scripts, by name."""
    me = Path(__file__).resolve()
    return sorted(
        p for p in bench_dir.glob("*.py") if p.resolve() != me and not p.name.startswith("_")
    )


def read_summary(out: Path, name: str) -> dict[str, Any] | None:
    try:
        data = json.loads((out / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None
    summary = data.get("summary") if isinstance(data, dict) else None
    return summary if isinstance(summary, dict) else None


def run_one(script: Path, quick: bool, out: Path) -> Outcome:
    cmd = [sys.executable, str(script), "--out", str(out)]
    if quick:
        cmd.append("--quick")
    started = time.perf_counter()
    # output streams straight through: the benchmark's own progress bars stay visible
    proc = subprocess.run(cmd, check=False)
    seconds = time.perf_counter() - started
    summary = read_summary(out, script.stem) if proc.returncode == 0 else None
    return Outcome(script.stem, proc.returncode, seconds, summary)


def format_summary(summary: dict[str, Any] | None) -> str:
    if not summary:
        return "-"
    return ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory")
    args = parser.parse_args(argv)

    console = Console() if sys.stdout.isatty() else Console(width=150)
    scripts = discover()
    if args.names:
        known = {p.stem for p in scripts}
        unknown = sorted(set(args.names) - known)
        if unknown:
            parser.error(f"unknown benchmark(s) {unknown}; available: {sorted(known)}")
        scripts = [p for p in scripts if p.stem in args.names]
    if not scripts:
        console.print(f"[red]no benchmarks found in {BENCH_DIR}[/]")
        return 1

    args.out.mkdir(parents=True, exist_ok=True)
    mode = "quick" if args.quick else "full"
    outcomes: list[Outcome] = []
    for i, script in enumerate(scripts, 1):
        console.rule(f"[{i}/{len(scripts)}] {script.stem} ({mode})")
        sys.stdout.flush()
        outcomes.append(run_one(script, args.quick, args.out))

    table = Table(title=f"benchmarks ({mode}, results in {args.out})")
    table.add_column("benchmark")
    table.add_column("status")
    table.add_column("time", justify="right")
    table.add_column("summary")
    for o in outcomes:
        status = "[green]ok[/]" if o.returncode == 0 else f"[red]failed ({o.returncode})[/]"
        table.add_row(o.name, status, f"{o.seconds:.1f}s", format_summary(o.summary))
    console.print(table)
    return 0 if all(o.returncode == 0 for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
