"""The generative ranker as served: a content-aware HSTU over post ids, trained on the
platform's own engagement sequences, exported as a directory, and scored in batches with the
shared-prefix path.

What the feed's ranker adds to :mod:`feedserve.models.sequential`:

* **post ids, not dense ids**: :class:`PostVocab` maps the post ids known at training to the
  model's item ids ``1..n`` (``0``: unknown);
* **content**: every item vector is ``id_embedding + W · text_embedding`` (the post's
  embedding in the release's index snapshot, nearline additions included), so a post created
  after training — no id embedding — is scored from its text (``SeqRecConfig.content_dim``);
* **one model, many members per call**: :class:`GenerativeRankerService` scores a Triton
  dynamic batch — each member's history with its own candidates — in one
  ``score_candidates_batch`` call: the histories are encoded once each, the candidates attend
  to their member's cached keys/values in micro-batches. Item vectors are computed once per
  call for the distinct posts of the batch (a per-call item table), not per occurrence.

The training recipe (:func:`train_serving_ranker`) is the reference protocol's
(:mod:`feedserve.models.gr_train`) with the serving loss on: the candidate path is what the
gateway calls, so ``candidate_loss`` gets weight 1. The held-out last event of each member
measures the *served* path (:func:`serving_ranks`: full ranking over every post by
``score_candidates_batch``) against popularity; :func:`train_serving_ranker` reports both.

Export format (a directory, ``ranker/`` in a release or in a Triton model version):
``config.json`` + ``model.safetensors`` (:func:`~feedserve.models.sequential.save_seqrec`),
``post_ids.npy`` (the vocabulary) and ``training.json`` (what it was trained on, metrics).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch

from feedserve.data.sequences import SequenceData
from feedserve.models.gr_eval import (
    LeaveOneOut,
    history_arrays,
    leave_one_out,
    popularity_ranks,
    rank_metrics,
    ranks_from_scores,
)
from feedserve.models.gr_train import GRTrainConfig, GRTrainReport, train_seqrec
from feedserve.models.sequential import (
    SeqRecConfig,
    SequentialRecommender,
    load_seqrec,
    save_seqrec,
)

VOCAB_FILE = "post_ids.npy"
TRAINING_FILE = "training.json"
FORMAT = "feedserve.generative_ranker/1"


class PostVocab:
    """Post ids known at training → item ids ``1..n`` in ascending post-id order; unknown
    posts and padding (post id 0) → ``0``."""

    def __init__(self, post_ids: np.ndarray) -> None:
        ids = np.unique(np.asarray(post_ids, dtype=np.int64))
        self.post_ids = ids[ids > 0]

    def __len__(self) -> int:
        return len(self.post_ids)

    def lookup(self, post_ids: np.ndarray) -> np.ndarray:
        post_ids = np.asarray(post_ids, dtype=np.int64)
        out = np.zeros(post_ids.shape, dtype=np.int64)
        if len(self.post_ids):
            pos = np.minimum(np.searchsorted(self.post_ids, post_ids), len(self.post_ids) - 1)
            hit = (self.post_ids[pos] == post_ids) & (post_ids > 0)
            out[hit] = pos[hit] + 1
        return out


class ContentSource(Protocol):
    """Post content vectors by post id (``PostEmbeddingTable`` has it)."""

    @property
    def dim(self) -> int: ...

    def get(self, post_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


SERVING_TRAIN = GRTrainConfig(
    epochs=8,
    batch_size=32,
    lr=2e-3,
    num_negatives=128,
    candidate_loss_weight=1.0,  # the candidate path is what the gateway calls
    max_len=200,
    checkpoint_every=0,
)
"""Training defaults of the served ranker (``max_len``: training rows hold each member's
most recent ``max_len + 1`` events)."""


@dataclass(frozen=True)
class ServingRankerConfig:
    """The served ranker's model settings and its training recipe."""

    kind: Literal["hstu", "sasrec"] = "hstu"
    dim: int = 64
    blocks: int = 2
    heads: int = 2
    max_len: int = 1024
    """Longest history the model reads (older events are dropped at serving)."""
    dropout: float = 0.2
    temperature: float = 0.05
    id_dropout: float = 0.3
    train: GRTrainConfig = SERVING_TRAIN
    eval_users: int = 300
    """Members whose held-out event measures the served path (0: skip)."""

    def model_config(self, n_items: int, n_actions: int, content_dim: int) -> SeqRecConfig:
        return SeqRecConfig(
            kind=self.kind,
            n_items=n_items,
            n_actions=n_actions,
            dim=self.dim,
            blocks=self.blocks,
            heads=self.heads,
            max_len=self.max_len,
            dropout=self.dropout,
            temperature=self.temperature,
            content_dim=content_dim,
            id_dropout=self.id_dropout,
        )


@dataclass
class ServingRanker:
    """A trained served ranker and how it was made."""

    model: SequentialRecommender
    vocab: PostVocab
    info: dict[str, Any] = field(default_factory=dict)


def content_table(vocab: PostVocab, source: ContentSource) -> np.ndarray:
    """``[len(vocab) + 1, dim]`` float32 content rows of the vocabulary (row 0 and posts the
    source lacks: zeros)."""
    emb, found = source.get(vocab.post_ids)
    table = np.zeros((len(vocab) + 1, source.dim), dtype=np.float32)
    table[1:][found] = emb[found]
    return table


def item_table(
    model: SequentialRecommender,
    vocab: PostVocab,
    post_ids: np.ndarray,
    content: ContentSource | None,
) -> torch.Tensor:
    """The item table ``[len(post_ids) + 1, dim]`` of distinct ``post_ids`` (row 0: padding)."""
    dev = model.item_emb.weight.device
    vocab_ids = torch.from_numpy(vocab.lookup(post_ids)).to(dev)
    post_content: torch.Tensor | None = None
    if model.cfg.content_dim is not None:
        if content is None:
            raise ValueError("this ranker reads post content: give it a content source")
        emb, found = content.get(post_ids)
        emb = np.where(found[:, None], emb, 0.0).astype(np.float32)
        post_content = torch.from_numpy(emb).to(dev)
    rows = model.item_vectors(vocab_ids, post_content)
    return torch.cat([torch.zeros_like(rows[:1]), rows])


def serving_ranks(
    model: SequentialRecommender,
    split: LeaveOneOut,
    table: torch.Tensor | None,
    max_len: int,
    *,
    batch_size: int = 32,
    micro_batch: int = 512,
) -> np.ndarray:
    """Ranks of the held-out targets under the **served path**: every item of the catalogue is
    a candidate token scored by ``score_candidates_batch`` at the target's timestamp; history
    items are filtered, as in the protocol (:func:`~feedserve.models.gr_eval.ranks_from_scores`)."""
    items, actions, ts = history_arrays(split, max_len)
    dev = model.item_emb.weight.device
    every = torch.arange(1, split.n_items + 1, device=dev)
    out: list[np.ndarray] = []
    with torch.inference_mode():
        for lo in range(0, split.n_users, batch_size):
            hi = min(lo + batch_size, split.n_users)
            rows = (items[lo:hi], actions[lo:hi], ts[lo:hi], split.target_timestamps[lo:hi])
            h_items, h_actions, h_ts, rt = (torch.from_numpy(a).to(dev) for a in rows)
            scores = model.score_candidates_batch(
                h_items, h_actions, h_ts, every.expand(hi - lo, -1), rt, micro_batch, table
            )
            full = np.concatenate([np.zeros((hi - lo, 1)), scores.float().cpu().numpy()], axis=1)
            out.append(ranks_from_scores(full, split.targets[lo:hi], items[lo:hi]))
    return np.concatenate(out) if out else np.zeros(0)


def train_serving_ranker(
    seqs: SequenceData,
    content: ContentSource,
    cfg: ServingRankerConfig,
    *,
    progress: bool = False,
) -> tuple[ServingRanker, GRTrainReport]:
    """Train the served ranker on ``seqs`` (raw item ids = post ids) with post content from
    ``content``; each member's last event is held out and measures the served path."""
    vocab = PostVocab(seqs.item_ids)
    if not np.array_equal(vocab.post_ids, seqs.item_ids[1:]):
        raise ValueError("sequence item ids must be ascending post ids")
    split = leave_one_out(seqs)
    if split.n_users == 0:
        raise ValueError("no member has two or more engagements: nothing to train the ranker on")
    train = cfg.train
    torch.manual_seed(train.seed)
    model = SequentialRecommender(cfg.model_config(len(vocab), seqs.n_actions, content.dim))
    report = train_seqrec(
        model,
        split,
        train,
        item_content=content_table(vocab, content),
        progress=progress,
    )
    model.eval()
    info: dict[str, Any] = {
        "format": FORMAT,
        "data": seqs.name,
        "sequences": seqs.describe(),
        "config": asdict(cfg),
        "epochs": report.epochs,
        "epoch_losses": [round(x, 5) for x in report.epoch_losses],
        "train_seconds": round(report.seconds, 1),
        "trained_at": int(time.time()),
    }
    if cfg.eval_users > 0:
        started = time.perf_counter()
        rows = np.random.default_rng(train.seed).permutation(split.n_users)[: cfg.eval_users]
        sample = split.subset(np.sort(rows))
        table = item_table(model, vocab, vocab.post_ids, content)
        info["eval"] = {
            "protocol": "leave-one-out, full ranking over every post, history filtered",
            "users": sample.n_users,
            "popularity": rank_metrics(popularity_ranks(sample, train.max_len)),
            cfg.kind: rank_metrics(serving_ranks(model, sample, table, train.max_len)),
            "seconds": round(time.perf_counter() - started, 1),
        }
    return ServingRanker(model, vocab, info), report


def save_serving_ranker(path: Path, ranker: ServingRanker) -> None:
    """Write the export directory (see the module docstring)."""
    save_seqrec(path, ranker.model)
    np.save(path / VOCAB_FILE, ranker.vocab.post_ids)
    (path / TRAINING_FILE).write_text(json.dumps(ranker.info, indent=2) + "\n")


def load_serving_ranker(path: Path, map_location: str = "cpu") -> ServingRanker:
    """Read an export directory written by :func:`save_serving_ranker`."""
    if not (path / VOCAB_FILE).is_file():
        raise FileNotFoundError(f"{path / VOCAB_FILE} is missing: run `feedserve build` first")
    model = load_seqrec(path, map_location)
    vocab = PostVocab(np.load(path / VOCAB_FILE))
    if len(vocab) != model.cfg.n_items:
        raise ValueError(f"{path}: {len(vocab)} post ids for a model of {model.cfg.n_items} items")
    info_path = path / TRAINING_FILE
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    return ServingRanker(model, vocab, info)


@dataclass(frozen=True)
class RankRequest:
    """One member's ranking request: history (oldest first; post id 0 = padding, dropped),
    candidates and the request time (unix seconds)."""

    post_ids: np.ndarray
    actions: np.ndarray
    timestamps: np.ndarray
    candidates: np.ndarray
    request_time: int


class GenerativeRankerService:
    """Scores batches of :class:`RankRequest` with the shared-prefix path."""

    def __init__(
        self,
        model_dir: Path,
        content: ContentSource | None,
        device: str = "cpu",
        micro_batch: int = 256,
    ) -> None:
        ranker = load_serving_ranker(model_dir, device)
        self.model, self.vocab, self.info = ranker.model, ranker.vocab, ranker.info
        self.content = content
        self.micro_batch = micro_batch
        want = self.model.cfg.content_dim
        if want is not None and (content is None or content.dim != want):
            have = None if content is None else content.dim
            raise ValueError(
                f"the ranker reads {want}-dim post content, the post table has {have}: "
                "rebuild the artifacts"
            )

    @property
    def n_actions(self) -> int:
        """Valid history action ids are ``0..n_actions - 1``."""
        return self.model.cfg.n_actions

    @torch.inference_mode()
    def score(self, batch: list[RankRequest]) -> list[np.ndarray]:
        if not batch:
            return []
        max_len = self.model.cfg.max_len
        hist: list[list[np.ndarray]] = []
        for r in batch:  # drop padding, keep the most recent max_len events
            keep = np.asarray(r.post_ids).reshape(-1) != 0
            cols = (r.post_ids, r.actions, r.timestamps)
            hist.append([np.asarray(a, dtype=np.int64).reshape(-1)[keep][-max_len:] for a in cols])
        cands = [np.asarray(r.candidates, dtype=np.int64).reshape(-1) for r in batch]
        width_k = max(len(c) for c in cands)
        if width_k == 0:
            return [np.zeros(0, dtype=np.float32) for _ in batch]
        # one item table row per distinct post of the batch; tensors index its rows
        posts = np.unique(np.concatenate([h[0] for h in hist] + cands))
        posts = posts[posts != 0]
        table = item_table(self.model, self.vocab, posts, self.content)
        b, width_l = len(batch), max(1, max(len(h[0]) for h in hist))
        arrays = [np.zeros((b, width_l), dtype=np.int64) for _ in range(3)]
        cand = np.zeros((b, width_k), dtype=np.int64)
        for i, (h, c) in enumerate(zip(hist, cands, strict=True)):
            n = len(h[0])
            if n:  # left-padded: the newest event in the last column
                arrays[0][i, -n:] = np.searchsorted(posts, h[0]) + 1
                arrays[1][i, -n:] = h[1]
                arrays[2][i, -n:] = h[2]
            cand[i, : len(c)] = np.where(c != 0, np.searchsorted(posts, c) + 1, 0)
        dev = self.model.item_emb.weight.device
        items, actions, ts = (torch.from_numpy(a).to(dev) for a in arrays)
        rt = torch.tensor([r.request_time for r in batch], dtype=torch.int64, device=dev)
        scores = self.model.score_candidates_batch(
            items, actions, ts, torch.from_numpy(cand).to(dev), rt, self.micro_batch, table
        )
        out = scores.float().cpu().numpy()
        return [out[i, : len(c)].astype(np.float32) for i, c in enumerate(cands)]
