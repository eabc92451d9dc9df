"""Exhaustive top-K: feedserve's ``ExhaustiveIndex`` against FAISS ``IndexFlatIP``.

Both search the same float32, unit-normalised rows with the same batch of queries (64 by
default, k = 100) on the same number of threads (``torch.set_num_threads`` and
``faiss.omp_set_num_threads``, both recorded). Cases: N ∈ {100k, 1M} × d ∈ {384, 768}, on
i.i.d. Gaussian directions (``random``) and on a clustered set closer to real embeddings
(``clustered``: 1,000 topic centres, rows and queries scattered around them, so scores near
the K-th best are crowded and near-ties are common).

FAISS is timed twice: as configured out of the box (``faiss``; with 64 queries × d below
``distance_compute_blas_threshold`` it scans the rows once per query with SIMD dot
products) and with that threshold set to 0 (``faiss_blas``: its sgemm path, tiles of 1024
rows, the fastest exact FAISS path for a query batch on this machine). ``ratio_vs_faiss``
compares ours with the faster of the two; ``ratio_vs_faiss_default`` with the default.

For every case it measures build time (ours: ``upsert``; FAISS: ``add``), search time
(median over ``--reps`` runs after ``--warmup``; methods interleaved run by run, 50 ms
apart), and memory: ``nbytes`` (ours: ``ExhaustiveIndex.nbytes()``; FAISS: 4·N·d) and peak
RSS above the RSS before the call (``VmHWM`` reset through ``/proc/self/clear_refs``) for
build and for one search. Top-K identity: per query, the id lists of ours and FAISS must be
equal as sets, except for posts whose exact (float64) score is within the float32 rounding
bound d·2⁻²⁴ of the K-th best (ties); exact-order agreement is reported too.

    python ops/bench/retrieval_topk.py            # full run (~10 min on 2 cores), ops/results/
    python ops/bench/retrieval_topk.py --quick --out /tmp/x   # seconds, correctness only
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from _benchenv import cpu_description, load_average
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from feedserve.models.index import SCAN_ROWS, ExhaustiveIndex, host_matmul_backend

NAME = "retrieval_topk"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results"

FULL_SIZES, FULL_DIMS = (100_000, 1_000_000), (384, 768)
QUICK_SIZES, QUICK_DIMS = (20_000,), (384, 768)
FULL_REPS, FULL_WARMUP = 5, 1
QUICK_REPS, QUICK_WARMUP = 2, 1
QUICK_CHUNK_ROWS = 4096  # several blocks even at 20k rows: the merge path is exercised
DATASETS = ("random", "clustered")
N_CENTRES = 1000
CLUSTER_NOISE = 0.8  # noise norm relative to the (unit) centre: cosine to the centre ≈ 0.78
GEN_ROWS = 65_536  # rows generated (and normalised) per step

METHODS = ("ours", "faiss", "faiss_blas")
LABELS = {
    "ours": "feedserve ExhaustiveIndex",
    "faiss": "FAISS IndexFlatIP (default)",
    "faiss_blas": "FAISS IndexFlatIP (BLAS path)",
}
COLORS = {"ours": "#2a9d8f", "faiss": "#e76f51", "faiss_blas": "#f4a261"}
DEFAULT_BLAS_THRESHOLD = int(faiss.cvar.distance_compute_blas_threshold)


# --------------------------------------------------------------------------- data


def _unit_rows_inplace(x: np.ndarray) -> None:
    for start in range(0, len(x), GEN_ROWS):
        part = x[start : start + GEN_ROWS]
        part /= np.linalg.norm(part, axis=1, keepdims=True)


def make_data(
    kind: str, n: int, dim: int, n_queries: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit rows and ``n_queries`` unit queries (float32), generated in steps so that
    no float64 or second full-size copy is made."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, dim), dtype=np.float32)
    if kind == "random":
        for start in range(0, n, GEN_ROWS):
            stop = min(start + GEN_ROWS, n)
            x[start:stop] = rng.standard_normal((stop - start, dim), dtype=np.float32)
        q = rng.standard_normal((n_queries, dim), dtype=np.float32)
    elif kind == "clustered":
        centres = rng.standard_normal((N_CENTRES, dim), dtype=np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        scale = np.float32(CLUSTER_NOISE / np.sqrt(dim))
        for start in range(0, n, GEN_ROWS):
            stop = min(start + GEN_ROWS, n)
            which = rng.integers(0, N_CENTRES, size=stop - start)
            noise = rng.standard_normal((stop - start, dim), dtype=np.float32) * scale
            x[start:stop] = centres[which] + noise
        which = rng.integers(0, N_CENTRES, size=n_queries)
        noise = rng.standard_normal((n_queries, dim), dtype=np.float32) * scale
        q = centres[which] + noise
    else:
        raise ValueError(f"unknown data set {kind!r}")
    _unit_rows_inplace(x)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return x, np.ascontiguousarray(q, dtype=np.float32)


# --------------------------------------------------------------------------- memory


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _trim_heap() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``), so that RSS before a
    call does not include free blocks the call could reuse without raising RSS."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@dataclass
class Measured:
    value: Any
    seconds: float
    peak_rss_delta: int | None  # bytes above the RSS before the call; None if unmeasurable


def measure(fn: Callable[[], Any]) -> Measured:
    """Run ``fn`` once: its result, wall time and peak RSS above the RSS before it."""
    gc.collect()
    _trim_heap()
    before = _status_kib("VmRSS")
    can_peak = _reset_peak()
    t0 = time.perf_counter()
    value = fn()
    seconds = time.perf_counter() - t0
    peak = max(_status_kib("VmHWM") - before, 0) * 1024 if can_peak else None
    return Measured(value, seconds, peak)


# --------------------------------------------------------------------------- correctness


def compare_topk(
    x: np.ndarray,
    q: np.ndarray,
    ours: tuple[np.ndarray, np.ndarray],
    ref: tuple[np.ndarray, np.ndarray],
    tie_tol: float,
) -> dict[str, Any]:
    """Agreement of two top-K results (post ids = row + 1) with exact float64 scores as
    the arbiter of ties."""
    ours_ids, ours_scores = ours
    ref_ids, ref_scores = ref
    n, k = ours_ids.shape
    exact_order = 0
    same_set = 0
    tie_only = 0
    mismatched: list[int] = []
    max_err_ours = 0.0
    max_err_ref = 0.0
    for i in range(n):
        a, b = ours_ids[i], ref_ids[i]
        union = np.union1d(a, b)
        exact = x[union - 1].astype(np.float64) @ q[i].astype(np.float64)
        score_of = dict(zip(union.tolist(), exact.tolist(), strict=True))
        max_err_ours = max(
            max_err_ours,
            max(abs(score_of[int(p)] - float(s)) for p, s in zip(a, ours_scores[i], strict=True)),
        )
        max_err_ref = max(
            max_err_ref,
            max(abs(score_of[int(p)] - float(s)) for p, s in zip(b, ref_scores[i], strict=True)),
        )
        if np.array_equal(a, b):
            exact_order += 1
        differ = set(a.tolist()) ^ set(b.tolist())
        if not differ:
            same_set += 1
            continue
        kth = np.sort(exact)[::-1][k - 1]
        if all(abs(score_of[p] - kth) <= tie_tol for p in differ):
            tie_only += 1
        else:
            mismatched.append(i)
    return {
        "topk_identical": not mismatched,
        "exact_order_agreement": exact_order / n,
        "set_agreement": same_set / n,
        "tie_resolved_queries": tie_only,
        "mismatched_queries": mismatched,
        "tie_tolerance": tie_tol,
        "ours_max_abs_score_error": max_err_ours,
        "faiss_max_abs_score_error": max_err_ref,
    }


# --------------------------------------------------------------------------- one case


def faiss_search(
    index: faiss.IndexFlatIP, q: np.ndarray, k: int, blas: bool
) -> tuple[np.ndarray, np.ndarray]:
    faiss.cvar.distance_compute_blas_threshold = 0 if blas else DEFAULT_BLAS_THRESHOLD
    try:
        scores, labels = index.search(q, k)
    finally:
        faiss.cvar.distance_compute_blas_threshold = DEFAULT_BLAS_THRESHOLD
    return labels.astype(np.int64) + 1, scores


def run_case(
    dataset: str,
    n: int,
    dim: int,
    args: argparse.Namespace,
    advance: Callable[[], None],
) -> dict[str, Any]:
    x, q = make_data(dataset, n, dim, args.queries, args.seed + n + dim)
    post_ids = np.arange(1, n + 1, dtype=np.int64)

    def build_ours() -> ExhaustiveIndex:
        index = ExhaustiveIndex(dim, capacity=n, chunk_rows=args.chunk_rows)
        index.upsert(post_ids, x)
        return index

    def build_faiss() -> faiss.IndexFlatIP:
        index = faiss.IndexFlatIP(dim)
        index.add(x)
        return index

    ours_build = measure(build_ours)
    faiss_build = measure(build_faiss)
    ours_index: ExhaustiveIndex = ours_build.value
    faiss_index: faiss.IndexFlatIP = faiss_build.value
    k = args.k
    searches: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {
        "ours": partial(ours_index.search, q, k),
        "faiss": partial(faiss_search, faiss_index, q, k, blas=False),
        "faiss_blas": partial(faiss_search, faiss_index, q, k, blas=True),
    }
    peaks: dict[str, int | None] = {}
    results: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for method, fn in searches.items():  # first call: results and peak memory (untimed)
        m = measure(fn)
        results[method], peaks[method] = m.value, m.peak_rss_delta
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for rep in range(-args.warmup, args.reps):
        order = METHODS if rep % 2 == 0 else METHODS[::-1]
        for method in order:
            time.sleep(0.05)  # let the other runtime's spinning OpenMP threads go idle
            t0 = time.perf_counter()
            searches[method]()
            elapsed = time.perf_counter() - t0
            if rep >= 0:
                times[method].append(elapsed)
        advance()

    tie_tol = dim * 2.0**-24
    agree = compare_topk(x, q, results["ours"], results["faiss"], tie_tol)
    agree_blas = compare_topk(x, q, results["ours"], results["faiss_blas"], tie_tol)
    med = {m: float(np.median(times[m])) for m in METHODS}
    best_faiss = min(med["faiss"], med["faiss_blas"])
    row: dict[str, Any] = {
        "dataset": dataset,
        "n": n,
        "dim": dim,
        "queries": args.queries,
        "k": k,
        "build_s": {"ours": ours_build.seconds, "faiss": faiss_build.seconds},
        "search_s_median": med,
        "search_s_min": {m: float(min(times[m])) for m in METHODS},
        "search_s_all": times,
        "ratio_vs_faiss": med["ours"] / best_faiss,
        "ratio_vs_faiss_default": med["ours"] / med["faiss"],
        "ratio_vs_faiss_blas": med["ours"] / med["faiss_blas"],
        **agree,
        "topk_identical_vs_faiss_blas": agree_blas["topk_identical"],
        "exact_order_agreement_vs_faiss_blas": agree_blas["exact_order_agreement"],
        "nbytes": {"ours": ours_index.nbytes(), "faiss": int(faiss_index.ntotal) * dim * 4},
        "build_peak_rss_delta_bytes": {
            "ours": ours_build.peak_rss_delta,
            "faiss": faiss_build.peak_rss_delta,
        },
        "search_peak_rss_delta_bytes": peaks,
        "load_average_after": load_average(),
        "score_tile_bytes": args.queries * min(args.chunk_rows, SCAN_ROWS, n) * 4,
    }
    del ours_index, faiss_index, ours_build, faiss_build, searches, results
    gc.collect()
    return row


# --------------------------------------------------------------------------- reporting


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.0f}"


def print_table(console: Console, rows: list[dict[str, Any]]) -> None:
    table = Table(title="exhaustive top-K: feedserve ExhaustiveIndex vs FAISS IndexFlatIP")
    for col in ("data", "N", "d"):
        table.add_column(col, justify="left" if col == "data" else "right")
    for col in ("ours", "faiss", "faiss blas", "ours/best", "ours/default", "identical"):
        table.add_column(col, justify="right")
    table.add_column("order eq", justify="right")
    table.add_column("MiB ours/faiss", justify="right")
    table.add_column("search peak MiB", justify="right")
    for r in rows:
        med = r["search_s_median"]
        ok = "[green]yes[/]" if r["topk_identical"] else "[red]NO[/]"
        table.add_row(
            r["dataset"],
            f"{r['n']:,}",
            str(r["dim"]),
            f"{med['ours'] * 1e3:,.1f} ms",
            f"{med['faiss'] * 1e3:,.1f} ms",
            f"{med['faiss_blas'] * 1e3:,.1f} ms",
            f"[bold]{r['ratio_vs_faiss']:.2f}x[/]",
            f"{r['ratio_vs_faiss_default']:.2f}x",
            ok,
            f"{r['exact_order_agreement']:.0%}",
            f"{_mib(r['nbytes']['ours'])}/{_mib(r['nbytes']['faiss'])}",
            f"{_mib(r['search_peak_rss_delta_bytes']['ours'])}"
            f"/{_mib(r['search_peak_rss_delta_bytes']['faiss_blas'])}",
        )
    console.print(table)


def plot(rows: list[dict[str, Any]], meta: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['dataset']}\n{r['n'] // 1000}k×{r['dim']}" for r in rows]
    x = np.arange(len(rows))
    width = 0.27
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(14, 5.5))
    for j, method in enumerate(METHODS):
        med = np.array([r["search_s_median"][method] * 1e3 for r in rows])
        ax_t.bar(x + (j - 1) * width, med, width, label=LABELS[method], color=COLORS[method])
    for i, r in enumerate(rows):
        ax_t.annotate(
            f"{r['ratio_vs_faiss']:.2f}x" + ("" if r["topk_identical"] else " ≠"),
            (i - width, r["search_s_median"]["ours"] * 1e3),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax_t.set_yscale("log")
    ax_t.set_title("search time, 64 queries (ms, log; label = ours ÷ faster FAISS)")
    for j, (key, name) in enumerate(
        (("ours", "ours: stored vectors"), ("faiss", "FAISS: stored vectors"))
    ):
        vals = [r["nbytes"][key] / 2**20 for r in rows]
        ax_m.bar(x + (j - 0.5) * width, vals, width, label=name, color=COLORS[key])
    peaks = [(r["search_peak_rss_delta_bytes"]["ours"] or 0) / 2**20 for r in rows]
    ax_m.plot(x, peaks, "o--", color="#264653", label="ours: search peak RSS above baseline")
    ax_m.set_yscale("log")
    ax_m.set_title("memory (MiB, log)")
    for ax in (ax_t, ax_m):
        ax.set_xticks(x, labels, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"exhaustive top-K — {meta}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="tiny N (correctness only)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="numbers of rows")
    parser.add_argument("--dims", type=int, nargs="+", default=None, help="dimensions")
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--queries", type=int, default=64)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--reps", type=int, default=None, help="timed searches per method")
    parser.add_argument("--warmup", type=int, default=None, help="untimed searches first")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--chunk-rows", type=int, default=None, help="ExhaustiveIndex blocks")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    args.sizes = args.sizes or list(QUICK_SIZES if args.quick else FULL_SIZES)
    args.dims = args.dims or list(QUICK_DIMS if args.quick else FULL_DIMS)
    if args.reps is None:
        args.reps = QUICK_REPS if args.quick else FULL_REPS
    if args.warmup is None:
        args.warmup = QUICK_WARMUP if args.quick else FULL_WARMUP
    if args.chunk_rows is None:
        args.chunk_rows = QUICK_CHUNK_ROWS if args.quick else ExhaustiveIndex(1).chunk_rows
    if args.reps < 1 or args.warmup < 0 or args.threads < 1 or args.k < 1 or args.queries < 1:
        parser.error("--reps, --threads, --k and --queries must be ≥ 1, --warmup ≥ 0")
    return args


def cases(args: argparse.Namespace) -> Iterator[tuple[str, int, int]]:
    for dataset in args.datasets:
        for n in args.sizes:
            for dim in args.dims:
                yield dataset, n, dim


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console() if sys.stdout.isatty() else Console(width=160)
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    threads = {"torch": torch.get_num_threads(), "faiss_omp": faiss.omp_get_max_threads()}
    load_before = load_average()

    todo = list(cases(args))
    rows: list[dict[str, Any]] = []
    with Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=args.quick,
    ) as progress:
        for dataset, n, dim in todo:
            task = progress.add_task(f"{dataset} {n:,}×{dim}", total=args.reps + args.warmup)

            def advance(task_id: Any = task) -> None:
                progress.advance(task_id)

            rows.append(run_case(dataset, n, dim, args, advance))

    worst = max(rows, key=lambda r: r["ratio_vs_faiss"])
    identical = all(r["topk_identical"] for r in rows)
    device = cpu_description()
    summary = {
        "ratio_vs_faiss": worst["ratio_vs_faiss"],
        "worst_case": f"{worst['dataset']} {worst['n']}x{worst['dim']}",
        "ratio_vs_faiss_default": max(r["ratio_vs_faiss_default"] for r in rows),
        "topk_identical": identical,
        "exact_order_agreement": min(r["exact_order_agreement"] for r in rows),
    }
    result: dict[str, Any] = {
        "benchmark": NAME,
        "ratio_vs_faiss": worst["ratio_vs_faiss"],
        "ratio_vs_faiss_default": summary["ratio_vs_faiss_default"],
        "topk_identical": identical,
        "device": device,
        "threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "quick": args.quick,
        "queries": args.queries,
        "k": args.k,
        "dtype": "float32",
        "chunk_rows": args.chunk_rows,
        "scan_rows": SCAN_ROWS,
        "ours_matmul": host_matmul_backend(),
        "reps": args.reps,
        "warmup": args.warmup,
        "seed": args.seed,
        "load_average": {"before": load_before, "after": load_average()},
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "method_notes": {
            "ours": "feedserve.models.index.ExhaustiveIndex(dim, capacity=N, "
            "chunk_rows=chunk_rows).search(queries, k), float32 on CPU",
            "faiss": "faiss.IndexFlatIP(d).search(queries, k) with default settings "
            f"(distance_compute_blas_threshold={DEFAULT_BLAS_THRESHOLD})",
            "faiss_blas": "the same with faiss.cvar.distance_compute_blas_threshold = 0 "
            "(sgemm path, distance_compute_blas_database_bs = "
            f"{int(faiss.cvar.distance_compute_blas_database_bs)})",
            "ratio_vs_faiss": "median search time of ours ÷ that of the faster FAISS "
            "configuration; worst case over the grid at the top level",
            "timing": "time.perf_counter around one search of the whole query batch; "
            "methods interleaved per repetition (order alternating), 50 ms apart",
            "topk_identical": "per query, equal id sets, except posts whose exact float64 "
            "score is within d·2^-24 (float32 rounding bound for unit vectors) of the K-th "
            "best exact score; compared with the default FAISS configuration (and with the "
            "BLAS one in *_vs_faiss_blas)",
            "memory": "nbytes: stored vectors (ours also the id and author columns); "
            "peak RSS deltas: VmHWM after the call minus VmRSS before it (after gc and "
            "glibc malloc_trim), VmHWM reset via /proc/self/clear_refs (null where that is "
            "not permitted); for search, measured on the first search after the build; "
            "score_tile_bytes: ours' score tile, queries x min(chunk_rows, SCAN_ROWS) x 4",
        },
        "rows": rows,
        "summary": summary,
        "elapsed_s": 0.0,
    }

    print_table(console, rows)
    console.print(
        f"[bold]summary[/]: worst ours ÷ FAISS = [bold]{summary['ratio_vs_faiss']:.2f}x[/] "
        f"({summary['worst_case']}; ÷ FAISS default: worst "
        f"{summary['ratio_vs_faiss_default']:.2f}x), identical top-K: "
        f"[bold]{identical}[/] (exact order in ≥ {summary['exact_order_agreement']:.0%} of "
        f"queries); threads {threads}, {device}"
    )

    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"{NAME}.json"
    png_path = args.out / f"{NAME}.png"
    mode = "quick" if args.quick else f"median of {args.reps}"
    meta = f"{device}, {threads['torch']} threads, {args.queries} queries, k={args.k}, {mode}"
    plot(rows, meta, png_path)
    result["elapsed_s"] = round(time.perf_counter() - started, 2)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {json_path} and {png_path} in {result['elapsed_s']:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
