"""Generative-ranker serving: shared-prefix candidate scoring against K full forward passes.

An HSTU model (``feedserve.models.sequential``; dim 64, 2 blocks, 2 heads, max_len 1024, random
weights, eval mode, float32 on CPU, under ``torch.inference_mode``) scores K candidate items
for one member with a history of L events (no padding, increasing timestamps):

* ``naive`` — ``score_candidates_naive``: for each candidate a full forward pass over
  ``history + [candidate token]`` (L + 1 tokens). To be fair to it, the K passes are batched:
  up to ``--naive-batch`` (64) sequences per forward call, fewer where 64 × (L+1)² attention
  entries would not fit a budget of 2²⁴ entries per call (at L = 1024: 15 sequences).
* ``shared`` — ``score_candidates``: the history is encoded once (every block's keys and
  values are kept; the last block computes only those), then the K candidate tokens run
  through the blocks in micro-batches of 256, each attending to the history and to itself.

Cases: K ∈ {64, 512, 2048} × L ∈ {256, 1024}. Times are medians over ``--reps`` runs
(``time.perf_counter``) after one untimed warm-up of each method. Both paths run on the same
number of torch threads, 1 by default (``--threads``): a serving worker scores one request per
core, and on a small machine shared with other work two threads per process mostly measure
contention (on the 2-core development machine under load, 2 threads made the shared path
3-5x slower than 1 thread, with a much wider spread). The naive pass costs
O(K·L²); where K exceeds ``--naive-max-candidates`` (128 in the full run) it is timed on the
first that many candidates only and extrapolated linearly to K (``naive_measured_candidates``
and ``naive_extrapolated`` say so per case; the work is exactly K independent, identically
shaped passes, so the extrapolation is linear by construction). ``max_abs_diff`` compares the
two paths' scores (cosines) on the measured candidates.

    python ops/bench/gr_prefix_scoring.py            # full run (~2-4 min on 2 cores), ops/results/
    python ops/bench/gr_prefix_scoring.py --quick --out /tmp/x   # seconds, correctness only
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _benchenv import cpu_description, load_average
from rich.console import Console
from rich.table import Table

from feedserve.models.sequential import SeqRecConfig, SequentialRecommender

NAME = "gr_prefix_scoring"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results"

FULL_KS, FULL_LS = (64, 512, 2048), (256, 1024)
QUICK_KS, QUICK_LS = (5, 24), (16, 48)
FULL_REPS, FULL_NAIVE_REPS, FULL_NAIVE_MAX = 7, 2, 128
QUICK_REPS, QUICK_NAIVE_REPS = 2, 1
NAIVE_BATCH = 64
ATTN_BUDGET = 1 << 24  # attention entries (sequences × (L+1)²) per naive forward call
MICRO_BATCH = 256
N_ITEMS = 50_000
T0 = 1_700_000_000
SUMMARY_CASE = (512, 1024)
TARGET_SPEEDUP = 20.0


def make_model(args: argparse.Namespace, max_len: int) -> SequentialRecommender:
    torch.manual_seed(args.seed)
    cfg = SeqRecConfig(
        kind="hstu",
        n_items=N_ITEMS,
        dim=args.dim,
        blocks=args.blocks,
        heads=args.heads,
        max_len=max_len,
        dropout=0.0,
    )
    model = SequentialRecommender(cfg)
    with torch.no_grad():  # random weights, but a time bias that is not negligible
        for name, param in model.named_parameters():
            if name.endswith("ts_w") or name.endswith("pos_w"):
                param.normal_(0.0, 0.5)
    return model.eval()


def make_history(length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(1, N_ITEMS + 1, (1, length), generator=g)
    actions = torch.randint(1, 7, (1, length), generator=g)
    gaps = torch.randint(1, 6 * 3600, (1, length), generator=g)
    return items, actions, T0 + torch.cumsum(gaps, dim=1)


def naive_batch_size(length: int, cap: int) -> int:
    """Sequences per naive forward call: ≤ ``cap`` and ≤ ATTN_BUDGET / (L+1)²."""
    return max(1, min(cap, ATTN_BUDGET // (length + 1) ** 2))


def timed(fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def run_case(
    model: SequentialRecommender, k: int, length: int, args: argparse.Namespace
) -> dict[str, Any]:
    items, actions, ts = make_history(length, args.seed + length)
    g = torch.Generator().manual_seed(args.seed + k)
    candidates = torch.randint(1, N_ITEMS + 1, (k,), generator=g)
    request_time = int(ts[0, -1]) + 600
    measured = k if args.naive_max_candidates is None else min(k, args.naive_max_candidates)
    batch = naive_batch_size(length, args.naive_batch)

    def shared() -> torch.Tensor:
        return model.score_candidates(items, actions, ts, candidates, request_time, MICRO_BATCH)

    def naive() -> torch.Tensor:
        return model.score_candidates_naive(
            items, actions, ts, candidates[:measured], request_time, batch_size=batch
        )

    def prefix_only() -> torch.Tensor:
        return model.score_candidates(items, actions, ts, candidates[:0], request_time)

    with torch.inference_mode():
        shared()  # warm-up
        model.score_candidates_naive(
            items, actions, ts, candidates[: min(batch, measured)], request_time, batch
        )
        shared_s: list[float] = []
        naive_s: list[float] = []
        prefix_s: list[float] = []
        shared_scores = naive_scores = torch.zeros(0)
        for rep in range(max(args.reps, args.naive_reps)):
            if rep < args.reps:
                shared_scores, sec = timed(shared)
                shared_s.append(sec)
                prefix_s.append(timed(prefix_only)[1])
            if rep < args.naive_reps:
                naive_scores, sec = timed(naive)
                naive_s.append(sec)
    diff = float((shared_scores[:measured] - naive_scores).abs().max())
    naive_measured_ms = statistics.median(naive_s) * 1e3
    naive_ms = naive_measured_ms * k / measured
    shared_ms = statistics.median(shared_s) * 1e3
    return {
        "K": k,
        "L": length,
        "naive_ms": naive_ms,
        "shared_ms": shared_ms,
        "speedup": naive_ms / shared_ms,
        "max_abs_diff": diff,
        "naive_measured_candidates": measured,
        "naive_extrapolated": measured < k,
        "naive_measured_ms": naive_measured_ms,
        "naive_batch_size": batch,
        "shared_prefix_ms": statistics.median(prefix_s) * 1e3,
        "shared_ms_all": [s * 1e3 for s in shared_s],
        "naive_measured_ms_all": [s * 1e3 for s in naive_s],
        "load_average_after": load_average(),
    }


# --------------------------------------------------------------------------- reporting


def print_table(console: Console, rows: list[dict[str, Any]]) -> None:
    table = Table(title="HSTU candidate scoring: shared prefix vs K full forward passes")
    for col in ("K", "L", "naive", "shared", "of it: prefix", "speedup", "max |diff|", "naive on"):
        table.add_column(col, justify="right")
    for r in rows:
        on = f"{r['naive_measured_candidates']}" + (" (extrap.)" if r["naive_extrapolated"] else "")
        table.add_row(
            str(r["K"]),
            str(r["L"]),
            f"{r['naive_ms']:,.1f} ms",
            f"{r['shared_ms']:,.1f} ms",
            f"{r['shared_prefix_ms']:,.1f} ms",
            f"[bold]{r['speedup']:,.1f}x[/]",
            f"{r['max_abs_diff']:.1e}",
            on,
        )
    console.print(table)


def plot(rows: list[dict[str, Any]], meta: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"K={r['K']}\nL={r['L']}" for r in rows]
    x = np.arange(len(rows))
    width = 0.38
    fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(13, 5))
    naive = [r["naive_ms"] for r in rows]
    shared = [r["shared_ms"] for r in rows]
    bars = ax_t.bar(x - width / 2, naive, width, label="naive: K full passes", color="#e76f51")
    for bar, r in zip(bars, rows, strict=True):
        if r["naive_extrapolated"]:
            bar.set_hatch("//")
    ax_t.bar(x + width / 2, shared, width, label="shared prefix", color="#2a9d8f")
    ax_t.set_yscale("log")
    ax_t.set_title("time per request (ms, log; hatched = naive extrapolated)")
    ax_s.bar(x, [r["speedup"] for r in rows], 0.6, color="#264653")
    for i, r in enumerate(rows):
        ax_s.annotate(f"{r['speedup']:,.0f}x", (i, r["speedup"]), ha="center", va="bottom")
    ax_s.axhline(TARGET_SPEEDUP, color="#e9c46a", ls="--", label=f"target {TARGET_SPEEDUP:.0f}x")
    ax_s.set_yscale("log")
    ax_s.set_title("speedup (naive ÷ shared, log)")
    for ax in (ax_t, ax_s):
        ax.set_xticks(x, labels, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"generative ranker prefix scoring — {meta}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="tiny K and L (correctness only)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory")
    parser.add_argument("--ks", type=int, nargs="+", default=None, help="candidate counts")
    parser.add_argument("--lengths", type=int, nargs="+", default=None, help="history lengths")
    parser.add_argument("--reps", type=int, default=None, help="timed shared runs per case")
    parser.add_argument("--naive-reps", type=int, default=None, help="timed naive runs")
    parser.add_argument(
        "--naive-max-candidates",
        type=int,
        default=None,
        help="time the naive path on at most this many candidates and extrapolate "
        f"(full run default {FULL_NAIVE_MAX}; quick: all)",
    )
    parser.add_argument("--naive-batch", type=int, default=NAIVE_BATCH)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: one request per core)"
    )
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    args.ks = args.ks or list(QUICK_KS if args.quick else FULL_KS)
    args.lengths = args.lengths or list(QUICK_LS if args.quick else FULL_LS)
    if args.reps is None:
        args.reps = QUICK_REPS if args.quick else FULL_REPS
    if args.naive_reps is None:
        args.naive_reps = QUICK_NAIVE_REPS if args.quick else FULL_NAIVE_REPS
    if args.naive_max_candidates is None and not args.quick:
        args.naive_max_candidates = FULL_NAIVE_MAX
    if min(args.reps, args.naive_reps, args.threads, args.naive_batch, *args.ks) < 1:
        parser.error("--reps, --naive-reps, --threads, --naive-batch and K must be ≥ 1")
    if args.naive_max_candidates is not None and args.naive_max_candidates < 1:
        parser.error("--naive-max-candidates must be ≥ 1")
    if min(args.lengths) < 1:
        parser.error("history lengths must be ≥ 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console() if sys.stdout.isatty() else Console(width=140)
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    threads = {"torch": torch.get_num_threads(), "interop": torch.get_num_interop_threads()}
    load_before = load_average()
    max_len = max(max(args.lengths), 2)
    model = make_model(args, max_len)

    rows: list[dict[str, Any]] = []
    for length in args.lengths:
        for k in args.ks:
            if not args.quick:
                console.print(f"case K={k} L={length} …")
            rows.append(run_case(model, k, length, args))

    by_case = {(r["K"], r["L"]): r for r in rows}
    key = SUMMARY_CASE if SUMMARY_CASE in by_case else max(by_case)
    headline = by_case[key]
    max_diff = max(r["max_abs_diff"] for r in rows)
    summary = {
        "speedup_k512_l1024": headline["speedup"] if key == SUMMARY_CASE else None,
        "headline_case": f"K={key[0]} L={key[1]}",
        "headline_speedup": headline["speedup"],
        "headline_shared_ms": headline["shared_ms"],
        "headline_naive_ms": headline["naive_ms"],
        "min_speedup": min(r["speedup"] for r in rows),
        "max_speedup": max(r["speedup"] for r in rows),
        "max_abs_diff": max_diff,
        "target_speedup": TARGET_SPEEDUP,
        "target_met": headline["speedup"] >= TARGET_SPEEDUP,
    }
    device = cpu_description()
    result: dict[str, Any] = {
        "benchmark": NAME,
        "device": device,
        "threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "quick": args.quick,
        "dtype": "float32",
        "config": {
            **model.cfg.model_dump(),
            "micro_batch": MICRO_BATCH,
            "naive_batch_cap": args.naive_batch,
            "naive_attention_budget_entries": ATTN_BUDGET,
            "naive_max_candidates": args.naive_max_candidates,
            "reps": args.reps,
            "naive_reps": args.naive_reps,
            "seed": args.seed,
            "weights": "random (seeded); relative position/time bias tables ~ N(0, 0.5²)",
        },
        "load_average": {"before": load_before, "after": load_average()},
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "method_notes": {
            "naive": "SequentialRecommender.score_candidates_naive: one full causal forward "
            "pass over history + [candidate token] per candidate, batch_size = "
            "naive_batch_size sequences per call; naive_ms = median measured time x K / "
            "naive_measured_candidates (extrapolated where naive_extrapolated)",
            "shared": "SequentialRecommender.score_candidates: history encoded once (per-block "
            f"keys/values cached), candidates in micro-batches of {MICRO_BATCH}; "
            "shared_prefix_ms: the same call with no candidates (history encoding only)",
            "timing": "time.perf_counter around one call under torch.inference_mode, median "
            "over reps after one untimed warm-up of each path",
            "max_abs_diff": "max |shared - naive| over the measured candidates' cosine scores",
        },
        "cases": rows,
        "summary": summary,
        "elapsed_s": 0.0,
    }

    print_table(console, rows)
    console.print(
        f"[bold]summary[/]: {summary['headline_case']}: naive {headline['naive_ms']:,.0f} ms, "
        f"shared {headline['shared_ms']:,.1f} ms, speedup [bold]"
        f"{headline['speedup']:,.1f}x[/] (target {TARGET_SPEEDUP:.0f}x); max |diff| "
        f"{max_diff:.1e}; threads {threads['torch']}, {device}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"{NAME}.json"
    png_path = args.out / f"{NAME}.png"
    mode = "quick" if args.quick else f"median of {args.reps} (naive {args.naive_reps})"
    meta = (
        f"HSTU d={args.dim} b={args.blocks} h={args.heads}, {device}, "
        f"{threads['torch']} threads, {mode}"
    )
    plot(rows, meta, png_path)
    result["elapsed_s"] = round(time.perf_counter() - started, 2)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {json_path} and {png_path} in {result['elapsed_s']:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
