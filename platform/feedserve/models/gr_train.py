"""Training loop of the sequential (generative) recommender: HSTU-style or SASRec.

The recipe follows ``meta-recsys/generative-recommenders`` (ML-1M gin configs):

* **examples**: one per user — the training part of the leave-one-out split (every event but
  the held-out last one, :func:`feedserve.models.gr_eval.leave_one_out`), chronological, the
  most recent ``max_len + 1`` events, left-padded (:func:`training_arrays`); users with fewer
  than two training events give no next-item pair and are left out;
* **loss**: sampled softmax (``SequentialRecommender.next_item_loss``) at every position whose
  next item is real, against ``num_negatives`` (128) negatives per position drawn **uniformly**
  over ``1..n_items`` (the reference's ``LocalNegativesSampler`` draws uniformly from the item
  ids too), temperature from the model config (0.05);
* plus ``candidate_loss_weight`` × ``SequentialRecommender.candidate_loss`` (``[B, N]``
  uniform negatives for the last real item of each row): it trains the **target-aware
  serving path** (``score_candidates``) that the gateway's ranker uses. Default **0.1**: the
  offline protocol ranks with the encoder path (``encode`` · ``item_embeddings``), which the
  next-item loss trains at ~200 positions per user, while the candidate loss adds one
  position per user; a small weight keeps serving scores trained without steering the shared
  embeddings away from the protocol's objective. It costs about one more encoder pass per
  step; ``0`` skips it (the offline benchmark does);
* AdamW, lr 1e-3, weight decay 0, batch 128.

Runs are **seeded and resumable**: epoch ``e`` shuffles users and draws negatives from a
generator seeded by ``(seed, e)`` and reseeds torch's global RNG (dropout) the same way, so a
run resumed from a checkpoint continues exactly as the uninterrupted one. With ``out_dir``
the model is written with ``save_seqrec`` every ``checkpoint_every`` epochs and at the end,
with the optimizer state and progress beside it; :func:`train_seqrec` resumes from them when
``resume`` is set and the saved config matches. ``time_budget_s`` stops after the step that
crosses it; a partly done epoch is not checkpointed (a resumed run redoes it).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from feedserve.models.gr_eval import LeaveOneOut, left_pad
from feedserve.models.sequential import (
    SeqRecConfig,
    SequentialRecommender,
    load_seqrec,
    save_seqrec,
)

__all__ = [
    "CHECKPOINT",
    "TRAINER_STATE",
    "GRRun",
    "GRTrainConfig",
    "GRTrainReport",
    "build_model",
    "epoch_seed",
    "train_and_evaluate",
    "train_seqrec",
    "training_arrays",
]

CHECKPOINT = "model"
"""The model directory inside ``out_dir`` (written with ``save_seqrec``)."""
TRAINER_STATE = "trainer.pt"
"""Optimizer state and progress inside ``out_dir`` (written after the model)."""


@dataclass(frozen=True)
class GRTrainConfig:
    """Training hyper-parameters (the model's own live in ``SeqRecConfig``)."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    num_negatives: int = 128
    """Uniform negatives per position for the next-item sampled softmax."""
    candidate_loss_weight: float = 0.1
    """Weight of the target-aware serving loss (``candidate_loss``); 0 turns it off."""
    candidate_negatives: int = 128
    max_len: int = 200
    """History length: training rows hold ``max_len + 1`` events."""
    seed: int = 0
    checkpoint_every: int = 1
    """Epochs between checkpoints when an ``out_dir`` is given (0: only at the end)."""
    device: str = "cpu"
    time_budget_s: float | None = None
    """Stop (and checkpoint) after the step that crosses this many seconds."""

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.num_negatives < 1:
            raise ValueError("epochs >= 0, batch_size >= 1 and num_negatives >= 1 are required")
        if self.candidate_loss_weight < 0 or self.candidate_negatives < 1:
            raise ValueError("candidate_loss_weight >= 0 and candidate_negatives >= 1")
        if self.max_len < 1 or self.checkpoint_every < 0:
            raise ValueError("max_len >= 1 and checkpoint_every >= 0 are required")


@dataclass
class GRTrainReport:
    """What a run did."""

    epochs: int
    """Epochs completed (counting those of a resumed run)."""
    steps: int
    examples: int
    losses: list[float] = field(default_factory=list)
    """Per-step total loss of this process's steps."""
    epoch_losses: list[float] = field(default_factory=list)
    """Mean loss per completed epoch (all epochs, resumed ones included)."""
    seconds: float = 0.0
    """Training seconds, resumed runs' included."""
    stopped_early: bool = False
    resumed_from_epoch: int = 0

    @property
    def final_loss(self) -> float:
        return self.epoch_losses[-1] if self.epoch_losses else math.nan


def build_model(
    kind: Literal["hstu", "sasrec"], n_items: int, n_actions: int, max_len: int, **kwargs: Any
) -> SequentialRecommender:
    """A fresh model for a catalogue of ``n_items`` and ``max_len``-event histories (its
    positional range covers the ``max_len + 1`` events of a training row)."""
    cfg = SeqRecConfig(
        kind=kind, n_items=n_items, n_actions=n_actions, max_len=max_len + 1, **kwargs
    )
    return SequentialRecommender(cfg)


def training_arrays(split: LeaveOneOut, max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Items, actions, timestamps ``[U', max_len + 1]``: the most recent ``max_len + 1``
    training events of each user with at least two, left-padded."""
    rows = [i for i, s in enumerate(split.items) if len(s) >= 2]
    length = max_len + 1
    return (
        left_pad([split.items[i] for i in rows], length),
        left_pad([split.actions[i] for i in rows], length),
        left_pad([split.timestamps[i] for i in rows], length),
    )


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch`` (shuffle, negatives, dropout)."""
    return (seed * 1_000_003 + epoch * 7_919) % (2**63 - 1)


def _config_key(cfg: GRTrainConfig) -> dict[str, Any]:
    """What must match to resume (the epoch count and budget may grow)."""
    key = asdict(cfg)
    for name in ("epochs", "time_budget_s", "checkpoint_every", "device"):
        key.pop(name)
    return key


def _save(
    out_dir: Path,
    model: SequentialRecommender,
    opt: torch.optim.Optimizer,
    cfg: GRTrainConfig,
    epoch: int,
    epoch_losses: list[float],
    seconds: float,
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    save_seqrec(out_dir / CHECKPOINT, model)
    state = {
        "epoch": epoch,
        "optimizer": opt.state_dict(),
        "config": json.dumps(_config_key(cfg), sort_keys=True),
        "epoch_losses": epoch_losses,
        "seconds": seconds,
    }
    tmp = out_dir / f".{TRAINER_STATE}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, out_dir / TRAINER_STATE)


def _restore(
    out_dir: Path, model: SequentialRecommender, opt: torch.optim.Optimizer, cfg: GRTrainConfig
) -> tuple[int, list[float], float]:
    state = torch.load(out_dir / TRAINER_STATE, map_location=cfg.device, weights_only=False)
    if state["config"] != json.dumps(_config_key(cfg), sort_keys=True):
        raise ValueError(f"{out_dir} holds a run with another training config: cannot resume")
    saved = load_seqrec(out_dir / CHECKPOINT, map_location=cfg.device)
    model.load_state_dict(saved.state_dict())
    opt.load_state_dict(state["optimizer"])
    return int(state["epoch"]), list(state["epoch_losses"]), float(state["seconds"])


@torch.enable_grad()  # a serving handler in the same process may have turned autograd off
def train_seqrec(
    model: SequentialRecommender,
    split: LeaveOneOut,
    cfg: GRTrainConfig,
    out_dir: Path | None = None,
    *,
    resume: bool = True,
    progress: bool = False,
    item_content: np.ndarray | None = None,
) -> GRTrainReport:
    """Train ``model`` in place on the training part of ``split`` (see the module docstring).

    With ``out_dir``, checkpoints go there; with ``resume`` a run found there continues from
    its last checkpoint (a finished run with as many epochs does nothing more). A model with
    a content path (``content_dim``) needs ``item_content`` ``[n_items + 1, content_dim]``
    (row ``i``: item ``i``'s content, row 0 ignored); every step then scores against the item
    table ``training_table`` builds from it, with ``id_dropout`` of the ids dropped.
    """
    device = torch.device(cfg.device)
    model.to(device)
    content: torch.Tensor | None = None
    if model.content_proj is not None:
        if item_content is None:
            raise ValueError("this model reads item content: pass item_content")
        content = torch.as_tensor(np.asarray(item_content, dtype=np.float32)).to(device)
        if content.shape != (split.n_items + 1, model.cfg.content_dim):
            raise ValueError(
                f"item_content must be [{split.n_items + 1}, {model.cfg.content_dim}], "
                f"got {list(content.shape)}"
            )
    elif item_content is not None:
        raise ValueError("item_content given but the model has no content path")
    items_np, actions_np, ts_np = training_arrays(split, cfg.max_len)
    items = torch.from_numpy(items_np)
    actions = torch.from_numpy(actions_np)
    ts = torch.from_numpy(ts_np)
    n_rows, n_items = len(items_np), split.n_items
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    start_epoch, prior_seconds = 0, 0.0
    epoch_losses: list[float] = []
    if out_dir is not None and resume and (Path(out_dir) / TRAINER_STATE).is_file():
        start_epoch, epoch_losses, prior_seconds = _restore(Path(out_dir), model, opt, cfg)
    report = GRTrainReport(
        epochs=start_epoch,
        steps=0,
        examples=n_rows,
        epoch_losses=epoch_losses,
        seconds=prior_seconds,
        resumed_from_epoch=start_epoch,
    )
    if n_rows == 0 or start_epoch >= cfg.epochs:
        return report

    steps_per_epoch = math.ceil(n_rows / cfg.batch_size)
    bar = tqdm(
        total=(cfg.epochs - start_epoch) * steps_per_epoch,
        desc=f"train {model.cfg.kind}",
        unit="step",
        disable=not progress,
    )
    started = time.perf_counter()
    model.train()
    out_of_time = False
    for epoch in range(start_epoch, cfg.epochs):
        seed = epoch_seed(cfg.seed, epoch)
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        order = torch.randperm(n_rows, generator=gen)
        total, done = 0.0, 0
        for lo in range(0, n_rows, cfg.batch_size):
            idx = order[lo : lo + cfg.batch_size]
            b_items, b_actions, b_ts = (z[idx] for z in (items, actions, ts))
            # drop the columns that are padding in every row of the batch: both models are
            # invariant to left padding (masked keys, positions counted from the right), so
            # this only saves work on batches of short histories
            first = int((b_items != 0).any(0).to(torch.int8).argmax())
            b_items, b_actions, b_ts = (z[:, first:].to(device) for z in (b_items, b_actions, b_ts))
            negatives = torch.randint(
                1, n_items + 1, (len(idx), b_items.shape[1], cfg.num_negatives), generator=gen
            ).to(device)
            table = None if content is None else model.training_table(content, gen)
            loss = model.next_item_loss(b_items, b_actions, b_ts, negatives, table)
            if cfg.candidate_loss_weight > 0:
                cand_neg = torch.randint(
                    1, n_items + 1, (len(idx), cfg.candidate_negatives), generator=gen
                ).to(device)
                loss = loss + cfg.candidate_loss_weight * model.candidate_loss(
                    b_items, b_actions, b_ts, cand_neg, table
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            value = float(loss.detach())
            report.losses.append(value)
            report.steps += 1
            total += value * len(idx)
            done += len(idx)
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{value:.4f}")
            budget = cfg.time_budget_s
            if budget is not None and time.perf_counter() - started >= budget:
                out_of_time = True
                break
        finished = done == n_rows
        if finished:
            report.epochs = epoch + 1
            report.epoch_losses.append(total / n_rows)
        report.stopped_early = out_of_time and report.epochs < cfg.epochs
        report.seconds = prior_seconds + time.perf_counter() - started
        last = report.epochs >= cfg.epochs or out_of_time
        due = last or (cfg.checkpoint_every > 0 and report.epochs % cfg.checkpoint_every == 0)
        if out_dir is not None and finished and due:
            _save(
                Path(out_dir), model, opt, cfg, report.epochs, report.epoch_losses, report.seconds
            )
        if out_of_time:
            break
    bar.close()
    model.eval()
    report.seconds = prior_seconds + time.perf_counter() - started
    return report


@dataclass
class GRRun:
    """One train-and-evaluate run (:func:`train_and_evaluate`)."""

    kind: str
    metrics: dict[str, dict[str, float]]
    """``popularity`` and the model's kind → :data:`~feedserve.models.gr_eval.METRIC_NAMES`."""
    report: GRTrainReport
    users: int
    eval_seconds: float
    model: SequentialRecommender


def train_and_evaluate(
    split: LeaveOneOut,
    kind: Literal["hstu", "sasrec"],
    cfg: GRTrainConfig,
    out_dir: Path | None = None,
    *,
    n_actions: int = 8,
    model_kwargs: dict[str, Any] | None = None,
    progress: bool = False,
) -> GRRun:
    """Seed, build, train (:func:`train_seqrec`) and evaluate a model on ``split`` by the
    reference protocol, with popularity alongside."""
    from feedserve.models.gr_eval import model_ranks, popularity_ranks, rank_metrics

    torch.manual_seed(cfg.seed)
    model = build_model(kind, split.n_items, n_actions, cfg.max_len, **(model_kwargs or {}))
    report = train_seqrec(model, split, cfg, out_dir, progress=progress)
    started = time.perf_counter()
    model.eval()
    metrics = {
        "popularity": rank_metrics(popularity_ranks(split, cfg.max_len)),
        kind: rank_metrics(model_ranks(model, split, cfg.max_len, device=cfg.device)),
    }
    return GRRun(
        kind=kind,
        metrics=metrics,
        report=report,
        users=split.n_users,
        eval_seconds=time.perf_counter() - started,
        model=model,
    )
