"""The served generative ranker: vocab, content path, training, export, batched shared-prefix
scoring (Triton dynamic batches) and the Triton handler."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from feedserve.contracts import Action
from feedserve.data.sequences import from_events
from feedserve.models.gr_serving import (
    GenerativeRankerService,
    PostVocab,
    RankRequest,
    ServingRanker,
    ServingRankerConfig,
    item_table,
    load_serving_ranker,
    save_serving_ranker,
    train_serving_ranker,
)
from feedserve.models.gr_train import GRTrainConfig
from feedserve.models.post_table import PostEmbeddingTable, write_snapshot
from feedserve.models.serving import RankerHandler
from feedserve.store import EmbeddingRecord, FileEmbeddingLog

CONTENT_DIM = 16
N_POSTS = 40
MAX_LEN = 16
T0 = 1_700_000_000
UNKNOWN = 987_654_321  # a post id neither the vocab nor the post table knows
ENGAGEMENTS = [int(a) for a in (Action.click, Action.like, Action.comment, Action.share)]


def test_vocab_maps_known_and_unknown_to_zero() -> None:
    vocab = PostVocab(np.array([50, 7, 30, 7, 0, -4]))  # duplicates, padding, junk
    assert len(vocab) == 3 and vocab.post_ids.tolist() == [7, 30, 50]
    got = vocab.lookup(np.array([7, 30, 50, 0, 8, 1, 51, -4, 2**62]))
    assert got.dtype == np.int64
    assert got.tolist() == [1, 2, 3, 0, 0, 0, 0, 0, 0]
    assert vocab.lookup(np.array([[0, 30], [50, 99]])).tolist() == [[0, 2], [3, 0]]
    assert PostVocab(np.zeros(0, np.int64)).lookup(np.array([5, 0])).tolist() == [0, 0]


# --- a tiny world: members read the catalogue in order -----------------------------------------


@dataclass
class Tiny:
    catalogue: np.ndarray  # post ids (not dense)
    content: np.ndarray  # [N_POSTS, CONTENT_DIM]
    ranker: ServingRanker
    losses: list[float]
    service: GenerativeRankerService
    table: PostEmbeddingTable


def ordered_reading(catalogue: np.ndarray, members: int, events: int, seed: int) -> Any:
    rng = np.random.default_rng(seed)
    users, items, actions, ts = [], [], [], []
    for m in range(members):
        start = int(rng.integers(len(catalogue)))
        users.append(np.full(events, m + 1))
        items.append(catalogue[(start + np.arange(events)) % len(catalogue)])
        actions.append(rng.choice(ENGAGEMENTS, size=events))
        ts.append(T0 + np.cumsum(rng.integers(1, 5_000, size=events)))
    return from_events("tiny", catalogue, *(np.concatenate(c) for c in (users, items, actions, ts)))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    rng = np.random.default_rng(0)
    catalogue = (np.arange(1, N_POSTS + 1) * 3 + 100).astype(np.int64)
    content = rng.normal(size=(N_POSTS, CONTENT_DIM)).astype(np.float32)
    content /= np.linalg.norm(content, axis=1, keepdims=True)
    root = tmp_path_factory.mktemp("tiny_ranker")
    write_snapshot(root / "index", catalogue, content)
    table = PostEmbeddingTable(root / "index", None)
    train = GRTrainConfig(
        epochs=12, lr=1e-2, batch_size=16, num_negatives=16, candidate_loss_weight=1.0,
        max_len=12, checkpoint_every=0,
    )  # fmt: skip
    cfg = ServingRankerConfig(
        dim=16, blocks=1, heads=2, max_len=MAX_LEN, id_dropout=0.2, train=train, eval_users=40
    )
    with torch.enable_grad():  # in case another test switched autograd off globally
        ranker, report = train_serving_ranker(
            ordered_reading(catalogue, members=96, events=14, seed=1), table, cfg
        )
    save_serving_ranker(root / "ranker", ranker)
    service = GenerativeRankerService(root / "ranker", table, micro_batch=7)
    return Tiny(catalogue, content, ranker, report.epoch_losses, service, table)


def test_training_learns_and_reports_the_served_path(tiny: Tiny) -> None:
    losses = tiny.losses
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0], losses
    info = tiny.ranker.info
    assert info["format"] == "feedserve.generative_ranker/1" and info["epochs"] == 12
    ev = info["eval"]
    assert ev["users"] == 40
    # the next post in reading order is learnt: far above popularity (which is ~uniform here)
    assert ev["hstu"]["hr@10"] >= 0.8 and ev["hstu"]["hr@10"] > 2 * ev["popularity"]["hr@10"]
    assert not tiny.ranker.model.training


def request(
    rng: np.random.Generator, catalogue: np.ndarray, length: int, k: int, t: int = T0
) -> RankRequest:
    ts = t - np.sort(rng.integers(0, 10**6, size=length))[::-1]
    return RankRequest(
        post_ids=rng.choice(catalogue, length),
        actions=rng.choice(ENGAGEMENTS, length).astype(np.int64),
        timestamps=ts.astype(np.int64),
        candidates=rng.choice(catalogue, k),
        request_time=t,
    )


def test_service_matches_the_naive_forward_pass(tiny: Tiny) -> None:
    """Service scores = the model's per-candidate full pass over history + candidate."""
    rng = np.random.default_rng(3)
    req = request(rng, tiny.catalogue, 9, 20)
    got = tiny.service.score([req])[0]
    model, vocab = tiny.ranker.model, tiny.ranker.vocab
    posts = np.unique(np.concatenate([req.post_ids, req.candidates]))
    table = item_table(model, vocab, posts, tiny.table)
    local = lambda ids: torch.from_numpy(np.searchsorted(posts, ids) + 1)  # noqa: E731
    with torch.inference_mode():
        want = model.score_candidates_naive(
            local(req.post_ids),
            torch.from_numpy(req.actions),
            torch.from_numpy(req.timestamps),
            local(req.candidates),
            req.request_time,
            table=table,
        ).numpy()
    assert got.dtype == np.float32 and got.shape == (20,)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.ptp(got) > 0.05


def test_service_learnt_the_sequence_rule(tiny: Tiny) -> None:
    rng = np.random.default_rng(4)
    ranks = []
    for _ in range(20):
        start = int(rng.integers(N_POSTS))
        hist = tiny.catalogue[(start + np.arange(8)) % N_POSTS]
        ts = T0 + np.cumsum(rng.integers(1, 5_000, size=9))  # as in training
        actions = rng.choice(ENGAGEMENTS, size=8).astype(np.int64)
        req = RankRequest(hist, actions, ts[:8], tiny.catalogue, int(ts[8]))
        scores = tiny.service.score([req])[0]
        scores[np.isin(tiny.catalogue, hist)] = -np.inf  # read posts are filtered, as served
        nxt = (start + 8) % N_POSTS
        ranks.append(int((scores > scores[nxt]).sum()))
    assert np.median(ranks) < 4, ranks  # random would be ~(N_POSTS - 8) / 2


def test_batched_members_equal_members_alone(tiny: Tiny) -> None:
    """A dynamic batch (ragged histories and candidate lists) scores each member as alone."""
    rng = np.random.default_rng(5)
    reqs = [
        request(rng, tiny.catalogue, 12, 9),
        request(rng, tiny.catalogue, 0, 4),  # empty history
        request(rng, tiny.catalogue, 3, 0),  # no candidates
        request(rng, tiny.catalogue, 5, 30, t=T0 + 86_400),
    ]
    together = tiny.service.score(reqs)
    assert [len(s) for s in together] == [9, 4, 0, 30]
    for req, got in zip(reqs, together, strict=True):
        alone = tiny.service.score([req])[0]
        np.testing.assert_allclose(got, alone, rtol=1e-5, atol=1e-5)
        assert np.isfinite(got).all()


def test_padding_and_truncation(tiny: Tiny) -> None:
    rng = np.random.default_rng(6)
    req = request(rng, tiny.catalogue, 6, 15)
    base = tiny.service.score([req])[0]
    pad = lambda a: np.concatenate([np.zeros(11, np.int64), a])  # noqa: E731
    padded = RankRequest(
        pad(req.post_ids), pad(req.actions), pad(req.timestamps), req.candidates, T0
    )
    np.testing.assert_allclose(tiny.service.score([padded])[0], base, rtol=1e-5, atol=1e-5)
    long = request(rng, tiny.catalogue, MAX_LEN + 9, 15)
    tail = RankRequest(
        long.post_ids[-MAX_LEN:],
        long.actions[-MAX_LEN:],
        long.timestamps[-MAX_LEN:],
        long.candidates,
        T0,
    )
    np.testing.assert_allclose(
        tiny.service.score([long])[0], tiny.service.score([tail])[0], rtol=1e-5, atol=1e-5
    )


def test_request_time_matters(tiny: Tiny) -> None:
    """HSTU's time-gap bias reads the gap from each event to the request time."""
    rng = np.random.default_rng(7)
    req = request(rng, tiny.catalogue, 8, 20)
    later = RankRequest(req.post_ids, req.actions, req.timestamps, req.candidates, T0 + 30 * 86_400)
    a, b = (tiny.service.score([r])[0] for r in (req, later))
    assert not np.allclose(a, b, atol=1e-6)


def test_unknown_and_new_posts(tiny: Tiny, tmp_path: Path) -> None:
    """A post unknown to the vocab is scored from its content (nearline embedding log); a post
    with neither id nor content has a zero vector: score 0."""
    log = FileEmbeddingLog(tmp_path / "post_embeddings.log")
    write_snapshot(tmp_path / "index", tiny.catalogue, tiny.content)
    table = PostEmbeddingTable(tmp_path / "index", log, poll_s=0.0)
    ranker_dir = tmp_path / "ranker"
    save_serving_ranker(ranker_dir, tiny.ranker)
    service = GenerativeRankerService(ranker_dir, table)
    new_post = int(tiny.catalogue.max()) + 1_000
    log.append([EmbeddingRecord("upsert", new_post, tiny.content[5])])
    rng = np.random.default_rng(8)
    req = request(rng, tiny.catalogue, 6, 0)
    req = RankRequest(
        np.concatenate([req.post_ids, [UNKNOWN]]),
        np.concatenate([req.actions, [2]]),
        np.concatenate([req.timestamps, [T0 - 1]]),
        np.array([tiny.catalogue[5], new_post, UNKNOWN]),
        T0,
    )
    known, new, unknown = service.score([req])[0]
    assert unknown == 0.0
    assert abs(new) > 1e-3 and new != known  # content only vs id + content
    assert service.vocab.lookup(np.array([new_post, UNKNOWN])).tolist() == [0, 0]


def test_export_round_trip_and_errors(tiny: Tiny, tmp_path: Path) -> None:
    save_serving_ranker(tmp_path / "r", tiny.ranker)
    back = load_serving_ranker(tmp_path / "r")
    assert back.info == tiny.ranker.info
    np.testing.assert_array_equal(back.vocab.post_ids, tiny.catalogue)
    for name, tensor in tiny.ranker.model.state_dict().items():
        assert torch.equal(tensor, back.model.state_dict()[name]), name
    with pytest.raises(FileNotFoundError, match="feedserve build"):
        load_serving_ranker(tmp_path / "missing")
    write_snapshot(tmp_path / "idx3", tiny.catalogue, np.ones((N_POSTS, 3), np.float32))
    with pytest.raises(ValueError, match="rebuild"):
        GenerativeRankerService(tmp_path / "r", PostEmbeddingTable(tmp_path / "idx3", None))


# --- the Triton handler --------------------------------------------------------------------


def as_triton(req: RankRequest, with_time: bool = True) -> dict[str, np.ndarray | None]:
    return {
        "history_post_ids": req.post_ids,
        "history_actions": req.actions,
        "history_timestamps": req.timestamps,
        "candidate_ids": req.candidates,
        "request_time": np.array([req.request_time]) if with_time else None,
    }


def test_handler_scores_a_dynamic_batch_like_single_requests(tiny: Tiny) -> None:
    handler = RankerHandler(tiny.service)
    rng = np.random.default_rng(9)
    reqs = [request(rng, tiny.catalogue, n, k) for n, k in ((2, 5), (MAX_LEN, 9), (0, 4))]
    together = handler.handle([as_triton(r) for r in reqs])
    for req, result in zip(reqs, together, strict=True):
        assert isinstance(result, dict)
        want = tiny.service.score([req])[0]
        np.testing.assert_allclose(result["scores"], want, rtol=1e-5, atol=1e-5)


def test_handler_defaults_request_time_to_now(tiny: Tiny) -> None:
    handler = RankerHandler(tiny.service)
    rng = np.random.default_rng(10)
    req = request(rng, tiny.catalogue, 5, 6, t=int(__import__("time").time()))
    got = handler.handle([as_triton(req, with_time=False)])[0]
    assert isinstance(got, dict)
    # the handler's clock is within seconds of the request's: same time bucket or close
    np.testing.assert_allclose(got["scores"], tiny.service.score([req])[0], atol=0.05)


def test_handler_rejects_bad_requests_alone(tiny: Tiny) -> None:
    handler = RankerHandler(tiny.service)
    good = as_triton(request(np.random.default_rng(11), tiny.catalogue, 3, 6))
    ragged = {**good, "history_actions": np.array([2, 3])}
    bad_action = {**good, "history_actions": np.array([2, 3, 9])}
    bad_candidate = {**good, "candidate_ids": np.array([5, -1])}
    results = handler.handle([ragged, good, bad_action, bad_candidate])
    assert isinstance(results[0], str) and "length" in results[0]
    assert isinstance(results[1], dict) and results[1]["scores"].shape == (6,)
    assert isinstance(results[2], str) and "history_actions" in results[2]
    assert isinstance(results[3], str) and "candidate_ids" in results[3]


# --- the built artifacts -------------------------------------------------------------------


@pytest.fixture
def built_service(
    built: Any, tmp_path: Path
) -> Iterator[tuple[GenerativeRankerService, FileEmbeddingLog]]:
    log = FileEmbeddingLog(tmp_path / "post_embeddings.log")  # private: built's stays untouched
    table = PostEmbeddingTable(Path(built.artifacts_dir) / "index", log, poll_s=0.0)
    yield GenerativeRankerService(Path(built.artifacts_dir) / "ranker", table), log


def test_built_ranker_is_hstu_with_content_and_beats_popularity(
    built_service: tuple[GenerativeRankerService, FileEmbeddingLog],
) -> None:
    service, _ = built_service
    cfg = service.model.cfg
    assert cfg.kind == "hstu" and cfg.content_dim == 384 and cfg.max_len >= 1024
    ev = service.info["eval"]
    print(f"built ranker held-out: {ev}")
    assert ev["hstu"]["hr@10"] > ev["popularity"]["hr@10"]
