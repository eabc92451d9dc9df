"""A small sequential ranker: a causal transformer over the member's engagement history.

Deliberately small (the HSTU-style generative recommender is issue 5). What it already has:
items are represented by a learned id embedding **plus** a projection of the post's text
embedding, so a post published after training (unknown id) is still scored from its content;
the history is encoded once and every candidate is scored against that one user vector
(shared-prefix scoring); training is next-engagement prediction with a full softmax.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn
from tqdm import tqdm

from feedserve.models.post_table import PostEmbeddingTable
from feedserve_featurizers.tensors import TIME_BUCKETS, history_tensors

PAD, OOV = 0, 1
N_ACTIONS = 7  # 0 = padding, then Action codes 1..6


class RankerConfig(BaseModel):
    dim: int = 64
    layers: int = 2
    heads: int = 2
    max_len: int = 128
    content_dim: int = 384
    dropout: float = 0.1
    temperature: float = 0.05
    id_dropout: float = 0.5


class SequenceRanker(nn.Module):
    def __init__(self, cfg: RankerConfig, n_items: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.item_id = nn.Embedding(n_items + 2, cfg.dim, padding_idx=PAD)
        self.content = nn.Linear(cfg.content_dim, cfg.dim)
        self.action = nn.Embedding(N_ACTIONS, cfg.dim, padding_idx=0)
        self.time = nn.Embedding(TIME_BUCKETS, cfg.dim)
        self.pos = nn.Embedding(cfg.max_len + 1, cfg.dim)
        self.bos = nn.Parameter(torch.zeros(cfg.dim))
        layer = nn.TransformerEncoderLayer(
            cfg.dim, cfg.heads, 4 * cfg.dim, cfg.dropout, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)
        nn.init.normal_(self.item_id.weight, std=0.02)
        nn.init.orthogonal_(self.content.weight)  # a near-isometric start for text similarity

    def item_repr(self, vocab_idx: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
        return self.item_id(vocab_idx) + self.content(content)

    def encode(
        self,
        vocab_idx: torch.Tensor,  # [B, L] (0 = padding)
        content: torch.Tensor,  # [B, L, content_dim]
        actions: torch.Tensor,  # [B, L]
        times: torch.Tensor,  # [B, L]
    ) -> torch.Tensor:
        """Hidden states [B, L, dim]; position j has seen events ≤ j (causal)."""
        b, length = vocab_idx.shape
        x = self.item_repr(vocab_idx, content) + self.action(actions) + self.time(times)
        # positions count from the right end (the newest event is always at max_len, as in
        # training), so left padding (e.g. to a longer batch neighbour) does not move events
        first = self.cfg.max_len - length + 1
        x = x + self.pos(torch.arange(first, first + length, device=x.device))
        # a BOS column on the left keeps every row attendable when the history is empty
        x = torch.cat([self.bos.expand(b, 1, -1), x], dim=1)
        pad = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=x.device), actions == 0], dim=1)
        causal = torch.triu(
            torch.ones(length + 1, length + 1, dtype=torch.bool, device=x.device), diagonal=1
        )
        h = self.norm(self.blocks(x, mask=causal, src_key_padding_mask=pad)[:, 1:])
        # content skip: the running mean of the history's item representations, so the user
        # vector starts from "more of what I engaged with" and the transformer refines it
        items = self.item_repr(vocab_idx, content) * (actions > 0).unsqueeze(-1)
        seen = (actions > 0).cumsum(dim=1).clamp(min=1).unsqueeze(-1)
        return h + items.cumsum(dim=1) / seen

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Cosine(user, item) / temperature; users [..., dim], items [..., K, dim]."""
        u = nn.functional.normalize(users, dim=-1).unsqueeze(-2)
        v = nn.functional.normalize(items, dim=-1)
        return (u * v).sum(-1) / self.cfg.temperature


@dataclass
class TrainingData:
    """Per-member training sequences already featurized to length max_len + 1."""

    post_ids: np.ndarray  # [N, L+1]
    actions: np.ndarray
    times: np.ndarray


def build_training_data(
    histories: list[np.ndarray], max_len: int, min_events: int = 2
) -> TrainingData:
    rows = [history_tensors(h, max_len + 1) for h in histories]
    rows = [r for r in rows if (r["history_post_ids"] > 0).sum() >= min_events]
    if not rows:
        raise ValueError("no member has enough engagements to train the ranker")
    return TrainingData(
        post_ids=np.stack([r["history_post_ids"] for r in rows]),
        actions=np.stack([r["history_actions"] for r in rows]),
        times=np.stack([r["history_time_buckets"] for r in rows]),
    )


class Vocab:
    """Maps post ids to embedding rows: 0 padding, 1 unknown, 2.. known posts."""

    def __init__(self, post_ids: np.ndarray) -> None:
        self.post_ids = np.unique(np.asarray(post_ids, dtype=np.int64))
        self.post_ids = self.post_ids[self.post_ids > 0]

    def __len__(self) -> int:
        return len(self.post_ids)

    def lookup(self, post_ids: np.ndarray) -> np.ndarray:
        post_ids = np.asarray(post_ids, dtype=np.int64)
        out = np.full(post_ids.shape, OOV, dtype=np.int64)
        if len(self.post_ids):
            pos = np.minimum(np.searchsorted(self.post_ids, post_ids), len(self.post_ids) - 1)
            hit = self.post_ids[pos] == post_ids
            out[hit] = pos[hit] + 2
        out[post_ids == 0] = PAD
        return out


def train_ranker(
    data: TrainingData,
    catalogue_ids: np.ndarray,
    catalogue_content: np.ndarray,
    cfg: RankerConfig,
    *,
    epochs: int = 8,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    progress: bool = True,
) -> tuple[SequenceRanker, Vocab, list[float]]:
    """Next-engagement training with a full softmax over the catalogue. Returns losses."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    vocab = Vocab(catalogue_ids)
    content_of = dict(zip(catalogue_ids.tolist(), range(len(catalogue_ids)), strict=True))
    cat_content = torch.from_numpy(
        np.asarray(catalogue_content, dtype=np.float32)[
            [content_of[int(p)] for p in vocab.post_ids]
        ]
    )
    model = SequenceRanker(cfg, len(vocab))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    vidx_all = vocab.lookup(data.post_ids)
    # content rows per sequence position (0-vector for padding / unknown)
    content_rows = np.zeros(data.post_ids.shape, dtype=np.int64)
    content_rows[vidx_all >= 2] = vidx_all[vidx_all >= 2] - 2
    n = len(data.post_ids)
    steps = epochs * math.ceil(n / batch_size)
    losses: list[float] = []
    bar = tqdm(total=steps, desc="train ranker", disable=not progress, unit="step")
    model.train()
    for _ in range(epochs):
        order = rng.permutation(n)
        epoch_loss, batches = 0.0, 0
        for start in range(0, n, batch_size):
            rows = order[start : start + batch_size]
            vidx = torch.from_numpy(vidx_all[rows])
            content = cat_content[torch.from_numpy(content_rows[rows])]
            content = content * (vidx >= 2).unsqueeze(-1)
            acts = torch.from_numpy(data.actions[rows])
            times = torch.from_numpy(data.times[rows])
            inp = vidx[:, :-1].clone()
            drop = (torch.rand(inp.shape) < cfg.id_dropout) & (inp >= 2)
            inp[drop] = OOV
            hidden = model.encode(inp, content[:, :-1], acts[:, :-1], times[:, :-1])
            target = vidx[:, 1:]
            valid = target >= 2  # incl. the padding slot just before a member's first event
            if not valid.any():
                continue
            cat_idx = torch.arange(2, len(vocab) + 2)
            cat_drop = torch.rand(len(vocab)) < cfg.id_dropout
            cat_idx = torch.where(cat_drop, torch.full_like(cat_idx, OOV), cat_idx)
            items = model.item_repr(cat_idx, cat_content)  # [V, dim]
            users = nn.functional.normalize(hidden[valid], dim=-1)
            logits = users @ nn.functional.normalize(items, dim=-1).T / cfg.temperature
            loss = nn.functional.cross_entropy(logits, target[valid] - 2)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            epoch_loss += loss.item()
            batches += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        losses.append(epoch_loss / max(batches, 1))
    bar.close()
    model.eval()
    return model, vocab, losses


def save_ranker(out_dir: Path, model: SequenceRanker, vocab: Vocab) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out_dir / "model.pt")
    np.save(out_dir / "vocab.npy", vocab.post_ids)
    meta = {"config": model.cfg.model_dump(), "n_items": len(vocab)}
    (out_dir / "config.json").write_text(json.dumps(meta, indent=2))


def load_ranker(model_dir: Path) -> tuple[SequenceRanker, Vocab]:
    path = model_dir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `feedserve build` first")
    meta = json.loads(path.read_text())
    cfg = RankerConfig.model_validate(meta["config"])
    vocab = Vocab(np.load(model_dir / "vocab.npy"))
    model = SequenceRanker(cfg, int(meta["n_items"]))
    model.load_state_dict(torch.load(model_dir / "model.pt", map_location="cpu"))
    model.eval()
    return model, vocab


class RankerService:
    """Scores candidates for a batch of members; content comes from the post table."""

    def __init__(self, model_dir: Path, posts: PostEmbeddingTable, device: str = "cpu") -> None:
        self.model, self.vocab = load_ranker(model_dir)
        self.device = torch.device(device)
        self.model.to(self.device)
        self.posts = posts
        if posts.dim != self.model.cfg.content_dim:
            raise ValueError(
                f"post embeddings have dim {posts.dim}, the ranker expects "
                f"{self.model.cfg.content_dim}: rebuild the artifacts"
            )

    def _content(self, post_ids: np.ndarray) -> torch.Tensor:
        flat = post_ids.reshape(-1)
        emb, _found = self.posts.get(flat)  # unknown / padding → zeros
        return torch.from_numpy(emb.reshape(*post_ids.shape, -1)).to(self.device)

    @torch.inference_mode()
    def score(
        self,
        history_post_ids: np.ndarray,  # [B, L]
        history_actions: np.ndarray,
        history_time_buckets: np.ndarray,
        candidates: list[np.ndarray],  # B arrays of candidate post ids
    ) -> list[np.ndarray]:
        max_len = self.model.cfg.max_len
        hp = np.asarray(history_post_ids, dtype=np.int64)[:, -max_len:]
        ha = np.asarray(history_actions, dtype=np.int64)[:, -max_len:]
        ht = np.clip(np.asarray(history_time_buckets, dtype=np.int64)[:, -max_len:], 0, None)
        ht = np.minimum(ht, TIME_BUCKETS - 1)
        vidx = torch.from_numpy(self.vocab.lookup(hp)).to(self.device)
        hidden = self.model.encode(
            vidx,
            self._content(hp),
            torch.from_numpy(ha).to(self.device),
            torch.from_numpy(ht).to(self.device),
        )
        users = hidden[:, -1]  # the history is encoded once per member
        width = max((len(c) for c in candidates), default=0)
        if width == 0:
            return [np.zeros(0, dtype=np.float32) for _ in candidates]
        cand = np.zeros((len(candidates), width), dtype=np.int64)
        for i, c in enumerate(candidates):
            cand[i, : len(c)] = c
        items = self.model.item_repr(
            torch.from_numpy(self.vocab.lookup(cand)).to(self.device), self._content(cand)
        )
        scores = self.model.score(users, items).float().cpu().numpy()
        return [scores[i, : len(c)].astype(np.float32) for i, c in enumerate(candidates)]
