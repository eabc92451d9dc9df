"""Generative-recommender quality: HSTU-style vs SASRec vs popularity on ML-100K and
ml-latest-small, by the protocol of ``meta-recsys/generative-recommenders``.

Protocol (``feedserve.models.gr_eval``, see ``../shared/data/README.md``): each user's events
sorted by timestamp; leave-one-out — the last event is the test target, training uses the rest;
histories truncated to the most recent 200 events; **full ranking over every item of the
catalogue** (ML-100K: all 1,682 items of ``u.item``; ml-latest-small: all 9,742 movies of
``movies.csv``, never-rated ones included) with the user's (truncated) history filtered out;
HR@10/50/200, NDCG@10/50/200 and MRR (ranks beyond 2,500 count as misses).

Models (``feedserve.models.sequential``, trained by ``feedserve.models.gr_train``) follow the
reference's ML-1M configs: embedding dim 50, 2 blocks, 1 head, dropout 0.2, L2-normalised
embeddings, sampled softmax with 128 uniform negatives per position at temperature 0.05, AdamW
lr 1e-3 (weight decay 0). ``popularity`` ranks items by training-event count (deterministic:
one value, std 0).

**Departures from the reference, forced by the budget** (the whole run — 2 data sets × 2
models × 3 seeds — must fit about half an hour on a shared 2-core CPU; all recorded in the JSON
under ``_meta.setup``):

* **far fewer epochs** than the reference's 101 (on a GPU): 24 per data set (``FULL``), chosen
  from measured epoch times, which depend heavily on the other load of the 2 shared cores:
  about 4 s (ML-100K) and 6 s (ml-latest-small) per model and epoch on a quiet machine (the
  whole run then takes about 22 minutes), 10-50 s under heavy load (time budget below) —
  the models are under-trained compared with the reference: ml-latest-small alone at 48
  epochs (``--datasets ml-latest-small --epochs 48`` with ``time_budget_s`` 900, 3 seeds, 43
  minutes; ``ops/results/gr_quality_48ep/``) gave SASRec HR@10 0.0579 and HSTU 0.0612
  (24 epochs: 0.0454 and 0.0448); both data sets at 48 epochs take over an hour here;
* **batch 32** instead of 128: 4× the optimizer steps per epoch at about the same epoch time,
  which matters when only a few epochs are affordable (measured: HSTU on ML-100K reached
  HR@10 0.029 after one epoch at batch 32, 0.007 at batch 128);
* a per-run time budget (``time_budget_s``) caps each training run; a run it cuts short
  reports fewer epochs in ``_meta.runs``;
* the serving-path loss (``candidate_loss``) is off (weight 0): it does not take part in the
  protocol's ranking and would cost training time.

Output (``ops/results/``): ``gr_quality.json`` — ``{dataset: {model: {"hr@10": mean, …,
"hr@10_std": …, "seeds": [...], …}}}`` for the data sets listed in ``_meta.datasets``, plus
``_meta`` (device, versions, timestamp, setup, timings) and ``summary`` (HSTU HR@10 over
SASRec HR@10 per data set; the target is ≥ 1.08); ``gr_quality.md`` (the table, mean ± std)
and ``gr_quality.png``.

    python ops/bench/gr_quality.py              # full run, results in ops/results/
    python ops/bench/gr_quality.py --quick --out /tmp/x   # a few users, 1 epoch, 1 seed
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _benchenv import device_description, load_average
from rich.console import Console
from rich.table import Table

from feedserve.data.sequences import load_sequences
from feedserve.models.gr_eval import (
    METRIC_NAMES,
    LeaveOneOut,
    leave_one_out,
    model_ranks,
    popularity_ranks,
    rank_metrics,
)
from feedserve.models.gr_train import GRTrainConfig, build_model, train_seqrec

NAME = "gr_quality"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results"
DATASETS = ("ml-100k", "ml-latest-small")
MODELS = ("popularity", "sasrec", "hstu")
TRAINED = ("sasrec", "hstu")
TARGET_RATIO = 1.08


@dataclass(frozen=True)
class Setup:
    """Everything that decides a run (recorded in the JSON)."""

    epochs: dict[str, int]
    """Training epochs per data set."""
    seeds: tuple[int, ...]
    train: GRTrainConfig
    model: dict[str, Any] = field(default_factory=dict)
    """Extra ``SeqRecConfig`` fields (dim, blocks, heads, dropout, temperature)."""
    quick_users: int = 0
    """Quick mode: this many users (those with the fewest events)."""


TRAIN = GRTrainConfig(
    batch_size=32,
    lr=1e-3,
    weight_decay=0.0,
    num_negatives=128,
    candidate_loss_weight=0.0,
    max_len=200,
    checkpoint_every=0,
    time_budget_s=200.0,
)
MODEL = {"dim": 50, "blocks": 2, "heads": 1, "dropout": 0.2, "temperature": 0.05}

FULL = Setup(
    epochs={"ml-100k": 24, "ml-latest-small": 24},
    seeds=(0, 1, 2),
    train=TRAIN,
    model=MODEL,
)
QUICK = Setup(
    epochs={"ml-100k": 1, "ml-latest-small": 1},
    seeds=(0,),
    train=replace(TRAIN, batch_size=8, time_budget_s=None),
    model=MODEL,
    quick_users=16,
)


# --------------------------------------------------------------------------- runs


def quick_subset(split: LeaveOneOut, n: int) -> LeaveOneOut:
    """The ``n`` users with the fewest events (the catalogue stays whole)."""
    order = sorted(range(split.n_users), key=lambda i: (len(split.items[i]), i))
    return split.subset(sorted(order[:n]))


def run_model(
    split: LeaveOneOut, kind: str, cfg: GRTrainConfig, model_cfg: dict[str, Any], n_actions: int
) -> dict[str, Any]:
    """Train one model with one seed and evaluate it: metrics, seconds, losses."""
    torch.manual_seed(cfg.seed)
    model = build_model(
        "hstu" if kind == "hstu" else "sasrec", split.n_items, n_actions, cfg.max_len, **model_cfg
    )
    report = train_seqrec(model, split, cfg, None, progress=True)
    started = time.perf_counter()
    model.eval()
    metrics = rank_metrics(model_ranks(model, split, cfg.max_len, device=cfg.device))
    return {
        "metrics": metrics,
        "train_s": report.seconds,
        "eval_s": time.perf_counter() - started,
        "epochs": report.epochs,
        "steps": report.steps,
        "epoch_losses": report.epoch_losses,
        "stopped_early": report.stopped_early,
    }


def aggregate(per_seed: list[dict[str, float]], seeds: list[int]) -> dict[str, Any]:
    """Mean and (population) std of every metric over seeds, plus the per-seed values."""
    out: dict[str, Any] = {}
    for name in METRIC_NAMES:
        values = np.array([m[name] for m in per_seed], dtype=np.float64)
        out[name] = float(values.mean())
        out[f"{name}_std"] = float(values.std())
    out["seeds"] = seeds
    out["per_seed"] = per_seed
    return out


# --------------------------------------------------------------------------- reporting


def _cell(block: dict[str, Any], name: str) -> str:
    return f"{block[name]:.4f} ± {block[f'{name}_std']:.4f}"


def print_tables(console: Console, results: dict[str, dict[str, dict[str, Any]]]) -> None:
    for dataset, models in results.items():
        table = Table(title=f"{dataset}: leave-one-out, full ranking (mean ± std over seeds)")
        table.add_column("model")
        for name in METRIC_NAMES:
            table.add_column(name, justify="right")
        for model, block in models.items():
            table.add_row(model, *(_cell(block, n) for n in METRIC_NAMES))
        console.print(table)


def markdown(
    results: dict[str, dict[str, dict[str, Any]]], summary: dict[str, Any], meta: str
) -> str:
    lines = [
        "# Generative recommender quality (HSTU-style vs SASRec vs popularity)",
        "",
        f"{meta}. Leave-one-out by timestamp, history = the most recent 200 events, full "
        "ranking over every item of the catalogue with the history filtered out "
        "(the `meta-recsys/generative-recommenders` protocol). Mean ± std over seeds.",
        "",
    ]
    for dataset, models in results.items():
        ratio = summary[dataset]["hstu_over_sasrec_hr@10"]
        lines += [
            f"## {dataset}",
            "",
            "| model | " + " | ".join(METRIC_NAMES) + " |",
            "| --- | " + " | ".join("---:" for _ in METRIC_NAMES) + " |",
        ]
        for model, block in models.items():
            lines.append(f"| {model} | " + " | ".join(_cell(block, n) for n in METRIC_NAMES) + " |")
        shown = "n/a (SASRec HR@10 is 0)" if ratio is None else f"{ratio:.3f}"
        met = summary[dataset]["target_ge_1.08"]
        lines += [
            "",
            f"HSTU HR@10 / SASRec HR@10 = **{shown}** (target ≥ {TARGET_RATIO}: "
            f"{'met' if met else 'not met'}).",
            "",
        ]
    return "\n".join(lines)


def plot(results: dict[str, dict[str, dict[str, Any]]], meta: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ("hr@10", "hr@50", "hr@200", "ndcg@10", "mrr")
    colors = {"popularity": "#8d99ae", "sasrec": "#e9c46a", "hstu": "#2a9d8f"}
    fig, axes = plt.subplots(
        1, len(results), figsize=(6 * max(len(results), 1), 4.8), squeeze=False
    )
    x = np.arange(len(names))
    width = 0.26
    for ax, (dataset, models) in zip(axes[0], results.items(), strict=True):
        for k, model in enumerate(models):
            block = models[model]
            values = [block[n] for n in names]
            errors = [block[f"{n}_std"] for n in names]
            bars = ax.bar(
                x + (k - 1) * width,
                values,
                width,
                yerr=errors,
                capsize=2,
                label=model,
                color=colors.get(model, "#264653"),
            )
            ax.bar_label(bars, labels=[f"{v:.3f}" for v in values], fontsize=7, padding=2)
        ax.set_xticks(x, list(names))
        ax.set_title(dataset)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"generative recommender quality — {meta}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a few users, 1 epoch, 1 seed")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory")
    parser.add_argument(
        "--datasets", nargs="+", choices=DATASETS, default=list(DATASETS), help="data sets"
    )
    parser.add_argument("--epochs", type=int, default=None, help="epochs (all data sets)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds")
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console() if sys.stdout.isatty() else Console(width=150)
    started = time.perf_counter()
    setup = QUICK if args.quick else FULL
    if args.epochs is not None:
        setup = replace(setup, epochs={d: args.epochs for d in DATASETS})
    if args.seeds is not None:
        setup = replace(setup, seeds=tuple(args.seeds))
    base_cfg = replace(setup.train, device=args.device)
    load_before = load_average()

    results: dict[str, dict[str, dict[str, Any]]] = {}
    data_info: dict[str, dict[str, int]] = {}
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    timings: dict[str, float] = {}
    for dataset in args.datasets:
        t = time.perf_counter()
        data = load_sequences(dataset)
        split = leave_one_out(data)
        if setup.quick_users:
            split = quick_subset(split, setup.quick_users)
        data_info[dataset] = {**data.describe(), "eval_users": split.n_users}
        console.print(f"{dataset}: {data_info[dataset]}")
        pop = rank_metrics(popularity_ranks(split, base_cfg.max_len))
        results[dataset] = {"popularity": aggregate([pop], [])}
        runs[dataset] = {}
        for kind in TRAINED:
            per_seed: list[dict[str, Any]] = []
            for seed in setup.seeds:
                cfg = replace(base_cfg, seed=seed, epochs=setup.epochs[dataset])
                run = run_model(split, kind, cfg, setup.model, data.n_actions)
                console.print(
                    f"{dataset} {kind} seed {seed}: hr@10 {run['metrics']['hr@10']:.4f} "
                    f"ndcg@10 {run['metrics']['ndcg@10']:.4f} "
                    f"({run['epochs']} epochs, {run['train_s']:.0f}s)"
                )
                per_seed.append(run)
            results[dataset][kind] = aggregate([r["metrics"] for r in per_seed], list(setup.seeds))
            results[dataset][kind]["epochs"] = setup.epochs[dataset]
            results[dataset][kind]["train_s"] = [round(r["train_s"], 1) for r in per_seed]
            runs[dataset][kind] = [{k: v for k, v in r.items() if k != "metrics"} for r in per_seed]
        timings[dataset] = round(time.perf_counter() - t, 1)

    summary: dict[str, Any] = {}
    for dataset, models in results.items():
        sas, hstu = models["sasrec"]["hr@10"], models["hstu"]["hr@10"]
        ratio = hstu / sas if sas > 0 else None  # None: SASRec hit nothing
        summary[dataset] = {
            "hstu_over_sasrec_hr@10": ratio,
            "target_ge_1.08": ratio is not None and ratio >= TARGET_RATIO,
            "hstu_hr@10": hstu,
            "sasrec_hr@10": sas,
            "popularity_hr@10": models["popularity"]["hr@10"],
        }
    device = device_description(base_cfg.device)
    elapsed = time.perf_counter() - started
    epochs_note = ", ".join(f"{d} {setup.epochs[d]}" for d in args.datasets)
    meta: dict[str, Any] = {
        "benchmark": NAME,
        "datasets": list(args.datasets),
        "models": list(MODELS),
        "device": device,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "quick": args.quick,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average_before": load_before,
        "data": data_info,
        "setup": {
            "epochs": {d: setup.epochs[d] for d in args.datasets},
            "epochs_note": "the reference trains 101 epochs (batch 128) on a GPU; these runs "
            "use far fewer epochs and batch 32 so that the whole benchmark fits about 30 "
            "minutes on a shared 2-core CPU: the models are under-trained",
            "seeds": list(setup.seeds),
            "train_config": asdict(base_cfg),
            "model_config": setup.model,
            "quick_users": setup.quick_users,
        },
        "protocol": {
            "split": "leave-one-out by timestamp (ties in file order): last event = target",
            "history": f"most recent {base_cfg.max_len} training events",
            "candidates": "every item of the catalogue (never-rated ones included), "
            "the user's truncated history filtered out",
            "metrics": "HR@K rank<=K; NDCG@K 1/log2(rank+1); MRR 1/rank; rank cut-off 2500",
            "popularity": "training-event counts (deterministic: std 0)",
            "std": "population std over seeds",
        },
        "runs": runs,
        "timings_s": {**timings, "total": round(elapsed, 1)},
    }
    out: dict[str, Any] = {**results, "_meta": meta, "summary": summary}

    print_tables(console, results)
    for dataset, s in summary.items():
        ratio = s["hstu_over_sasrec_hr@10"]
        shown = "n/a" if ratio is None else f"{ratio:.3f}x"
        console.print(
            f"[bold]{dataset}: HSTU HR@10 {s['hstu_hr@10']:.4f} = {shown} SASRec "
            f"({s['sasrec_hr@10']:.4f}; target >= {TARGET_RATIO})[/]"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    mode = "quick" if args.quick else f"epochs {epochs_note}, {len(setup.seeds)} seeds"
    label = f"{device}, {mode}"
    plot(results, label, args.out / f"{NAME}.png")
    (args.out / f"{NAME}.md").write_text(markdown(results, summary, label))
    (args.out / f"{NAME}.json").write_text(json.dumps(out, indent=2) + "\n")
    console.print(f"wrote {args.out}/{NAME}.json, .md and .png in {elapsed:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
