"""HSTU and SASRec sequential recommenders: causality, padding, losses, shared-prefix scoring."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from feedserve.models.sequential import (
    SeqRecConfig,
    SequentialRecommender,
    load_seqrec,
    save_seqrec,
)

KINDS = ("hstu", "sasrec")
N_ITEMS = 60
T0 = 1_700_000_000


def make_model(kind: str, **overrides: object) -> SequentialRecommender:
    torch.manual_seed(0)
    params: dict[str, object] = {
        "kind": kind,
        "n_items": N_ITEMS,
        "dim": 16,
        "blocks": 2,
        "heads": 2,
        "max_len": 32,
        "dropout": 0.0,
    }
    params.update(overrides)
    model = SequentialRecommender(SeqRecConfig.model_validate(params))
    model.eval()
    return model


def make_batch(
    b: int, length: int, seed: int = 0, pad: list[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random left-padded histories; ``pad[i]`` padding columns on row i."""
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(1, N_ITEMS + 1, (b, length), generator=g)
    actions = torch.randint(1, 7, (b, length), generator=g)
    gaps = torch.randint(1, 100_000, (b, length), generator=g)
    ts = T0 + torch.cumsum(gaps, dim=1)
    for i, p in enumerate(pad or []):
        items[i, :p] = 0
        actions[i, :p] = 0
        ts[i, :p] = 0
    return items, actions, ts


@pytest.mark.parametrize("kind", KINDS)
def test_shapes_and_normalisation(kind: str) -> None:
    model = make_model(kind)
    items, actions, ts = make_batch(3, 10, pad=[0, 4, 10])
    with torch.no_grad():
        out = model.encode(items, actions, ts)
        emb = model.item_embeddings(torch.tensor([[1, 2], [3, N_ITEMS]]))
        assert torch.equal(model(items, actions, ts), out)
    assert out.shape == (3, 10, 16) and emb.shape == (2, 2, 16)
    norms = out.norm(dim=-1)
    real = items != 0
    assert torch.allclose(norms[real], torch.ones_like(norms[real]), atol=1e-5)
    assert torch.all(norms[~real] == 0)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2, 2), atol=1e-5)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("kind", KINDS)
def test_causal(kind: str) -> None:
    model = make_model(kind)
    items, actions, ts = make_batch(2, 12, pad=[0, 3])
    with torch.no_grad():
        base = model.encode(items, actions, ts)
        items2, actions2, ts2 = items.clone(), actions.clone(), ts.clone()
        items2[:, 8:] = torch.randint(1, N_ITEMS + 1, (2, 4))
        actions2[:, 8:] = 6
        ts2[:, 8:] += 12_345
        changed = model.encode(items2, actions2, ts2)
    assert torch.allclose(base[:, :8], changed[:, :8], atol=1e-6)
    assert not torch.allclose(base[:, 8:], changed[:, 8:], atol=1e-3)


@pytest.mark.parametrize("kind", KINDS)
def test_left_padding_does_not_change_real_positions(kind: str) -> None:
    model = make_model(kind)
    items, actions, ts = make_batch(2, 9, pad=[0, 2])
    with torch.no_grad():
        base = model.encode(items, actions, ts)
        padded = model.encode(*(torch.nn.functional.pad(z, (5, 0)) for z in (items, actions, ts)))
    assert torch.allclose(padded[:, 5:][items != 0], base[items != 0], atol=1e-5)
    assert torch.all(padded[:, :5] == 0)


@pytest.mark.parametrize("kind", KINDS)
def test_next_item_loss_overfits_a_tiny_batch(kind: str) -> None:
    model = make_model(kind, dropout=0.1)
    model.train()
    items, actions, ts = make_batch(4, 8, seed=3, pad=[0, 2, 0, 5])
    g = torch.Generator().manual_seed(1)
    negatives = torch.randint(1, N_ITEMS + 1, (4, 8, 10), generator=g)
    negatives[0, 0, :3] = items[0, 1]  # collisions with the positive are masked
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = model.next_item_loss(items, actions, ts, negatives)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("kind", KINDS)
def test_candidate_loss_trains_and_matches_serving(kind: str) -> None:
    model = make_model(kind)
    items, actions, ts = make_batch(3, 7, seed=5, pad=[0, 3, 7])  # last row: no positive
    negatives = torch.randint(1, N_ITEMS + 1, (3, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        loss = model.candidate_loss(items, actions, ts, negatives)
        # the same logits through score_candidates, row by row
        expected = []
        for r in range(2):
            cands = torch.cat([items[r, -1:], negatives[r]])
            s = model.score_candidates(items[r, :-1], actions[r, :-1], ts[r, :-1], cands, ts[r, -1])
            logits = s / model.cfg.temperature
            logits[1:][negatives[r] == items[r, -1]] = float("-inf")
            expected.append(-torch.log_softmax(logits, 0)[0])
    assert torch.isclose(loss, torch.stack(expected).mean(), atol=1e-4)

    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = last = 0.0
    for step in range(30):
        loss = model.candidate_loss(items, actions, ts, negatives)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if step == 0 else first
        last = loss.item()
    assert last < 0.5 * first


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("k", "micro_batch"), [(1, 256), (7, 3), (16, 16), (20, 1), (33, 256)])
def test_shared_prefix_scoring_equals_naive(kind: str, k: int, micro_batch: int) -> None:
    model = make_model(kind, max_len=24)
    items, actions, ts = make_batch(1, 24, seed=k, pad=[5])
    cands = torch.randint(1, N_ITEMS + 1, (k,), generator=torch.Generator().manual_seed(k))
    request_time = int(ts[0, -1]) + 3600
    with torch.inference_mode():
        shared = model.score_candidates(items, actions, ts, cands, request_time, micro_batch)
        naive = model.score_candidates_naive(items[0], actions[0], ts[0], cands, request_time)
        naive_batched = model.score_candidates_naive(
            items, actions, ts, cands, torch.tensor(request_time), batch_size=5
        )
    assert shared.shape == (k,)
    assert (shared - naive).abs().max() < 1e-4
    assert (naive_batched - naive).abs().max() < 1e-5
    assert shared.abs().max() <= 1.0 + 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_batched_scoring_equals_members_alone(kind: str) -> None:
    """``score_candidates_batch``: ragged histories (left-padded to one width) and padded
    candidate lists give each member the scores it gets alone."""
    model = make_model(kind, max_len=24)
    items, actions, ts = make_batch(3, 12, seed=4, pad=[0, 7, 12])  # row 2: empty history
    g = torch.Generator().manual_seed(5)
    cands = torch.randint(1, N_ITEMS + 1, (3, 9), generator=g)
    cands[1, 4:] = 0  # a shorter candidate list
    rt = ts[:, -1] + torch.tensor([10, 3600, 86_400])
    rt[2] = T0
    with torch.inference_mode():
        together = model.score_candidates_batch(items, actions, ts, cands, rt, micro_batch=4)
        for i, k in enumerate((9, 4, 9)):
            keep = items[i] != 0
            alone = model.score_candidates(
                items[i][keep], actions[i][keep], ts[i][keep], cands[i, :k], int(rt[i])
            )
            assert (together[i, :k] - alone).abs().max() < 1e-5, i
    assert together.shape == (3, 9)
    with pytest.raises(ValueError, match="one row per history"):
        model.score_candidates_batch(items, actions, ts, cands[:2], rt)
    with pytest.raises(ValueError, match="one value per history"):
        model.score_candidates_batch(items, actions, ts, cands, rt[:1])


@pytest.mark.parametrize("kind", KINDS)
def test_content_item_table(kind: str) -> None:
    """With ``content_dim``, item vectors are id embedding + projected content; an item table
    of such rows drives every path (encode, shared-prefix and naive scoring, losses)."""
    model = make_model(kind, content_dim=5, id_dropout=0.5)
    g = torch.Generator().manual_seed(6)
    content = torch.randn(N_ITEMS + 1, 5, generator=g)
    with torch.inference_mode():
        full = model.item_vectors(torch.arange(N_ITEMS + 1), content)
        no_id = model.item_vectors(torch.zeros(3, dtype=torch.int64), content[1:4])
        assert model.content_proj is not None
        assert torch.allclose(no_id, model.content_proj(content[1:4]))  # content alone
        assert torch.allclose(full[1:4], no_id + model.item_emb.weight[1:4])
    table = torch.cat([torch.zeros(1, 16), full[1:]])
    items, actions, ts = make_batch(1, 10, seed=7, pad=[3])
    cands = torch.tensor([4, 9, 30])
    with torch.inference_mode():
        shared = model.score_candidates(items, actions, ts, cands, T0 + 10**9, table=table)
        naive = model.score_candidates_naive(items, actions, ts, cands, T0 + 10**9, table=table)
        plain = model.score_candidates(items, actions, ts, cands, T0 + 10**9)
    assert (shared - naive).abs().max() < 1e-4
    assert not torch.allclose(shared, plain)  # the table is what is scored
    # a training table drops ids (row 0 stays padding), and the losses take it
    model.train()
    drop = model.training_table(content, torch.Generator().manual_seed(0))
    assert torch.equal(drop[0], torch.zeros(16))
    dropped = (drop - full).abs().sum(-1) > 1e-6
    assert 0.2 < dropped[1:].float().mean() < 0.8
    negatives = torch.randint(1, N_ITEMS + 1, (1, 10, 4), generator=g)
    loss = model.next_item_loss(items, actions, ts, negatives, drop)
    loss = loss + model.candidate_loss(items, actions, ts, negatives[:, 0], drop)
    loss.backward()
    assert model.content_proj.weight.grad is not None
    assert model.content_proj.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="pass content"):
        model.item_vectors(torch.arange(3))
    with pytest.raises(ValueError, match="no content path"):
        make_model(kind).item_vectors(torch.arange(3), content[:3])


@pytest.mark.parametrize("kind", KINDS)
def test_scoring_with_an_empty_history(kind: str) -> None:
    model = make_model(kind)
    cands = torch.tensor([1, 5, 9])
    zeros = torch.zeros(6, dtype=torch.int64)
    with torch.inference_mode():
        shared = model.score_candidates(zeros, zeros, zeros, cands, T0)
        naive = model.score_candidates_naive(zeros, zeros, zeros, cands, T0)
        no_columns = torch.zeros(0, dtype=torch.int64)
        empty = model.score_candidates(no_columns, no_columns, no_columns, cands, T0)
        none = model.score_candidates(zeros, zeros, zeros, torch.zeros(0, dtype=torch.int64), T0)
    assert torch.isfinite(shared).all()
    assert (shared - naive).abs().max() < 1e-4
    assert (shared - empty).abs().max() < 1e-4
    assert none.shape == (0,)


def test_hstu_scoring_depends_on_request_time() -> None:
    model = make_model("hstu")
    with torch.no_grad():  # make the time bias matter
        for name, param in model.named_parameters():
            if name.endswith("ts_w"):
                param.copy_(torch.linspace(-3, 3, param.numel()))
    items, actions, ts = make_batch(1, 10)
    cands = torch.tensor([3, 4])
    with torch.inference_mode():
        soon = model.score_candidates(items, actions, ts, cands, int(ts[0, -1]) + 5)
        later = model.score_candidates(items, actions, ts, cands, int(ts[0, -1]) + 10**7)
    assert not torch.allclose(soon, later)


@pytest.mark.parametrize("kind", KINDS)
def test_long_sequences(kind: str) -> None:
    model = make_model(kind, dim=8, heads=1, blocks=1, max_len=1024)
    items, actions, ts = make_batch(1, 1024, pad=[100])
    cands = torch.tensor([1, 2, 3])
    with torch.inference_mode():
        out = model.encode(items, actions, ts)
        shared = model.score_candidates(items, actions, ts, cands, int(ts[0, -1]))
        naive = model.score_candidates_naive(items, actions, ts, cands, int(ts[0, -1]), 3)
    assert out.shape == (1, 1024, 8) and torch.isfinite(out).all()
    assert (shared - naive).abs().max() < 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(kind: str, tmp_path: Path) -> None:
    model = make_model(kind, dropout=0.3)
    items, actions, ts = make_batch(2, 6, pad=[0, 2])
    save_seqrec(tmp_path / "m", model)
    loaded = load_seqrec(tmp_path / "m")
    assert loaded.cfg == model.cfg and not loaded.training
    with torch.inference_mode():
        assert torch.equal(model.encode(items, actions, ts), loaded.encode(items, actions, ts))
        a = model.score_candidates(items[0], actions[0], ts[0], torch.tensor([1, 2]), T0)
        b = loaded.score_candidates(items[0], actions[0], ts[0], torch.tensor([1, 2]), T0)
    assert torch.equal(a, b)
    with pytest.raises(FileNotFoundError):
        load_seqrec(tmp_path / "missing")


@pytest.mark.parametrize(
    "bad",
    [
        {"max_len": 1},
        {"kind": "gru4rec"},
        {"dim": 10, "heads": 3},
        {"temperature": 0.0},
        {"n_items": 0},
        {"unknown_field": 1},
        {"id_dropout": 0.2},  # needs content_dim
        {"content_dim": 0},
    ],
)
def test_config_validation(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        SeqRecConfig.model_validate({"n_items": 5, **bad})


def test_config_defaults_and_reserved_action() -> None:
    cfg = SeqRecConfig(n_items=5)
    assert cfg.kind == "hstu" and cfg.dim == 50 and cfg.temperature == 0.05
    assert cfg.qkv_dim == 50 and cfg.candidate_action == cfg.n_actions == 8
    assert SeqRecConfig(n_items=5, max_len=1024).max_len == 1024
    assert SeqRecConfig(n_items=5, dim=10, heads=3, head_dim=4).qkv_dim == 4
    model = SequentialRecommender(cfg)
    assert model.action_emb.num_embeddings == cfg.n_actions + 1
    with pytest.raises(ValidationError):
        cfg.dim = 3  # type: ignore[misc]
