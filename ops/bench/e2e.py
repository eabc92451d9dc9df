"""End to end: the disaggregated path (gateway → Celery featurizer pool over Redis → Triton)
against a monolith (the gateway process with the store, featurizer and models inside), at a
sweep of offered request rates, on the demo data, through real local stacks.

For each configuration — ``disaggregated`` (1 featurizer worker), ``disaggregated-2w`` (2
worker processes) and ``monolith`` — the benchmark starts the stack (``feedserve up``'s
launcher), warms it up, then for each rate drives ``POST /v1/feed`` with an **open-loop**
generator (requests leave on a fixed schedule whether or not earlier ones returned; bounded
count and time, loopback only) and records:

- latency p50/p95/p99, achieved throughput (OK answers per second) and errors;
- where the time goes: the gateway's per-stage histograms (featurize, embed, retrieve, rank,
  …; ``/metrics`` before and after) and, for the disaggregated stack, Triton's own compute
  time per request (the models' execution time from ``/v2/models/<m>/stats``, each batched
  execution counted once), so **overhead = end-to-end − model compute**.

The lowest rate (the low-load figures: ``overhead_fraction_low_load``, the time split) runs
for ``--low-load-duration`` (60 s: 60 requests at 1 rps), the others for ``--duration``.
``saturation_rps`` is the highest achieved throughput of a configuration over the sweep.
Any gateway URL can be measured instead with ``--url`` (no stack is started; no Triton
statistics). Results: ``ops/results/e2e.json`` and ``e2e.png`` (latency vs offered load;
stage breakdown at the lowest rate).

    python ops/bench/e2e.py --data var/data --artifacts var/artifacts
    python ops/bench/e2e.py --quick --out /tmp/x --data D --artifacts A   # correctness only
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import numpy as np
from _benchenv import cpu_description, load_average
from rich.console import Console
from rich.table import Table

from feedserve.data.io import read_dataset
from feedserve.launcher import Ports, Stack, load_dataset
from feedserve.settings import LauncherSettings
from feedserve.store import open_store

NAME = "e2e"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results"
REPO = Path(__file__).resolve().parents[2]
MODELS = ("retrieval_encoder", "post_index", "generative_ranker")
CONFIGS: dict[str, dict[str, Any]] = {
    "disaggregated": {"monolith": False, "workers": 1},
    "disaggregated-2w": {"monolith": False, "workers": 2},
    "monolith": {"monolith": True, "workers": 0},
}
STAGE = re.compile(r'^feedserve_stage_seconds_(sum|count)\{stage="([^"]+)"\} ([0-9.e+-]+)$')
FEED = re.compile(r'^feedserve_request_seconds_(sum|count)\{route="/v1/feed"\} ([0-9.e+-]+)$')
console = Console()


# --- measuring ----------------------------------------------------------------------------------
def scrape(client: httpx.Client, url: str) -> dict[str, float]:
    """Per-stage and end-to-end (gateway) seconds and counts, cumulative."""
    out: dict[str, float] = {}
    for line in client.get(f"{url}/metrics").text.splitlines():
        if m := STAGE.match(line):
            out[f"stage:{m.group(2)}:{m.group(1)}"] = float(m.group(3))
        elif m := FEED.match(line):
            out[f"feed:{m.group(1)}"] = float(m.group(2))
    return out


def triton_compute_ns(client: httpx.Client, triton_url: str | None) -> int:
    """Cumulative execution (compute input + infer + output) nanoseconds of the three models.

    Read from Triton's per-batch-size statistics, where each execution counts once: the
    per-request ``inference_stats`` charge a dynamic batch's whole compute to every request in
    it, which overstates compute (beyond the wall time) as soon as requests are batched."""
    if triton_url is None:
        return 0
    total = 0
    for model in MODELS:
        stats = client.get(f"http://{triton_url}/v2/models/{model}/stats").json()
        for version in stats.get("model_stats", []):
            for batch in version.get("batch_stats", []):
                total += sum(
                    int(batch[k]["ns"])
                    for k in ("compute_input", "compute_infer", "compute_output")
                )
    return total


def per_request(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    """Mean ms per feed request of each stage over the window."""
    stages = {k.split(":")[1] for k in after if k.startswith("stage:")}
    out = {}
    for stage in sorted(stages):
        key = f"stage:{stage}:sum"
        out[stage] = (after.get(key, 0) - before.get(key, 0)) * 1000 / max(n, 1)
    return out


async def open_loop(url: str, members: list[int], rate: float, duration_s: float) -> list[Any]:
    """Requests at ``rate``/s on a fixed schedule for ``duration_s``; (latency s, status).

    aiohttp, not httpx: httpx's async client spent 2-6 ms more per request on this machine
    (against the same gateway, measured by the gateway's own request time), which would be
    charged to the platform as overhead; aiohttp's open loop costs what a plain synchronous
    client does (~2 ms, HTTP included)."""
    n = max(1, int(rate * duration_s))
    connector = aiohttp.TCPConnector(limit=512)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as session:

        async def one(i: int, at: float) -> tuple[float, int]:
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            t0 = time.perf_counter()
            try:
                body = {"member_id": members[i % len(members)], "count": 20}
                async with session.post("/v1/feed", json=body) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError):
                status = 0
            return time.perf_counter() - t0, status

        start = time.perf_counter() + 0.05
        return await asyncio.gather(*(one(i, start + i / rate) for i in range(n)))


def measure_rate(
    url: str, triton_url: str | None, members: list[int], rate: float, duration_s: float
) -> dict[str, Any]:
    with httpx.Client(timeout=30) as c:
        before, tb = scrape(c, url), triton_compute_ns(c, triton_url)
        t0 = time.perf_counter()
        results = asyncio.run(open_loop(url, members, rate, duration_s))
        wall = time.perf_counter() - t0
        after, ta = scrape(c, url), triton_compute_ns(c, triton_url)
    ok = [lat for lat, status in results if status == 200]
    n_feed = int(after.get("feed:count", 0) - before.get("feed:count", 0))
    gateway_ms = (after.get("feed:sum", 0) - before.get("feed:sum", 0)) * 1000 / max(n_feed, 1)
    lat = np.asarray(ok or [float("nan")]) * 1000
    row: dict[str, Any] = {
        "offered_rps": rate,
        "requests": len(results),
        "ok": len(ok),
        "errors": len(results) - len(ok),
        "throughput_rps": len(ok) / wall,
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        "p99_ms": float(np.percentile(lat, 99)),
        "mean_ms": float(lat.mean()),
        "gateway_mean_ms": gateway_ms,
        "stages_ms": per_request(before, after, n_feed),
    }
    if triton_url is not None:
        compute = (ta - tb) / 1e6 / max(n_feed, 1)
        row["model_compute_ms"] = compute
        row["overhead_ms"] = row["mean_ms"] - compute
        row["overhead_fraction"] = row["overhead_ms"] / row["mean_ms"]
    return row


# --- stacks -------------------------------------------------------------------------------------
def start_stack(config: str, data: Path, artifacts: Path, workdir: Path) -> Stack:
    spec = CONFIGS[config]
    redis = (
        ""
        if spec["monolith"]
        else os.environ.get("FEEDSERVE_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    settings = LauncherSettings(
        redis_url=redis,
        redis_prefix=f"bench{uuid.uuid4().hex[:8]}",
        artifacts_dir=artifacts,
        data_dir=data,
        model_repo=REPO / "model_repo",
        runtime_dir=workdir / f"run-{config}",
        featurizer_workers=max(1, spec["workers"]),
        startup_timeout_s=300,
        monolith=spec["monolith"],
    )
    if redis:
        load_dataset(settings)
    else:
        (artifacts / "nearline" / "post_embeddings.log").unlink(missing_ok=True)
    stack = Stack(settings, Ports.allocate(settings.host))
    stack.start()
    return stack


def run_config(
    url: str,
    triton_url: str | None,
    members: list[int],
    rates: list[float],
    duration_s: float,
    warmup: int,
    low_load_duration_s: float = 0.0,
    probes: int = 10,
) -> list[dict[str, Any]]:
    """Each rate for ``duration_s``; the lowest (the low-load figures) for at least
    ``low_load_duration_s``, so that its mean rests on more than a few requests, then
    ``probes`` explained requests for ``featurize_overlap_ms``."""
    with httpx.Client(base_url=url, timeout=60) as c:
        for i in range(warmup):
            c.post("/v1/feed", json={"member_id": members[i % len(members)], "count": 20})
    rows = []
    for i, rate in enumerate(rates):
        seconds = max(duration_s, low_load_duration_s) if i == 0 else duration_s
        row = measure_rate(url, triton_url, members, rate, seconds)
        row["duration_s"] = seconds
        if i == 0:
            row["featurize_overlap_ms"] = featurize_overlap_ms(url, members, probes)
        console.print(
            f"  {rate:6.1f} rps offered: {row['throughput_rps']:6.1f} rps ok, "
            f"p50 {row['p50_ms']:7.1f} ms, p99 {row['p99_ms']:7.1f} ms, {row['errors']} errors"
        )
        rows.append(row)
    return rows


def featurize_overlap_ms(url: str, members: list[int], probes: int, gap_s: float = 0.5) -> float:
    """How long the featurize stage goes on after the member embedding has started (the
    featurizer hands the member prompt over early): the median over ``probes`` explained
    requests, ``gap_s`` apart (low load). That tail is off the critical path, so the time
    split does not count it; 0 when no request embedded the member."""
    tails = []
    with httpx.Client(base_url=url, timeout=30) as c:
        for i in range(probes):
            time.sleep(gap_s)
            body = {"member_id": members[i % len(members)], "count": 20, "explain": True}
            response = c.post("/v1/feed", json=body)
            if response.status_code != 200:
                continue
            steps = {s["step"]: s for s in response.json()["explain"]["steps"]}
            hydrate, embed = steps.get("hydrate_member"), steps.get("embed_member")
            if hydrate and embed and embed["status"] == "ok":
                end = hydrate["start_ms"] + hydrate["ms"]
                tails.append(max(0.0, end - embed["start_ms"]))
    return float(np.median(tails)) if tails else 0.0


def summarize(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    saturation = {cfg: max(r["throughput_rps"] for r in rows) for cfg, rows in results.items()}
    out: dict[str, Any] = {"saturation_rps": saturation}
    low = results.get("disaggregated", [{}])[0]
    if "overhead_fraction" in low:
        out["overhead_fraction_low_load"] = low["overhead_fraction"]
        out["low_load"] = {
            "offered_rps": low["offered_rps"],
            "mean_ms": low["mean_ms"],
            "model_compute_ms": low["model_compute_ms"],
            "overhead_ms": low["overhead_ms"],
            "stages_ms": low["stages_ms"],
        }
    if "monolith" in results and "disaggregated" in results:
        mono, dis = results["monolith"][0], results["disaggregated"][0]
        if split := config_split(results, "disaggregated"):
            out["where_time_goes_low_load"] = split
        out["low_load_p50_ratio_disaggregated_vs_monolith"] = dis["p50_ms"] / mono["p50_ms"]
        out["saturation_ratio_disaggregated_vs_monolith"] = (
            saturation["disaggregated"] / saturation["monolith"]
        )
    return out


def client_http(row: dict[str, Any]) -> float:
    """The load generator's HTTP exchange with the gateway: its end-to-end mean minus the
    gateway's own request time."""
    return float(row["mean_ms"] - row["gateway_mean_ms"])


def time_split(dis: dict[str, Any], mono: dict[str, Any]) -> dict[str, float]:
    """The disaggregated mean at the lowest rate split into parts that add up to it.

    The featurize stage counts up to the moment the embedding starts (its tail after the
    member prompt's early hand-over, ``featurize_overlap_ms``, runs beside the model). The
    featurizer's work is what the same functions take in the monolith's gateway process;
    the rest of the featurize stage is the Celery round trip (broker, result backend, codec,
    worker scheduling). ``client_http`` is the load generator's HTTP exchange with the gateway
    (its end-to-end minus the gateway's own request time); the remainder is the gateway's own
    work plus the Triton client's (HTTP, tensors, Triton's queue)."""
    featurize = critical_featurize_ms(dis)
    work = min(critical_featurize_ms(mono), featurize)
    parts = {
        "model_compute_ms": dis["model_compute_ms"],
        "featurizer_work_ms": work,
        "featurizer_round_trip_ms": featurize - work,
        "client_http_ms": client_http(dis),
    }
    parts["gateway_and_triton_client_ms"] = dis["mean_ms"] - sum(parts.values())
    return parts


def critical_featurize_ms(row: dict[str, Any]) -> float:
    """The featurize stage's mean less its tail that overlaps the member embedding."""
    stage = float(row["stages_ms"].get("featurize", 0.0))
    return max(0.0, stage - float(row.get("featurize_overlap_ms", 0.0)))


def config_split(results: dict[str, list[dict[str, Any]]], cfg: str) -> dict[str, float]:
    """A configuration's mean at the lowest rate in parts that add up to it: ``time_split``
    for a disaggregated stack (which needs the monolith's run); the monolith's own is its
    featurizer work, the client's HTTP, and the rest (models and gateway, one process)."""
    if "monolith" not in results:
        return {}
    mono = results["monolith"][0]
    if cfg != "monolith":
        row = results[cfg][0]
        return time_split(row, mono) if "model_compute_ms" in row else {}
    work = critical_featurize_ms(mono)
    client = client_http(mono)
    return {
        "models_and_gateway_in_process_ms": mono["mean_ms"] - work - client,
        "featurizer_work_ms": work,
        "client_http_ms": client,
    }


def stacked_split(
    ax: Any, splits: dict[str, dict[str, float]], results: dict[str, list[dict[str, Any]]]
) -> None:
    """One bar per configuration, its parts stacked (the models at the bottom)."""
    names = list(splits)
    parts = list(dict.fromkeys(p for split in splits.values() for p in split))
    parts.sort(key=lambda p: not p.startswith("model"))
    bottom = np.zeros(len(names))
    for part in parts:
        vals = np.array([splits[n].get(part, 0.0) for n in names])
        ax.bar(names, vals, bottom=bottom, label=part.removesuffix("_ms").replace("_", " "))
        bottom += vals
    ax.set_ylabel(f"ms per request at {results[names[0]][0]['offered_rps']:g} rps (mean)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def plot(results: dict[str, list[dict[str, Any]]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    for cfg, rows in results.items():
        rates = [r["offered_rps"] for r in rows]
        ax1.plot(rates, [r["p50_ms"] for r in rows], "o-", label=f"{cfg} p50")
        ax1.plot(rates, [r["p99_ms"] for r in rows], "x--", label=f"{cfg} p99")
    ax1.set_xlabel("offered load (requests/s, open loop)")
    ax1.set_ylabel("latency (ms)")
    ax1.set_yscale("log")
    ax1.set_title("Latency vs offered load")
    ax1.legend(fontsize=7)
    ax1.grid(alpha=0.3)
    splits = {cfg: split for cfg in results if (split := config_split(results, cfg))}
    ax2.set_title("Where the time goes (parts add up to the mean)")
    if splits:
        stacked_split(ax2, splits, results)
    else:  # --url, or no monolith run: nothing to split the mean against
        ax2.text(0.5, 0.5, "the time split needs the monolith's run", ha="center")
        ax2.set_axis_off()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def print_table(results: dict[str, list[dict[str, Any]]]) -> None:
    table = Table(title="end to end: open-loop sweep")
    for col in ("config", "offered rps", "ok rps", "p50 ms", "p99 ms", "errors", "overhead"):
        table.add_column(col, justify="right" if col != "config" else "left")
    for cfg, rows in results.items():
        for r in rows:
            over = f"{r['overhead_fraction']:.0%}" if "overhead_fraction" in r else "-"
            cells = [f"{r['offered_rps']:.1f}", f"{r['throughput_rps']:.1f}",
                     f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}"]  # fmt: skip
            table.add_row(cfg, *cells, str(r["errors"]), over)
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO / "var" / "data")
    ap.add_argument("--artifacts", type=Path, default=REPO / "var" / "artifacts")
    ap.add_argument("--url", help="measure this gateway instead of starting stacks")
    ap.add_argument("--rates", type=float, nargs="+", default=[1, 2, 4, 8, 12, 16, 24])
    ap.add_argument("--duration", type=float, default=15.0, help="seconds per rate")
    ap.add_argument("--low-load-duration", type=float, default=60.0,
                    help="seconds at the lowest rate (at least --duration)")  # fmt: skip
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--quick", action="store_true", help="tiny sweep, correctness only")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    if args.quick:
        args.rates, args.duration, args.configs = [2.0, 6.0], 2.0, ["disaggregated", "monolith"]
        args.low_load_duration = 0.0
    warmup = 4 if args.quick else 30
    probes = 2 if args.quick else 10
    ds = read_dataset(args.data)
    rng = np.random.default_rng(0)
    members = [int(m) for m in rng.choice([m.member_id for m in ds.members], 200)]
    results: dict[str, list[dict[str, Any]]] = {}

    def sweep(url: str, triton: str | None) -> list[dict[str, Any]]:
        return run_config(
            url, triton, members, args.rates, args.duration, warmup, args.low_load_duration, probes
        )

    if args.url:
        console.print(f"[bold]{args.url}[/]")
        results["url"] = sweep(args.url, None)
    else:
        with tempfile.TemporaryDirectory(prefix="feedserve-e2e-") as tmp:
            for cfg in args.configs:
                console.print(f"[bold]{cfg}[/]: starting the stack")
                stack = start_stack(cfg, args.data, args.artifacts, Path(tmp))
                try:
                    triton = None if CONFIGS[cfg]["monolith"] else stack.triton_url
                    results[cfg] = sweep(stack.gateway_url, triton)
                finally:
                    stack.stop()
                    if not CONFIGS[cfg]["monolith"]:  # the demo data set loaded into Redis
                        open_store(stack.settings).clear()
    print_table(results)
    summary = summarize(results)
    payload = {
        **summary,
        "rows": results,
        "device": f"CPU: {cpu_description()}",
        "quick": args.quick,
        "_meta": {
            "benchmark": NAME,
            "timestamp": datetime.now(UTC).replace(microsecond=0).isoformat(),
            "python": platform.python_version(),
            "load_average": load_average(),
            "rates": args.rates,
            "duration_s": args.duration,
            "low_load_duration_s": max(args.duration, args.low_load_duration),
            "members": len(ds.members),
            "posts": len(ds.posts),
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{NAME}.json").write_text(json.dumps(payload, indent=2) + "\n")
    png = plot(results, args.out / f"{NAME}.png")
    console.print(f"wrote {args.out / f'{NAME}.json'} and {png}")
    for key in ("overhead_fraction_low_load", "saturation_ratio_disaggregated_vs_monolith"):
        if key in summary:
            console.print(f"{key}: {summary[key]:.3f}")
    for part, ms in summary.get("where_time_goes_low_load", {}).items():
        console.print(f"  {part}: {ms:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
