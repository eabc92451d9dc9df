"""Inference modes: the member embedding computed online vs precomputed offline + refreshed
nearline, on the demo data, through the real local stack.

For each mode the benchmark starts the whole stack (tritonserver, Redis, Celery featurizer
worker, event consumer, gateway) with the packaged feed workflow changed in one line
(``embed_member``'s ``mode``), then measures:

- **per-request compute**: model compute time per feed request from Triton's own statistics
  (``/v2/models/<m>/stats``: compute input + infer + output), and CPU seconds per request of
  every stack process and its children (``/proc/<pid>/stat``);
- **latency**: p50/p95/p99 of ``POST /v1/feed`` (closed loop, a few concurrent clients, active
  members, after a warm-up);
- **freshness**: seconds from ``POST /v1/events`` (a member comments on posts) until the
  next feed request would use it. Online: the engagements are in the member's stored history
  (the request embeds the prompt built from it). Offline+nearline: that, and the stored
  member embedding was recomputed after the POST. Polled on Redis every 5 ms;
- **nearline cost**: stack CPU seconds per engagement batch (less what the idle stack spends
  in the same time, measured before the trials), and the offline job's time for every member
  (``feedserve run offline embed_member``).

Both modes run in one invocation, one after the other, on the same data and member sample;
the summary gives the ratios and the engagement rate at which the two cost the same.

    python ops/bench/modes.py --data var/data --artifacts var/artifacts
    python ops/bench/modes.py --quick --out /tmp/x --data D --artifacts A   # correctness only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _benchenv import cpu_description, load_average
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from feedserve.data.io import read_dataset
from feedserve.launcher import Ports, Stack, load_dataset
from feedserve.settings import LauncherSettings
from feedserve.store import open_store
from feedserve.store.base import FeatureStore
from feedserve.workflow.spec import DEFAULT_WORKFLOW, set_mode_in_text

NAME = "modes"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results"
REPO = Path(__file__).resolve().parents[2]
MODES = ("online", "offline+nearline")
MODELS = ("retrieval_encoder", "post_index", "generative_ranker")
TABLE = "member_embedding"
CLK_TCK = os.sysconf("SC_CLK_TCK")
IDLE_WINDOW_S = 2.0
console = Console()


@dataclass(frozen=True)
class Plan:
    requests: int
    warmup: int
    clients: int
    trials: int
    members: int
    freshness_timeout_s: float


FULL = Plan(requests=600, warmup=40, clients=4, trials=30, members=200, freshness_timeout_s=30)
QUICK = Plan(requests=16, warmup=4, clients=2, trials=3, members=12, freshness_timeout_s=30)


# --- measuring ----------------------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def cpu_seconds(roots: list[int]) -> float:
    """User + system CPU seconds of ``roots`` and every live descendant."""
    tree = _children()
    total, stack = 0.0, list(roots)
    while stack:
        pid = stack.pop()
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / CLK_TCK
        stack += tree.get(pid, [])
    return total


def triton_compute_ns(client: httpx.Client, triton_url: str) -> dict[str, int]:
    """Cumulative compute (input + infer + output) nanoseconds and executions per model."""
    out: dict[str, int] = {}
    for model in MODELS:
        stats = client.get(f"http://{triton_url}/v2/models/{model}/stats").json()
        ns = count = 0
        for version in stats.get("model_stats", []):
            inf = version["inference_stats"]
            ns += sum(
                int(inf[k]["ns"]) for k in ("compute_input", "compute_infer", "compute_output")
            )
            count += int(inf["success"]["count"])
        out[model] = ns
        out[f"{model}_requests"] = count
    return out


def percentiles(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {
        "p50": float(np.percentile(arr, 50)),
        "p95": float(np.percentile(arr, 95)),
        "p99": float(np.percentile(arr, 99)),
        "mean": float(arr.mean()),
    }


# --- one mode -------------------------------------------------------------------------------------


def start_stack(mode: str, data: Path, artifacts: Path, workdir: Path) -> Stack:
    workflow = workdir / f"feed-{mode.replace('+', '-')}.yaml"
    workflow.write_text(set_mode_in_text(DEFAULT_WORKFLOW.read_text(), "embed_member", mode))
    settings = LauncherSettings(
        redis_url=os.environ.get("FEEDSERVE_REDIS_URL") or "redis://127.0.0.1:6379/0",
        redis_prefix=f"bench{uuid.uuid4().hex[:8]}",
        artifacts_dir=artifacts,
        data_dir=data,
        model_repo=REPO / "model_repo",
        runtime_dir=workdir / f"run-{mode.replace('+', '-')}",
        featurizer_workers=1,
        startup_timeout_s=300,
        workflow=workflow,
    )
    load_dataset(settings)
    stack = Stack(settings, Ports.allocate(settings.host))
    stack.start()
    return stack


def stack_pids(stack: Stack) -> list[int]:
    return [p.proc.pid for p in stack.processes if p.proc is not None]


def run_offline_job(stack: Stack) -> dict[str, Any]:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "feedserve.cli", "run", "offline", "embed_member",
         "--no-progress", "--concurrency", "8"],
        env=stack._feedserve_env(), capture_output=True, text=True, timeout=3600, check=False,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"offline job failed:\n{proc.stdout}\n{proc.stderr}")
    stored = open_store(stack.settings).vector_count(TABLE)
    return {"seconds": seconds, "members": stored, "ms_per_member": 1000 * seconds / max(stored, 1)}


def latency_phase(
    stack: Stack, members: list[int], plan: Plan, progress: Progress, idle_rate: float
) -> dict[str, Any]:
    def one(client: httpx.Client, member: int) -> tuple[float, bool, str]:
        t0 = time.perf_counter()
        resp = client.post("/v1/feed", json={"member_id": member, "count": 20, "explain": True})
        ms = 1000 * (time.perf_counter() - t0)
        body = resp.json()
        status = ""
        for s in body.get("explain", {}).get("steps", []):
            if s["step"] == "embed_member":
                status = s["status"]
        return ms, resp.status_code == 200 and not body.get("degraded"), status

    local = threading.local()

    def call(member: int) -> tuple[float, bool, str]:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=stack.gateway_url, timeout=30.0)
        return one(local.client, member)

    rng = np.random.default_rng(7)
    warm = [members[i % len(members)] for i in range(plan.warmup)]
    sample = [int(m) for m in rng.choice(members, size=plan.requests)]
    with ThreadPoolExecutor(plan.clients) as pool:
        list(pool.map(call, warm))
        with httpx.Client() as stats_client:
            before_ns = triton_compute_ns(stats_client, stack.triton_url)
            before_cpu = cpu_seconds(stack_pids(stack))
            task = progress.add_task("feed requests", total=len(sample))
            results = []
            t0 = time.perf_counter()
            for r in pool.map(call, sample):
                results.append(r)
                progress.advance(task)
            wall = time.perf_counter() - t0
            after_cpu = cpu_seconds(stack_pids(stack))
            after_ns = triton_compute_ns(stats_client, stack.triton_url)
    n = len(results)
    per_model = {m: (after_ns[m] - before_ns[m]) / 1e6 / n for m in MODELS}
    statuses: dict[str, int] = {}
    for _, _, s in results:
        statuses[s] = statuses.get(s, 0) + 1
    return {
        "requests": n,
        "clients": plan.clients,
        "ok_fraction": sum(ok for _, ok, _ in results) / n,
        "latency_ms": percentiles([ms for ms, _, _ in results]),
        "throughput_rps": n / wall,
        "model_compute_ms_per_request": sum(per_model.values()),
        "model_compute_ms_per_request_by_model": per_model,
        "encoder_calls_per_request": (
            after_ns["retrieval_encoder_requests"] - before_ns["retrieval_encoder_requests"]
        )
        / n,
        "stack_cpu_ms_per_request": 1000 * (after_cpu - before_cpu - idle_rate * wall) / n,
        "embed_member_status": statuses,
    }


def idle_cpu_rate(stack: Stack) -> float:
    """CPU seconds per second the idle stack spends (pollers, log tails): taken off every
    CPU measurement, so that a longer phase is not charged for more idling."""
    idle0, w0 = cpu_seconds(stack_pids(stack)), time.perf_counter()
    time.sleep(IDLE_WINDOW_S)
    return (cpu_seconds(stack_pids(stack)) - idle0) / (time.perf_counter() - w0)


def freshness_phase(
    stack: Stack, store: FeatureStore, members: list[int], posts: list[int], mode: str,
    plan: Plan, progress: Progress, idle_rate: float,
) -> dict[str, Any]:  # fmt: skip
    nearline = mode != "online"
    seconds: list[float] = []
    cpu: list[float] = []
    task = progress.add_task("engagements", total=plan.trials)
    with httpx.Client(base_url=stack.gateway_url, timeout=30.0) as client:
        for trial in range(plan.trials):
            member = members[trial % len(members)]
            seen = set(store.get_history(member)["post_id"].tolist())
            fresh = [p for p in posts if p not in seen][trial * 3 : trial * 3 + 3]
            if store.get_vectors(TABLE, [member])[0] is None and nearline:
                client.post("/v1/feed", json={"member_id": member})  # computed on the miss
            cpu0, w0 = cpu_seconds(stack_pids(stack)), time.perf_counter()
            t0 = time.time()
            events = [{"member_id": member, "post_id": p, "action": "comment"} for p in fresh]
            resp = client.post("/v1/events", json={"events": events})
            resp.raise_for_status()
            deadline = time.monotonic() + plan.freshness_timeout_s
            while True:
                hist = set(store.get_history(member)["post_id"].tolist())
                ok = set(fresh) <= hist
                if ok and nearline:
                    v = store.get_vectors(TABLE, [member])[0]
                    ok = v is not None and v.updated_at > t0
                if ok:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{mode}: engagement not visible in {deadline}s")
                time.sleep(0.005)
            seconds.append(time.time() - t0)
            # let the consumer finish the batch (ack) before reading its CPU
            time.sleep(0.2)
            window = time.perf_counter() - w0
            cpu.append(cpu_seconds(stack_pids(stack)) - cpu0 - idle_rate * window)
            progress.advance(task)
    return {
        "trials": plan.trials,
        "freshness_s": percentiles(seconds),
        "stack_cpu_ms_per_engagement_batch": 1000 * float(np.mean(cpu)),
        "events_per_batch": 3,
    }


def measure_mode(
    mode: str, data: Path, artifacts: Path, plan: Plan, workdir: Path, progress: Progress
) -> dict[str, Any]:
    ds = read_dataset(data)
    counts = np.bincount(ds.interactions["member_id"], minlength=len(ds.members) + 1)
    members = [int(m) for m in np.argsort(-counts)[: plan.members] if counts[m] > 0]
    posts = [p.post_id for p in ds.posts][::-1]
    console.print(f"[bold]{mode}[/]: starting the stack")
    t0 = time.perf_counter()
    stack = start_stack(mode, data, artifacts, workdir)
    try:
        console.print(f"  stack up in {time.perf_counter() - t0:.0f}s")
        store = open_store(stack.settings)
        row: dict[str, Any] = {"mode": mode}
        if mode != "online":
            row["offline_job"] = run_offline_job(stack)
            console.print(f"  offline job: {row['offline_job']}")
        idle = idle_cpu_rate(stack)
        row["idle_stack_cpu_ms_per_s"] = 1000 * idle
        row.update(latency_phase(stack, members, plan, progress, idle))
        fresh_members = members[len(members) // 2 :] or members
        row.update(freshness_phase(stack, store, fresh_members, posts, mode, plan, progress, idle))
        return row
    finally:
        stack.stop()
        open_store(stack.settings).clear()


# --- report ---------------------------------------------------------------------------------------


def summarize(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    on, pre = rows["online"], rows["offline+nearline"]
    saved_cpu = on["stack_cpu_ms_per_request"] - pre["stack_cpu_ms_per_request"]
    extra_cpu = pre["stack_cpu_ms_per_engagement_batch"] - on["stack_cpu_ms_per_engagement_batch"]
    return {
        "model_compute_ratio_online_over_precomputed": on["model_compute_ms_per_request"]
        / max(pre["model_compute_ms_per_request"], 1e-9),
        "cpu_ratio_online_over_precomputed": on["stack_cpu_ms_per_request"]
        / max(pre["stack_cpu_ms_per_request"], 1e-9),
        "p99_ratio_online_over_precomputed": on["latency_ms"]["p99"] / pre["latency_ms"]["p99"],
        "p50_ratio_online_over_precomputed": on["latency_ms"]["p50"] / pre["latency_ms"]["p50"],
        "freshness_p50_s": {m: r["freshness_s"]["p50"] for m, r in rows.items()},
        "breakeven_engagement_batches_per_request": saved_cpu / extra_cpu
        if extra_cpu > 0
        else None,
    }


def plot(rows: dict[str, dict[str, Any]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(rows)
    colours = ["#4C72B0", "#C49A2C"]
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.8))
    panels = [
        ("feed latency (ms)", [("p50", lambda r: r["latency_ms"]["p50"]),
                               ("p99", lambda r: r["latency_ms"]["p99"])]),
        ("model compute per request (ms)", [("", lambda r: r["model_compute_ms_per_request"])]),
        ("stack CPU per request (ms)", [("", lambda r: r["stack_cpu_ms_per_request"])]),
        ("freshness: engagement → feed (s)", [("p50", lambda r: r["freshness_s"]["p50"]),
                                               ("p99", lambda r: r["freshness_s"]["p99"])]),
    ]  # fmt: skip
    for ax, (title, series) in zip(axes, panels, strict=True):
        width = 0.8 / len(modes)
        xs = np.arange(len(series))
        for i, (mode, colour) in enumerate(zip(modes, colours, strict=True)):
            vals = [fn(rows[mode]) for _, fn in series]
            bars = ax.bar(xs + i * width, vals, width, color=colour, label=mode)
            ax.bar_label(bars, fmt="%.3g", fontsize=7)
        ax.set_xticks(xs + width * (len(modes) - 1) / 2, [s for s, _ in series])
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=8)
    fig.suptitle("member embedding: online vs offline + nearline refresh (demo data, CPU)")
    fig.tight_layout()
    path = out / f"{NAME}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def print_table(rows: dict[str, dict[str, Any]]) -> None:
    table = Table(title="member embedding: online vs offline+nearline")
    for col in ("mode", "p50 ms", "p99 ms", "model ms/req", "encoder calls/req",
                "CPU ms/req", "fresh p50 s", "fresh p99 s", "CPU ms/engagement"):  # fmt: skip
        table.add_column(col, justify="right")
    for mode, r in rows.items():
        table.add_row(
            mode,
            f"{r['latency_ms']['p50']:.1f}",
            f"{r['latency_ms']['p99']:.1f}",
            f"{r['model_compute_ms_per_request']:.1f}",
            f"{r['encoder_calls_per_request']:.2f}",
            f"{r['stack_cpu_ms_per_request']:.1f}",
            f"{r['freshness_s']['p50']:.3f}",
            f"{r['freshness_s']['p99']:.3f}",
            f"{r['stack_cpu_ms_per_engagement_batch']:.1f}",
        )
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("var/data"))
    parser.add_argument("--artifacts", type=Path, default=Path("var/artifacts"))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true", help="a small run, correctness only")
    args = parser.parse_args(argv)
    for path, what in ((args.data / "manifest.json", "data"), (args.artifacts / "manifest.json",
                       "artifacts")):  # fmt: skip
        if not path.is_file():
            console.print(f"[red]no {what} at {path.parent}: run `make run` (or feedserve build)")
            return 2
    plan = QUICK if args.quick else FULL
    args.out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-modes-") as tmp, Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console,
    ) as progress:  # fmt: skip
        for mode in MODES:
            rows[mode] = measure_mode(mode, args.data, args.artifacts, plan, Path(tmp), progress)
    summary = summarize(rows)
    print_table(rows)
    console.print(f"summary: {json.dumps(summary, indent=1)}")
    result = {
        "benchmark": NAME,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": f"CPU: {cpu_description()}",
        "load_average": load_average(),
        "python": platform.python_version(),
        "quick": args.quick,
        "plan": plan.__dict__,
        "data": str(args.data),
        "modes": rows,
        "summary": summary,
    }
    (args.out / f"{NAME}.json").write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {args.out / f'{NAME}.json'} and {plot(rows, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
