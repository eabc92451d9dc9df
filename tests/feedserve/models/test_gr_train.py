"""The sequential-recommender training loop on tiny synthetic sequences: shapes, learning a
trivially learnable pattern, seeding, resuming, the time budget."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from feedserve.data.sequences import SequenceData, from_events
from feedserve.models.gr_eval import (
    LeaveOneOut,
    leave_one_out,
    model_ranks,
    popularity_ranks,
    ranking_metrics,
)
from feedserve.models.gr_train import (
    CHECKPOINT,
    TRAINER_STATE,
    GRTrainConfig,
    build_model,
    train_and_evaluate,
    train_seqrec,
    training_arrays,
)
from feedserve.models.sequential import SequentialRecommender, load_seqrec

N_ITEMS = 40
SMALL = {"dim": 16, "blocks": 1, "dropout": 0.1}
CFG = GRTrainConfig(
    epochs=2, batch_size=16, lr=1e-2, num_negatives=16, candidate_negatives=8, max_len=12
)


def cyclic(users: int = 64, length: int = 10, seed: int = 0) -> SequenceData:
    """Every user walks the item ring ``1 → 2 → … → N_ITEMS → 1`` from a random start: the
    next item is always the successor of the last one, which popularity cannot know."""
    rng = np.random.default_rng(seed)
    u, i, t = [], [], []
    for user in range(1, users + 1):
        start = int(rng.integers(0, N_ITEMS))
        for step in range(length):
            u.append(user)
            i.append((start + step) % N_ITEMS + 1)
            t.append(1_000_000 + 3600 * step)
    n = len(u)
    return from_events(
        "ring", range(1, N_ITEMS + 1), np.array(u), np.array(i), np.full(n, 2), np.array(t)
    )


def model(kind: str = "hstu") -> SequentialRecommender:
    torch.manual_seed(0)
    return build_model("hstu" if kind == "hstu" else "sasrec", N_ITEMS, 7, CFG.max_len, **SMALL)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def split() -> LeaveOneOut:
    return leave_one_out(cyclic())


def test_training_arrays_are_the_most_recent_events_left_padded() -> None:
    split = leave_one_out(
        from_events(
            "toy",
            [1, 2, 3, 4, 5],
            np.array([1, 1, 1, 1, 2, 2, 3, 3, 3]),
            np.array([1, 2, 3, 4, 5, 1, 2, 3, 4]),
            np.full(9, 2),
            np.arange(9),
        )
    )
    items, actions, ts = training_arrays(split, max_len=2)
    # user 1 trains on 1,2,3 (4 held out); user 2 has a single training event: left out
    assert items.tolist() == [[1, 2, 3], [0, 2, 3]]
    assert ts.tolist() == [[0, 1, 2], [0, 6, 7]]
    assert actions.shape == (2, 3)


@pytest.mark.parametrize("kind", ["hstu", "sasrec"])
def test_learns_a_pattern_popularity_cannot(split: LeaveOneOut, kind: str) -> None:
    net = model(kind)
    report = train_seqrec(net, split, replace(CFG, epochs=12))
    assert report.epochs == 12 and report.steps == 12 * 4 and report.examples == 64
    assert report.epoch_losses[-1] < report.epoch_losses[0]
    assert not net.training
    learned = ranking_metrics(model_ranks(net, split, CFG.max_len), (1, 10))
    popular = ranking_metrics(popularity_ranks(split, CFG.max_len), (1, 10))
    assert learned["hr@10"] >= 0.8, learned
    assert learned["hr@10"] > popular["hr@10"] + 0.3, (learned, popular)


def test_seeded_runs_repeat_and_resume_exactly(split: LeaveOneOut, tmp_path: Path) -> None:
    a, b, c = model(), model(), model()
    train_seqrec(a, split, CFG)
    train_seqrec(b, split, CFG)
    assert same_weights(a, b)
    # one epoch, then resume to two from the checkpoint: the same as two in one go
    first = train_seqrec(c, split, replace(CFG, epochs=1), tmp_path)
    assert (tmp_path / CHECKPOINT).is_dir() and (tmp_path / TRAINER_STATE).is_file()
    fresh = model()
    resumed = train_seqrec(fresh, split, CFG, tmp_path)
    assert resumed.resumed_from_epoch == 1 and resumed.epochs == 2
    assert resumed.epoch_losses[0] == first.epoch_losses[0] and len(resumed.epoch_losses) == 2
    assert same_weights(fresh, a)
    assert same_weights(load_seqrec(tmp_path / CHECKPOINT), a)
    # a finished run does nothing more; another seed refuses to resume it
    again = train_seqrec(model(), split, CFG, tmp_path)
    assert again.steps == 0 and again.epochs == 2
    with pytest.raises(ValueError, match="another training config"):
        train_seqrec(model(), split, replace(CFG, seed=1), tmp_path)
    other = model()
    train_seqrec(other, split, replace(CFG, seed=1))
    assert not same_weights(other, a)


def test_time_budget_stops_after_one_step(split: LeaveOneOut) -> None:
    report = train_seqrec(model(), split, replace(CFG, epochs=5, time_budget_s=0.0))
    assert report.stopped_early and report.steps == 1 and report.epochs == 0


def test_candidate_loss_weight_trains_the_serving_path(split: LeaveOneOut) -> None:
    net = model()
    before = net.score_candidates(
        torch.tensor([1, 2, 3]), torch.full((3,), 2), torch.tensor([1, 2, 3]), torch.arange(1, 6), 9
    )
    report = train_seqrec(net, split, replace(CFG, candidate_loss_weight=0.5))
    assert all(np.isfinite(report.losses))
    after = net.score_candidates(
        torch.tensor([1, 2, 3]), torch.full((3,), 2), torch.tensor([1, 2, 3]), torch.arange(1, 6), 9
    )
    assert not torch.equal(before, after)


def test_train_and_evaluate_reports_both_rankings(split: LeaveOneOut) -> None:
    run = train_and_evaluate(split, "sasrec", replace(CFG, epochs=1), model_kwargs=SMALL)
    assert set(run.metrics) == {"popularity", "sasrec"}
    assert run.users == split.n_users and run.report.epochs == 1
    for values in run.metrics.values():
        assert all(0.0 <= v <= 1.0 for v in values.values())


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        GRTrainConfig(batch_size=0)
    with pytest.raises(ValueError):
        GRTrainConfig(candidate_loss_weight=-1.0)


def test_trains_even_with_autograd_switched_off_process_wide(split: LeaveOneOut) -> None:
    """Serving handlers turn autograd off for their process; training in the same process
    (a CLI export, a test session) must still learn."""
    grad = torch.is_grad_enabled()
    torch.set_grad_enabled(False)
    try:
        before = model()
        net = model()
        net.load_state_dict(before.state_dict())
        report = train_seqrec(net, split, replace(CFG, epochs=1))
    finally:
        torch.set_grad_enabled(grad)
    assert report.steps > 0 and not same_weights(before, net)
