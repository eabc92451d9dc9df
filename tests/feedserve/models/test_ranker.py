"""The sequential ranker: vocab, training, save/load, shared-prefix scoring, padding."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from feedserve.contracts import Action
from feedserve.models.post_table import PostEmbeddingTable, write_snapshot
from feedserve.models.ranker import (
    OOV,
    PAD,
    RankerConfig,
    RankerService,
    SequenceRanker,
    Vocab,
    build_training_data,
    load_ranker,
    save_ranker,
    train_ranker,
)
from feedserve.models.serving import RankerHandler
from feedserve.store import EmbeddingRecord, FileEmbeddingLog
from feedserve.store.base import HISTORY_DTYPE
from feedserve_featurizers.tensors import TIME_BUCKETS

CONTENT_DIM = 16
N_POSTS = 40
MAX_LEN = 8
EPOCHS = 15
UNKNOWN = 987_654_321  # a post id neither the vocab nor the post table knows
ENGAGEMENTS = [int(a) for a in (Action.click, Action.like, Action.comment, Action.share)]


# --- Vocab -----------------------------------------------------------------------------------


def test_vocab_maps_known_unknown_and_padding() -> None:
    vocab = Vocab(np.array([50, 7, 30, 7, 0, -4]))  # duplicates, padding, junk
    assert len(vocab) == 3
    assert vocab.post_ids.tolist() == [7, 30, 50]
    got = vocab.lookup(np.array([7, 30, 50, 0, 8, 1, 51, 6, -4, 2**62]))
    assert got.dtype == np.int64
    assert got.tolist() == [2, 3, 4, PAD, OOV, OOV, OOV, OOV, OOV, OOV]
    assert PAD == 0 and OOV == 1
    two_d = vocab.lookup(np.array([[0, 0, 30], [50, 99, 7]]))
    assert two_d.tolist() == [[0, 0, 3], [4, 1, 2]]


def test_empty_vocab() -> None:
    vocab = Vocab(np.zeros(0, dtype=np.int64))
    assert len(vocab) == 0
    assert vocab.lookup(np.array([0, 5, 0, 9])).tolist() == [PAD, OOV, PAD, OOV]
    assert vocab.lookup(np.zeros((2, 0), dtype=np.int64)).shape == (2, 0)


# --- a tiny synthetic world ------------------------------------------------------------------


@dataclass
class Tiny:
    catalogue: np.ndarray  # post ids
    content: np.ndarray  # [N_POSTS, CONTENT_DIM]
    histories: list[np.ndarray]
    model: SequenceRanker
    vocab: Vocab
    losses: list[float]
    cfg: RankerConfig


def synthetic_histories(
    catalogue: np.ndarray, members: int, events: int, seed: int
) -> list[np.ndarray]:
    """Members who read the catalogue in order: the next post is always the following one."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(members):
        start = int(rng.integers(len(catalogue)))
        h = np.zeros(events, dtype=HISTORY_DTYPE)
        h["post_id"] = catalogue[(start + np.arange(events)) % len(catalogue)]
        h["ts"] = 1_700_000_000 + np.cumsum(rng.integers(1, 5_000, size=events))
        h["action"] = rng.choice(ENGAGEMENTS, size=events)
        out.append(h)
    return out


@pytest.fixture(scope="module")
def tiny() -> Tiny:
    rng = np.random.default_rng(0)
    catalogue = (np.arange(1, N_POSTS + 1) * 3 + 100).astype(np.int64)
    content = rng.normal(size=(N_POSTS, CONTENT_DIM)).astype(np.float32)
    content /= np.linalg.norm(content, axis=1, keepdims=True)
    histories = synthetic_histories(catalogue, members=96, events=12, seed=1)
    cfg = RankerConfig(
        dim=16, layers=1, heads=2, max_len=MAX_LEN, content_dim=CONTENT_DIM, id_dropout=0.0
    )
    data = build_training_data(histories, cfg.max_len)
    with torch.enable_grad():  # in case another test switched autograd off globally
        model, vocab, losses = train_ranker(
            data, catalogue, content, cfg, epochs=EPOCHS, batch_size=16, lr=1e-2, progress=False
        )
    return Tiny(catalogue, content, histories, model, vocab, losses, cfg)


@pytest.fixture(scope="module")
def tiny_service(tiny: Tiny, tmp_path_factory: pytest.TempPathFactory) -> RankerService:
    root = tmp_path_factory.mktemp("tiny_ranker")
    write_snapshot(root / "index", tiny.catalogue, tiny.content)
    save_ranker(root / "ranker", tiny.model, tiny.vocab)
    return RankerService(root / "ranker", PostEmbeddingTable(root / "index", None))


def test_training_loss_decreases(tiny: Tiny) -> None:
    assert len(tiny.losses) == EPOCHS
    assert all(np.isfinite(tiny.losses))
    assert tiny.losses[-1] < 0.5 * tiny.losses[0], tiny.losses
    assert tiny.losses[-1] < 0.6 * np.log(N_POSTS), tiny.losses  # well below chance
    assert tiny.losses[-1] < tiny.losses[len(tiny.losses) // 2], tiny.losses  # still learning
    assert not tiny.model.training  # returned in eval mode
    assert len(tiny.vocab) == N_POSTS


def test_training_data_needs_enough_engagements() -> None:
    h = np.zeros(1, dtype=HISTORY_DTYPE)
    h["post_id"], h["action"] = 5, int(Action.click)
    impressions = np.zeros(3, dtype=HISTORY_DTYPE)
    impressions["post_id"], impressions["action"] = [1, 2, 3], int(Action.impression)
    with pytest.raises(ValueError, match="enough engagements"):
        build_training_data([h, impressions], max_len=4)
    data = build_training_data([h, impressions, np.concatenate([h, h])], max_len=4)
    assert data.post_ids.shape == (1, 5)  # max_len + 1 columns, only the 2-event member
    assert data.post_ids[0].tolist() == [0, 0, 0, 5, 5]


def random_inputs(
    rng: np.random.Generator, batch: int, length: int, catalogue: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    hp = rng.choice(catalogue, size=(batch, length))
    ha = rng.choice(ENGAGEMENTS, size=(batch, length)).astype(np.int64)
    ht = rng.integers(0, TIME_BUCKETS, size=(batch, length)).astype(np.int64)
    return hp, ha, ht


def model_scores(
    model: SequenceRanker,
    vocab: Vocab,
    content_of: dict[int, np.ndarray],
    hp: np.ndarray,
    ha: np.ndarray,
    ht: np.ndarray,
    cands: np.ndarray,
) -> np.ndarray:
    def content(ids: np.ndarray) -> torch.Tensor:
        rows = [content_of.get(int(p), np.zeros(CONTENT_DIM, np.float32)) for p in ids.ravel()]
        return torch.from_numpy(np.stack(rows).reshape(*ids.shape, CONTENT_DIM))

    with torch.inference_mode():
        hidden = model.encode(
            torch.from_numpy(vocab.lookup(hp)),
            content(hp),
            torch.from_numpy(ha),
            torch.from_numpy(ht),
        )
        items = model.item_repr(torch.from_numpy(vocab.lookup(cands)), content(cands))
        return model.score(hidden[:, -1], items).numpy()


def test_save_load_round_trip(tiny: Tiny, tmp_path: Path) -> None:
    save_ranker(tmp_path / "ranker", tiny.model, tiny.vocab)
    model, vocab = load_ranker(tmp_path / "ranker")
    assert not model.training
    assert model.cfg == tiny.cfg
    np.testing.assert_array_equal(vocab.post_ids, tiny.vocab.post_ids)
    before, after = tiny.model.state_dict(), model.state_dict()
    assert before.keys() == after.keys()
    for name, tensor in before.items():
        assert torch.equal(tensor, after[name]), name
    rng = np.random.default_rng(5)
    hp, ha, ht = random_inputs(rng, 3, MAX_LEN, tiny.catalogue)
    cands = rng.choice(tiny.catalogue, size=(3, 10))
    content_of = dict(zip(tiny.catalogue.tolist(), tiny.content, strict=True))
    want = model_scores(tiny.model, tiny.vocab, content_of, hp, ha, ht, cands)
    got = model_scores(model, vocab, content_of, hp, ha, ht, cands)
    np.testing.assert_array_equal(got, want)
    assert np.isfinite(got).all() and np.ptp(got) > 0


def test_load_ranker_without_artifacts(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="feedserve build"):
        load_ranker(tmp_path)


def test_service_rejects_mismatched_content_dim(tiny: Tiny, tmp_path: Path) -> None:
    write_snapshot(tmp_path / "index", tiny.catalogue, np.ones((N_POSTS, 3), np.float32))
    save_ranker(tmp_path / "ranker", tiny.model, tiny.vocab)
    with pytest.raises(ValueError, match="rebuild"):
        RankerService(tmp_path / "ranker", PostEmbeddingTable(tmp_path / "index", None))


def test_service_uses_the_trained_model(tiny: Tiny, tiny_service: RankerService) -> None:
    """The service reproduces the model's own scores, and they learnt the sequence rule."""
    rng = np.random.default_rng(6)
    hp, ha, ht = random_inputs(rng, 1, MAX_LEN, tiny.catalogue)
    content_of = dict(zip(tiny.catalogue.tolist(), tiny.content, strict=True))
    want = model_scores(tiny.model, tiny.vocab, content_of, hp, ha, ht, tiny.catalogue[None])
    got = tiny_service.score(hp, ha, ht, [tiny.catalogue])[0]
    np.testing.assert_allclose(got, want[0], rtol=1e-5, atol=1e-4)
    # a member who read posts i-7..i in order: post i+1 should rank near the top
    ranks = []
    for h in tiny.histories[:20]:
        last = h[-MAX_LEN:]
        scores = tiny_service.score(
            last["post_id"][None].astype(np.int64),
            last["action"][None].astype(np.int64),
            np.zeros((1, MAX_LEN), np.int64),
            [tiny.catalogue],
        )[0]
        nxt = (np.searchsorted(tiny.catalogue, last["post_id"][-1]) + 1) % N_POSTS
        ranks.append(int((scores > scores[nxt]).sum()))
    assert np.median(ranks) < N_POSTS / 4, ranks  # random would be ~N_POSTS / 2


# --- shared-prefix scoring -------------------------------------------------------------------


def test_shared_prefix_equals_per_candidate_scoring(
    tiny: Tiny, tiny_service: RankerService
) -> None:
    rng = np.random.default_rng(7)
    hp, ha, ht = random_inputs(rng, 1, 6, tiny.catalogue)
    cands = np.concatenate([tiny.catalogue, [UNKNOWN, UNKNOWN + 1]])
    rng.shuffle(cands)
    at_once = tiny_service.score(hp, ha, ht, [cands])[0]
    assert at_once.shape == (len(cands),)
    assert at_once.dtype == np.float32
    one_by_one = np.array([tiny_service.score(hp, ha, ht, [np.array([c])])[0][0] for c in cands])
    np.testing.assert_allclose(at_once, one_by_one, rtol=1e-5, atol=1e-5)
    assert np.ptp(at_once) > 0.1  # scores actually differ between candidates


def test_batched_members_equal_members_alone(tiny: Tiny, tiny_service: RankerService) -> None:
    rng = np.random.default_rng(8)
    hp, ha, ht = random_inputs(rng, 3, MAX_LEN, tiny.catalogue)
    hp[1, :5] = ha[1, :5] = ht[1, :5] = 0  # a shorter (left-padded) history
    cands = [rng.choice(tiny.catalogue, 12), np.zeros(0, np.int64), rng.choice(tiny.catalogue, 3)]
    together = tiny_service.score(hp, ha, ht, cands)
    assert [len(s) for s in together] == [12, 0, 3]
    for i in (0, 2):
        alone = tiny_service.score(hp[i : i + 1], ha[i : i + 1], ht[i : i + 1], [cands[i]])[0]
        np.testing.assert_allclose(together[i], alone, rtol=1e-5, atol=1e-5)
    none = tiny_service.score(hp, ha, ht, [np.zeros(0, np.int64)] * 3)
    assert [s.shape for s in none] == [(0,)] * 3


# --- padding and truncation ------------------------------------------------------------------


def left_pad(x: np.ndarray, n: int) -> np.ndarray:
    return np.concatenate([np.zeros((x.shape[0], n), dtype=x.dtype), x], axis=1)


@pytest.mark.parametrize(("length", "extra"), [(1, 1), (3, 5), (5, 3), (6, MAX_LEN), (2, 30)])
def test_left_padding_does_not_change_scores(
    tiny: Tiny, tiny_service: RankerService, length: int, extra: int
) -> None:
    rng = np.random.default_rng(length * 100 + extra)
    hp, ha, ht = random_inputs(rng, 1, length, tiny.catalogue)
    cands = [np.concatenate([tiny.catalogue[:15], [UNKNOWN]])]
    base = tiny_service.score(hp, ha, ht, cands)[0]
    padded = tiny_service.score(
        left_pad(hp, extra), left_pad(ha, extra), left_pad(ht, extra), cands
    )
    np.testing.assert_allclose(padded[0], base, rtol=1e-4, atol=1e-4)


def test_history_longer_than_max_len_keeps_the_newest(
    tiny: Tiny, tiny_service: RankerService
) -> None:
    rng = np.random.default_rng(9)
    hp, ha, ht = random_inputs(rng, 1, MAX_LEN + 6, tiny.catalogue)
    cands = [tiny.catalogue]
    full = tiny_service.score(hp, ha, ht, cands)[0]
    tail = tiny_service.score(hp[:, -MAX_LEN:], ha[:, -MAX_LEN:], ht[:, -MAX_LEN:], cands)[0]
    np.testing.assert_allclose(full, tail, rtol=1e-5, atol=1e-5)


def test_empty_history_and_out_of_range_time_buckets(
    tiny: Tiny, tiny_service: RankerService
) -> None:
    zeros = np.zeros((1, 4), np.int64)
    scores = tiny_service.score(zeros, zeros, zeros, [tiny.catalogue[:5]])[0]
    assert scores.shape == (5,) and np.isfinite(scores).all()
    hp, ha, _ = random_inputs(np.random.default_rng(10), 1, 4, tiny.catalogue)
    wild = tiny_service.score(hp, ha, np.array([[-5, 0, 999, 31]]), [tiny.catalogue])[0]
    clipped = tiny_service.score(hp, ha, np.array([[0, 0, 31, 31]]), [tiny.catalogue])[0]
    np.testing.assert_allclose(wild, clipped, rtol=1e-6, atol=1e-6)


def test_ranker_handler_batch_neighbours_do_not_change_scores(
    tiny: Tiny, tiny_service: RankerService
) -> None:
    """The handler left-pads every history to the longest in its dynamic batch."""
    handler = RankerHandler(tiny_service)
    rng = np.random.default_rng(11)

    def request(length: int, k: int) -> dict[str, np.ndarray | None]:
        hp, ha, ht = random_inputs(rng, 1, length, tiny.catalogue)
        return {
            "history_post_ids": hp[0],
            "history_actions": ha[0],
            "history_time_buckets": ht[0],
            "candidate_ids": rng.choice(tiny.catalogue, k),
        }

    reqs = [request(2, 5), request(MAX_LEN, 9), request(0, 4), request(5, 1)]
    together = handler.handle(reqs)
    for req, result in zip(reqs, together, strict=True):
        assert isinstance(result, dict)
        alone = handler.handle([req])[0]
        assert isinstance(alone, dict)
        assert result["scores"].shape == req["candidate_ids"].shape  # type: ignore[union-attr]
        np.testing.assert_allclose(result["scores"], alone["scores"], rtol=1e-4, atol=1e-4)


def test_ranker_handler_rejects_bad_requests_alone(tiny: Tiny, tiny_service: RankerService) -> None:
    handler = RankerHandler(tiny_service)
    good: dict[str, np.ndarray | None] = {
        "history_post_ids": tiny.catalogue[:3],
        "history_actions": np.array([2, 3, 4]),
        "history_time_buckets": np.array([0, 1, 2]),
        "candidate_ids": tiny.catalogue[:6],
    }
    ragged = {**good, "history_actions": np.array([2, 3])}
    bad_action = {**good, "history_actions": np.array([2, 3, 7])}
    results = handler.handle([ragged, good, bad_action])
    assert isinstance(results[0], str) and "length" in results[0]
    assert isinstance(results[2], str) and "action" in results[2]
    assert isinstance(results[1], dict) and results[1]["scores"].shape == (6,)


# --- the built artifacts ---------------------------------------------------------------------


@pytest.fixture
def built_service(built: Any, tmp_path: Path) -> Iterator[tuple[RankerService, FileEmbeddingLog]]:
    log = FileEmbeddingLog(tmp_path / "post_embeddings.log")  # private: built's stays untouched
    table = PostEmbeddingTable(Path(built.artifacts_dir) / "index", log, poll_s=0.0)
    yield RankerService(Path(built.artifacts_dir) / "ranker", table), log


def test_built_ranker_scores_new_posts(
    built_service: tuple[RankerService, FileEmbeddingLog],
) -> None:
    service, log = built_service
    known = service.vocab.post_ids
    assert len(known) > 100
    rng = np.random.default_rng(12)
    hp, ha, ht = random_inputs(rng, 2, 20, known)
    hp[0, 3] = UNKNOWN  # an unknown post in the history, too
    # a post published after the build: in the embedding log, not in the ranker's vocab
    new_post = int(known.max()) + 1_000
    emb, found = service.posts.get(known[:1])
    assert found.all()
    log.append([EmbeddingRecord("upsert", new_post, emb[0])])
    cands = [np.array([known[0], new_post, UNKNOWN]), np.array([UNKNOWN, new_post])]
    scores = service.score(hp, ha, ht, cands)
    assert [s.shape for s in scores] == [(3,), (2,)]
    assert all(np.isfinite(s).all() for s in scores)
    assert abs(scores[0][1] - scores[0][2]) > 1e-3  # the new post is scored from its content
    assert service.vocab.lookup(np.array([new_post, UNKNOWN])).tolist() == [OOV, OOV]
