"""``feedserve autoscale simulate``: run an autoscaling policy over a request-rate trace.

    feedserve autoscale simulate --trace diurnal --policy coupled --out coupled.png

Prints the simulator's four metrics (SLO-violation seconds, whole-trace p99, GPU and CPU
replica-hours) and, with ``--out``, draws load, replicas per pool and p99 latency over time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from feedserve_operator.autoscale import POLICIES, PolicyConfig
from feedserve_operator.simulator import SimResult, TraceError, load_trace, simulate, trace_names

autoscale_app = typer.Typer(
    help="Autoscaling policies and their simulator.", no_args_is_help=True, add_completion=False
)


def metrics_table(title: str, results: dict[str, SimResult]) -> Table:
    """One row per run: the four metrics the benchmark compares."""
    table = Table(title=title)
    table.add_column("run")
    for col in ("SLO-violation s", "p99 ms", "GPU replica-h", "CPU replica-h"):
        table.add_column(col, justify="right")
    for name, r in results.items():
        table.add_row(
            name,
            f"{r.slo_violation_s}",
            f"{r.p99_ms:.0f}",
            f"{r.gpu_replica_hours:.2f}",
            f"{r.cpu_replica_hours:.2f}",
        )
    return table


def plot_runs(results: dict[str, SimResult], objective_ms: float, title: str, path: Path) -> None:
    """Load, replicas per pool and per-second p99 over time, one colour per run (one column of
    three panels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_load, ax_rep, ax_p99) = plt.subplots(3, 1, figsize=(11, 8.5), sharex=True)
    colors = ("#e76f51", "#2a9d8f", "#264653", "#e9c46a")
    first = next(iter(results.values()))
    minutes = first.series["t_s"] / 60.0
    ax_load.plot(minutes, first.series["rps"], color="#555555", lw=1)
    ax_load.set_ylabel("load (rps)")
    for (name, r), color in zip(results.items(), colors, strict=False):
        ax_rep.plot(minutes, r.series["inference"], color=color, lw=1.4, label=f"{name}: GPU pods")
        ax_rep.plot(
            minutes, r.series["featurizers"], color=color, lw=0.9, ls="--", label=f"{name}: CPU"
        )
        p99 = np.maximum(r.series["p99_ms"], 1.0)
        ax_p99.plot(minutes, p99, color=color, lw=0.8, alpha=0.85, label=name)
    ax_rep.set_ylabel("replicas")
    ax_rep.legend(fontsize=8, ncol=2)
    ax_p99.axhline(objective_ms, color="black", ls=":", lw=1, label="objective")
    ax_p99.set_yscale("log")
    ax_p99.set_ylabel("p99 end-to-end (ms)")
    ax_p99.set_xlabel("time (min)")
    ax_p99.legend(fontsize=8)
    for ax in (ax_load, ax_rep, ax_p99):
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@autoscale_app.callback()
def _main() -> None:
    """Autoscaling policies (hpa, coupled) and the two-pool simulator."""


@autoscale_app.command("simulate")
def simulate_cmd(
    trace: Annotated[
        str, typer.Option(help=f"a shipped trace ({', '.join(trace_names())}) or a t_s,rps CSV")
    ],
    policy: Annotated[str, typer.Option(help="hpa or coupled")] = "coupled",
    seed: Annotated[int, typer.Option(help="random seed (same seed, same result)")] = 0,
    out: Annotated[Path | None, typer.Option(help="draw the run to this PNG")] = None,
) -> None:
    """Simulate both pools on a trace under one policy and print the metrics."""
    if policy not in POLICIES:
        raise typer.BadParameter(
            f"{policy!r} is not one of {', '.join(POLICIES)}", param_hint="--policy"
        )
    try:
        rps = load_trace(trace)
    except TraceError as exc:
        raise typer.BadParameter(str(exc), param_hint="--trace") from None
    config = PolicyConfig()
    result = simulate(rps, POLICIES[policy], config, seed=seed)
    console = Console()
    label = Path(trace).stem
    console.print(metrics_table(f"{label}: {len(rps)} s, policy {policy}", {policy: result}))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        plot_runs(
            {policy: result},
            config.latency_objective_ms,
            f"{label} — {policy}, seed {seed}",
            out,
        )
        console.print(f"wrote {out}")


if __name__ == "__main__":
    autoscale_app()
