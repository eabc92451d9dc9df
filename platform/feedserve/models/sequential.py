"""Generative sequential recommenders: HSTU and a SASRec baseline behind one interface.

HSTU follows "Actions Speak Louder than Words: Trillion-Parameter Sequential Transducers for
Generative Recommendations" (Zhai et al., ICML'24; reference code meta-recsys/
generative-recommenders, ``research/modeling/sequential/hstu.py``). SASRec follows Kang &
McAuley (ICDM'18) as re-implemented in the same reference (``sasrec.py``): sampled-softmax
training over cosine similarities with a temperature instead of the original BCE loss.

Conventions shared by both kinds:

* A history is three ``[B, L]`` int64 tensors, **left-padded**: ``items`` (item ids
  ``1..n_items``, 0 = padding), ``actions`` (``1..n_actions-1``, 0 = padding) and
  ``timestamps`` (unix seconds). A position is real iff its item id is not 0.
* An event's token is ``item_embedding(item) + action_embedding(action)`` (SASRec adds a learned
  absolute position embedding counted from the right end of the sequence, so left padding does
  not move real events; HSTU uses only relative biases, so it needs no absolute positions).
* The encoder is causal: the output at position ``j`` depends only on events ``<= j``; padded
  keys are masked out, so left padding never changes the outputs of real positions.
* User embeddings (encoder outputs) and item embeddings are L2-normalised; a score is their
  cosine similarity, and the training logits are cosine / ``temperature``.

Serving (target-aware, shared-prefix scoring): a candidate is one extra token appended after
the history, made of the candidate item's embedding, a reserved *candidate* action (row
``n_actions`` of the action table, beyond every caller-visible action id) and the request
time. ``score_candidates`` encodes the history once, keeps every block's keys and values, and
then runs K candidate tokens through the blocks in micro-batches: each attends to the whole
history and to itself, never to another candidate. ``score_candidates_naive`` is the reference
semantics: one full forward pass over ``history + [candidate]`` per candidate.
``candidate_loss`` trains exactly that serving path. ``score_candidates_batch`` does the same
for a batch of members at once (histories left-padded to one width, candidate lists padded with
0), which is what the Triton model runs on a dynamic batch.

Item tables (content-aware items): every method takes an optional ``table`` ``[U + 1, dim]``
of raw item vectors; ``items`` and ``candidates`` then index its rows (row 0 = padding, all
zeros) instead of the learned id table. With ``content_dim`` set, :meth:`item_vectors` builds
such rows as ``id_embedding(vocab_id) + W · content`` — an item unknown at training time
(``vocab_id`` 0, a zero id embedding) is represented by its content alone, so a post
published after training is still scored. Training replaces a fraction ``id_dropout`` of the
ids by 0 so that the content path learns to stand on its own.

HSTU block (per the paper): ``U, V, Q, K = split(SiLU(W · LayerNorm(x)))``;
``A = SiLU(Q Kᵀ + rab_pos + rab_time) / n`` under the causal and padding mask;
``y = x + W_o · Dropout(LayerNorm(A V) ⊙ U)``. The relative attention bias is learned per block
over relative positions ``i - j`` (clamped to ``max_len``) and over log-bucketised time gaps
``|ts_i - ts_j|`` (bucket ``floor(ln(max(gap, 1)) / time_bucket_scale)`` clamped to
``time_buckets``, as the reference's ``RelativeBucketedTimeAndPositionBasedBias``). Two
deliberate differences from the reference: the attention normaliser ``n`` is the constant
``max_len`` (the reference divides by its padded length, which is also a constant there) so
that it does not depend on how far a batch is padded; and the query time of an event is its own
timestamp (the reference uses the *next* event's timestamp), so that a candidate token carries
the request time and history tokens carry only what was known when they happened.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
LN_EPS = 1e-6


class SeqRecConfig(BaseModel):
    """Hyper-parameters of a :class:`SequentialRecommender` (both kinds)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["hstu", "sasrec"] = "hstu"
    n_items: int = Field(ge=1, description="real item ids are 1..n_items; 0 is padding")
    n_actions: int = Field(
        8,
        ge=1,
        description="action ids: 0 = padding, 1..n_actions-1 real; id n_actions is reserved "
        "internally for candidate tokens",
    )
    dim: int = Field(50, ge=1, description="embedding and residual width")
    blocks: int = Field(2, ge=1, description="number of HSTU / transformer blocks")
    heads: int = Field(1, ge=1, description="attention heads")
    max_len: int = Field(
        200,
        ge=2,
        le=1 << 16,
        description="longest history the position tables cover (relative distances and "
        "SASRec positions beyond it share the last entry); also HSTU's attention normaliser",
    )
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="embedding/block dropout")
    temperature: float = Field(0.05, gt=0.0, description="softmax temperature on cosines")
    head_dim: int | None = Field(
        None,
        ge=1,
        description="per-head width of Q/K/V (HSTU: also of U); default dim // heads",
    )
    ffn_dim: int | None = Field(None, ge=1, description="SASRec feed-forward width; default dim")
    time_buckets: int = Field(
        128, ge=1, description="HSTU: number of log time-gap buckets (plus one overflow)"
    )
    time_bucket_scale: float = Field(
        0.301,
        gt=0.0,
        description="HSTU: bucket = floor(ln(max(|gap seconds|, 1)) / time_bucket_scale)",
    )
    content_dim: int | None = Field(
        None,
        ge=1,
        description="width of item content vectors (e.g. post text embeddings); when set, "
        "item vectors are id embedding + a linear projection of the content (item_vectors)",
    )
    id_dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="training: fraction of item ids dropped to 0 so items are represented by "
        "content alone (needs content_dim)",
    )

    @model_validator(mode="after")
    def _check_heads(self) -> SeqRecConfig:
        if self.head_dim is None and self.dim % self.heads != 0:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}; set head_dim")
        if self.id_dropout > 0 and self.content_dim is None:
            raise ValueError("id_dropout needs content_dim: without content a dropped id is empty")
        return self

    @property
    def qkv_dim(self) -> int:
        """Per-head width of queries, keys and values."""
        return self.head_dim if self.head_dim is not None else self.dim // self.heads

    @property
    def candidate_action(self) -> int:
        """The reserved action id of candidate tokens."""
        return self.n_actions


@dataclass
class _Prefix:
    """A history encoded once: every block's keys and values and what the masks need."""

    keys: list[Tensor]  # per block [B, L, H, d]
    values: list[Tensor]  # per block [B, L, H, d]
    valid: Tensor  # [B, L] bool
    timestamps: Tensor  # [B, L] int64
    length: int  # L


def _as_batch(x: Tensor) -> Tensor:
    """``[L]`` -> ``[1, L]``; ``[B, L]`` unchanged."""
    if x.dim() == 1:
        return x.unsqueeze(0)
    if x.dim() != 2:
        raise ValueError(f"expected a [L] or [B, L] tensor, got shape {tuple(x.shape)}")
    return x


class _HSTUBlock(nn.Module):
    """One HSTU layer with its own relative position/time attention bias."""

    def __init__(self, cfg: SeqRecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h, d = cfg.heads, cfg.qkv_dim
        self.uvqk = nn.Linear(cfg.dim, 4 * h * d, bias=False)
        self.out = nn.Linear(h * d, cfg.dim)
        self.pos_w = nn.Parameter(torch.empty(cfg.max_len + 1).normal_(0.0, 0.02))
        self.ts_w = nn.Parameter(torch.empty(cfg.time_buckets + 1).normal_(0.0, 0.02))
        self.drop = nn.Dropout(cfg.dropout)
        nn.init.normal_(self.uvqk.weight, 0.0, 0.02)
        nn.init.xavier_uniform_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def _uvqk(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``[..., dim]`` -> U, V, Q, K, each ``[..., H, d]``."""
        h, d = self.cfg.heads, self.cfg.qkv_dim
        z = F.silu(self.uvqk(F.layer_norm(x, (self.cfg.dim,), eps=LN_EPS)))
        u, v, q, k = z.view(*x.shape[:-1], 4, h, d).unbind(-3)
        return u, v, q, k

    def keys_values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Only this block's keys and values of ``x`` (each ``[..., H, d]``)."""
        _, v, _, k = self._uvqk(x)
        return k, v

    def _finish(self, x: Tensor, attn: Tensor, u: Tensor) -> Tensor:
        """Residual output from the aggregated values ``attn`` and gates ``u`` (``[..., H, d]``)."""
        hd = self.cfg.heads * self.cfg.qkv_dim
        a = F.layer_norm(attn.reshape(*attn.shape[:-2], hd), (hd,), eps=LN_EPS)
        return x + self.out(self.drop(a * u.reshape(*u.shape[:-2], hd)))

    def forward(
        self, x: Tensor, weight_mask: Tensor, dist: Tensor, ts_bucket: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Full causal pass. ``x`` [B, T, D]; ``weight_mask`` [B, T, T] float (allowed / n);
        ``dist`` [T, T] and ``ts_bucket`` [B, T, T] int64 bias indices. Returns the new states
        and this block's keys and values ([B, T, H, d]) for prefix caching."""
        u, v, q, k = self._uvqk(x)
        scores = torch.matmul(q.transpose(1, 2), k.permute(0, 2, 3, 1))  # [B, H, T, T]
        bias = self.pos_w[dist].unsqueeze(0) + self.ts_w[ts_bucket]  # [B, T, T]
        weights = F.silu(scores + bias.unsqueeze(1)) * weight_mask.unsqueeze(1)
        attn = torch.matmul(weights, v.transpose(1, 2)).transpose(1, 2)  # [B, T, H, d]
        return self._finish(x, attn, u), k, v

    def forward_candidates(
        self,
        c: Tensor,
        keys: Tensor,
        values: Tensor,
        hist_weight_mask: Tensor,
        hist_dist: Tensor,
        hist_bucket: Tensor,
    ) -> Tensor:
        """Candidate tokens ``c`` [B, C, D] against a cached history (``keys``/``values``
        [B, L, H, d]); ``hist_weight_mask`` [B, L] (valid / n), ``hist_dist`` [L] and
        ``hist_bucket`` [B, L] index the bias of a candidate (at position L) on each key.
        Each candidate also attends to itself (distance 0, time gap 0) and to nothing else."""
        n = float(self.cfg.max_len)
        u, v, q, k = self._uvqk(c)  # [B, C, H, d]
        bias = self.pos_w[hist_dist].unsqueeze(0) + self.ts_w[hist_bucket]  # [B, L]
        scores = torch.matmul(q.transpose(1, 2), keys.permute(0, 2, 3, 1))  # [B, H, C, L]
        weights = F.silu(scores + bias[:, None, None, :]) * hist_weight_mask[:, None, None, :]
        attn = torch.matmul(weights, values.transpose(1, 2)).transpose(1, 2)  # [B, C, H, d]
        self_bias = self.pos_w[0] + self.ts_w[0]
        self_w = F.silu((q * k).sum(-1) + self_bias) / n  # [B, C, H]
        return self._finish(c, attn + self_w.unsqueeze(-1) * v, u)


class _SASRecBlock(nn.Module):
    """One SASRec layer as in the reference: ``Q = LN(x)``; ``h = LN(Q + MHA(Q, x, x))``;
    ``y = h + FFN(h)`` (two position-wise linears with ReLU and dropout)."""

    def __init__(self, cfg: SeqRecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        hd = cfg.heads * cfg.qkv_dim
        self.ln_q = nn.LayerNorm(cfg.dim, eps=LN_EPS)
        self.ln_h = nn.LayerNorm(cfg.dim, eps=LN_EPS)
        self.q = nn.Linear(cfg.dim, hd)
        self.k = nn.Linear(cfg.dim, hd)
        self.v = nn.Linear(cfg.dim, hd)
        self.o = nn.Linear(hd, cfg.dim)
        ffn = cfg.ffn_dim if cfg.ffn_dim is not None else cfg.dim
        self.ffn = nn.Sequential(
            nn.Linear(cfg.dim, ffn),
            nn.ReLU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(ffn, cfg.dim),
            nn.Dropout(cfg.dropout),
        )
        for lin in (self.q, self.k, self.v, self.o):
            nn.init.xavier_normal_(lin.weight)
            nn.init.zeros_(lin.bias)

    def _heads(self, x: Tensor) -> Tensor:
        return x.view(*x.shape[:-1], self.cfg.heads, self.cfg.qkv_dim)

    def keys_values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Only this block's keys and values of ``x`` (each ``[..., H, d]``)."""
        return self._heads(self.k(x)), self._heads(self.v(x))

    def _finish(self, qn: Tensor, attn: Tensor) -> Tensor:
        h = self.ln_h(qn + self.o(attn.reshape(*attn.shape[:-2], -1)))
        return h + self.ffn(h)

    def forward(self, x: Tensor, allowed: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Full causal pass; ``allowed`` [B, T, T] bool. Returns states, keys, values."""
        qn = self.ln_q(x)
        q, k, v = self._heads(self.q(qn)), self._heads(self.k(x)), self._heads(self.v(x))
        attn = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            attn_mask=allowed.unsqueeze(1),
            dropout_p=self.cfg.dropout if self.training else 0.0,
        ).transpose(1, 2)
        return self._finish(qn, attn), k, v

    def forward_candidates(
        self, c: Tensor, keys: Tensor, values: Tensor, hist_valid: Tensor
    ) -> Tensor:
        """Candidates [B, C, D] against cached history keys/values [B, L, H, d]: a softmax over
        the valid history keys plus the candidate's own key."""
        qn = self.ln_q(c)
        q, k, v = self._heads(self.q(qn)), self._heads(self.k(c)), self._heads(self.v(c))
        scale = 1.0 / math.sqrt(self.cfg.qkv_dim)
        hist = torch.matmul(q.transpose(1, 2), keys.permute(0, 2, 3, 1)) * scale  # [B,H,C,L]
        hist = hist.masked_fill(~hist_valid[:, None, None, :], float("-inf"))
        own = ((q * k).sum(-1) * scale).transpose(1, 2).unsqueeze(-1)  # [B, H, C, 1]
        probs = torch.softmax(torch.cat([hist, own], dim=-1), dim=-1)
        if self.training and self.cfg.dropout > 0:
            probs = F.dropout(probs, self.cfg.dropout)
        attn = torch.matmul(probs[..., :-1], values.transpose(1, 2))  # [B, H, C, d]
        attn = attn + probs[..., -1:] * v.transpose(1, 2)
        return self._finish(qn, attn.transpose(1, 2))


class SequentialRecommender(nn.Module):
    """HSTU or SASRec over left-padded (item, action, timestamp) histories; see the module
    docstring for the conventions and the shared-prefix serving path."""

    def __init__(self, cfg: SeqRecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        std = cfg.dim**-0.5
        self.item_emb = nn.Embedding(cfg.n_items + 1, cfg.dim, padding_idx=0)
        self.action_emb = nn.Embedding(cfg.n_actions + 1, cfg.dim, padding_idx=0)
        nn.init.normal_(self.item_emb.weight, 0.0, std)
        nn.init.normal_(self.action_emb.weight, 0.0, std)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
            self.action_emb.weight[0].zero_()
        self.pos_emb: nn.Embedding | None = None
        if cfg.kind == "sasrec":  # absolute positions, 0 = the newest token
            self.pos_emb = nn.Embedding(cfg.max_len + 1, cfg.dim)
            nn.init.normal_(self.pos_emb.weight, 0.0, std)
        self.content_proj: nn.Linear | None = None
        if cfg.content_dim is not None:
            self.content_proj = nn.Linear(cfg.content_dim, cfg.dim, bias=False)
            nn.init.normal_(self.content_proj.weight, 0.0, cfg.content_dim**-0.5)
        self.emb_drop = nn.Dropout(cfg.dropout)
        block = _HSTUBlock if cfg.kind == "hstu" else _SASRecBlock
        self.layers = nn.ModuleList([block(cfg) for _ in range(cfg.blocks)])

    # ------------------------------------------------------------------ building blocks

    def _embed(self, items: Tensor, table: Tensor | None) -> Tensor:
        """Raw item vectors: rows of ``table`` when given, else of the id embedding."""
        return self.item_emb(items) if table is None else F.embedding(items, table)

    def _tokens(
        self, items: Tensor, actions: Tensor, positions: Tensor | None, table: Tensor | None
    ) -> Tensor:
        """Token embeddings ``[..., D]``; ``positions`` (SASRec only) count from the right."""
        x = self._embed(items, table) + self.action_emb(actions)
        if self.pos_emb is not None:
            assert positions is not None
            x = x + self.pos_emb(positions.clamp(max=self.cfg.max_len))
        return self.emb_drop(x)

    def _buckets(self, gaps: Tensor) -> Tensor:
        """Log-bucketised absolute time gaps (seconds, int64) -> bucket ids in 0..time_buckets."""
        g = gaps.abs().to(torch.float32).clamp_(min=1.0).log_()  # >= 0
        g = g.div_(self.cfg.time_bucket_scale).clamp_(max=float(self.cfg.time_buckets))
        return g.to(torch.int64)

    def _trunk(
        self,
        items: Tensor,
        actions: Tensor,
        timestamps: Tensor,
        valid: Tensor,
        pos_offset: int = 0,
        prefix_only: bool = False,
        table: Tensor | None = None,
    ) -> tuple[Tensor | None, list[Tensor], list[Tensor]]:
        """Causal pass over [B, T] tokens. ``valid`` marks real tokens (padding keys are never
        attended to; a padded query sees only itself, which keeps softmax finite).
        ``pos_offset`` shifts SASRec's right-counted positions (1 when a candidate token will
        follow). Returns final states [B, T, D] and every block's keys and values; with
        ``prefix_only`` the last block computes only its keys and values (all that candidate
        tokens need of a history) and no final states are returned."""
        b, t = items.shape
        dev = items.device
        ar = torch.arange(t, device=dev)
        positions = (t - 1 + pos_offset - ar).unsqueeze(0).expand(b, t)
        x = self._tokens(items, actions, positions, table)
        causal = ar.unsqueeze(1) >= ar.unsqueeze(0)  # [T, T] query i sees key j <= i
        allowed = causal & (valid.unsqueeze(1) | torch.eye(t, dtype=torch.bool, device=dev))
        keys: list[Tensor] = []
        values: list[Tensor] = []
        n_full = len(self.layers) - 1 if prefix_only else len(self.layers)
        if self.cfg.kind == "hstu" and n_full > 0:
            weight_mask = allowed.to(x.dtype) / float(self.cfg.max_len)
            dist = (ar.unsqueeze(1) - ar.unsqueeze(0)).clamp(0, self.cfg.max_len)
            ts_bucket = self._buckets(timestamps.unsqueeze(2) - timestamps.unsqueeze(1))
        for i, layer in enumerate(self.layers):
            assert isinstance(layer, _HSTUBlock | _SASRecBlock)
            if i == n_full:
                k, v = layer.keys_values(x)
            elif isinstance(layer, _HSTUBlock):
                x, k, v = layer(x, weight_mask, dist, ts_bucket)
            else:
                x, k, v = layer(x, allowed)
            keys.append(k)
            values.append(v)
        return (None if prefix_only else x), keys, values

    def _prefix(
        self, items: Tensor, actions: Tensor, timestamps: Tensor, table: Tensor | None = None
    ) -> _Prefix:
        """Encode [B, L] histories once for candidate scoring (an empty history gets one
        padding column, which is masked anyway)."""
        if items.shape[1] == 0:
            items, actions, timestamps = (F.pad(z, (1, 0)) for z in (items, actions, timestamps))
        valid = items != 0
        _, keys, values = self._trunk(
            items, actions, timestamps, valid, pos_offset=1, prefix_only=True, table=table
        )
        return _Prefix(keys, values, valid, timestamps, items.shape[1])

    def _candidates(
        self,
        prefix: _Prefix,
        candidates: Tensor,
        request_time: Tensor,
        table: Tensor | None = None,
    ) -> Tensor:
        """Final L2-normalised outputs [B, C, D] of candidate tokens [B, C] placed right after
        each row's history (position L), at ``request_time`` [B]."""
        b = candidates.shape[0]
        dev = candidates.device
        length = prefix.length
        cand_actions = torch.full_like(candidates, self.cfg.candidate_action)
        positions = torch.zeros_like(candidates)
        x = self._tokens(candidates, cand_actions, positions, table)
        if self.cfg.kind == "hstu":
            hist_weight = prefix.valid.to(x.dtype) / float(self.cfg.max_len)
            hist_dist = (length - torch.arange(length, device=dev)).clamp(max=self.cfg.max_len)
            hist_bucket = self._buckets(request_time.view(b, 1) - prefix.timestamps)
            for i, layer in enumerate(self.layers):
                assert isinstance(layer, _HSTUBlock)
                x = layer.forward_candidates(
                    x, prefix.keys[i], prefix.values[i], hist_weight, hist_dist, hist_bucket
                )
        else:
            for i, layer in enumerate(self.layers):
                assert isinstance(layer, _SASRecBlock)
                x = layer.forward_candidates(x, prefix.keys[i], prefix.values[i], prefix.valid)
        return F.normalize(x, dim=-1)

    # ------------------------------------------------------------------ public interface

    def encode(
        self, items: Tensor, actions: Tensor, timestamps: Tensor, table: Tensor | None = None
    ) -> Tensor:
        """``items``/``actions``/``timestamps``: [B, L] int64, left-padded (item 0 = padding;
        unix seconds). Returns [B, L, dim] L2-normalised user embeddings (zero at padding);
        position j depends only on events <= j, and left padding does not change the
        embeddings of real positions."""
        valid = items != 0
        x, _, _ = self._trunk(items, actions, timestamps, valid, table=table)
        assert x is not None
        return F.normalize(x, dim=-1) * valid.unsqueeze(-1).to(x.dtype)

    def forward(
        self, items: Tensor, actions: Tensor, timestamps: Tensor, table: Tensor | None = None
    ) -> Tensor:
        """Same as :meth:`encode`."""
        return self.encode(items, actions, timestamps, table)

    def item_embeddings(self, ids: Tensor, table: Tensor | None = None) -> Tensor:
        """Item ids ``[...]`` (rows of ``table`` when given) -> L2-normalised item embeddings
        ``[..., dim]``."""
        return F.normalize(self._embed(ids, table), dim=-1)

    def item_vectors(self, vocab_ids: Tensor, content: Tensor | None = None) -> Tensor:
        """Raw item vectors ``[..., dim]`` for an item table: the id embedding of
        ``vocab_ids`` (0 = unknown: no id part) plus, with ``content_dim``, the projection of
        ``content`` ``[..., content_dim]`` (zeros = no content)."""
        x = self.item_emb(vocab_ids)
        if self.content_proj is not None:
            if content is None:
                raise ValueError("this model reads item content: pass content")
            x = x + self.content_proj(content.to(x.dtype))
        elif content is not None:
            raise ValueError("this model has no content path (content_dim is None)")
        return x

    def training_table(self, content: Tensor | None, generator: torch.Generator | None) -> Tensor:
        """The item table of a training step: ``item_vectors`` of ``0..n_items`` over
        ``content`` ``[n_items + 1, content_dim]`` with a fraction ``id_dropout`` of the ids
        dropped (row 0 stays padding)."""
        ids = torch.arange(self.cfg.n_items + 1, device=self.item_emb.weight.device)
        if self.cfg.id_dropout > 0:
            drop = torch.rand(len(ids), generator=generator) < self.cfg.id_dropout
            ids = ids.masked_fill(drop.to(ids.device), 0)
        if content is not None:
            content = content.clone()
            content[0] = 0.0
        return self.item_vectors(ids, content)

    def _sampled_softmax(
        self, users: Tensor, positives: Tensor, negatives: Tensor, table: Tensor | None
    ) -> Tensor:
        """Mean cross-entropy of [M, D] users over [positive, negatives] ([M], [M, N]);
        negatives equal to the positive are masked out."""
        cands = torch.cat([positives.unsqueeze(1), negatives], dim=1)  # [M, 1+N]
        if self.cfg.n_items + 1 <= 2 * cands.shape[1] * self.cfg.dim:
            # same logits, computed against the whole (small) item table and then gathered:
            # far cheaper than gathering [M, 1+N, D] embeddings (and their backward) on CPU
            every = torch.arange(self.cfg.n_items + 1, device=users.device)
            logits = (users @ self.item_embeddings(every, table).T).gather(1, cands)
        else:
            logits = torch.einsum("md,mnd->mn", users, self.item_embeddings(cands, table))
        logits = logits / self.cfg.temperature
        clash = torch.cat(
            [
                torch.zeros_like(positives, dtype=torch.bool).unsqueeze(1),
                negatives == positives[:, None],
            ],
            dim=1,
        )
        logits = logits.masked_fill(clash, float("-inf"))
        target = torch.zeros(len(logits), dtype=torch.int64, device=logits.device)
        return F.cross_entropy(logits, target)

    def next_item_loss(
        self,
        items: Tensor,
        actions: Tensor,
        timestamps: Tensor,
        negatives: Tensor,
        table: Tensor | None = None,
    ) -> Tensor:
        """Sampled-softmax next-item loss. ``negatives`` [B, L, N] item ids (sampled by the
        caller, uniformly over 1..n_items). At every position j < L-1 where ``items[:, j]`` and
        ``items[:, j+1]`` are both real, the positive is ``items[:, j+1]`` and the logits are
        cosine(user_j, item) / temperature over [positive, negatives] (a negative equal to the
        positive is masked out). Mean cross-entropy over those positions (0 if none)."""
        users = self.encode(items, actions, timestamps, table)
        mask = (items[:, :-1] != 0) & (items[:, 1:] != 0)
        if not bool(mask.any()):
            return users.sum() * 0.0
        return self._sampled_softmax(
            users[:, :-1][mask], items[:, 1:][mask], negatives[:, :-1][mask], table
        )

    def candidate_loss(
        self,
        items: Tensor,
        actions: Tensor,
        timestamps: Tensor,
        negatives: Tensor,
        table: Tensor | None = None,
    ) -> Tensor:
        """Sampled-softmax loss of the serving path. For each row of the left-padded [B, L]
        batch the last real item (column L-1) is the positive candidate, scored at its own
        timestamp against the history before it (columns 0..L-2) together with ``negatives``
        [B, N], exactly as ``score_candidates`` would; rows without a real last item are
        skipped. Mean cross-entropy over rows (0 if none)."""
        rows = items[:, -1] != 0
        if not bool(rows.any()):
            return self.item_emb.weight.sum() * 0.0
        items, actions, timestamps, negatives = (
            z[rows] for z in (items, actions, timestamps, negatives)
        )
        prefix = self._prefix(items[:, :-1], actions[:, :-1], timestamps[:, :-1], table)
        positives = items[:, -1]
        cands = torch.cat([positives.unsqueeze(1), negatives], dim=1)
        out = self._candidates(prefix, cands, timestamps[:, -1], table)  # [B, 1+N, D]
        logits = (out * self.item_embeddings(cands, table)).sum(-1) / self.cfg.temperature
        clash = cands == positives[:, None]
        clash[:, 0] = False
        logits = logits.masked_fill(clash, float("-inf"))
        target = torch.zeros(len(logits), dtype=torch.int64, device=logits.device)
        return F.cross_entropy(logits, target)

    @staticmethod
    def _request_time(request_time: int | Tensor, like: Tensor) -> Tensor:
        return torch.as_tensor(request_time, dtype=torch.int64, device=like.device).reshape(1)

    def score_candidates(
        self,
        items: Tensor,
        actions: Tensor,
        timestamps: Tensor,
        candidates: Tensor,
        request_time: int | Tensor,
        micro_batch: int = 256,
        table: Tensor | None = None,
    ) -> Tensor:
        """Shared-prefix scoring of one member's history (``[L]`` or ``[1, L]``, left-padded)
        against ``candidates`` [K] item ids at ``request_time`` (unix seconds) -> [K] cosine
        scores (logits are these / temperature). The history is encoded once, keeping every
        block's keys and values; the candidate tokens then run through the blocks in
        micro-batches of ``micro_batch``, each attending to the history and to itself only."""
        items, actions, timestamps = (_as_batch(z) for z in (items, actions, timestamps))
        if items.shape[0] != 1:
            raise ValueError("score_candidates takes one member's history")
        rt = self._request_time(request_time, items)
        cands = candidates.reshape(1, -1)
        return self.score_candidates_batch(
            items, actions, timestamps, cands, rt, micro_batch, table
        ).squeeze(0)

    def score_candidates_batch(
        self,
        items: Tensor,
        actions: Tensor,
        timestamps: Tensor,
        candidates: Tensor,
        request_time: Tensor,
        micro_batch: int = 256,
        table: Tensor | None = None,
    ) -> Tensor:
        """:meth:`score_candidates` for B members at once: histories ``[B, L]`` (left-padded
        to one width), ``candidates`` ``[B, K]`` (pad short lists with 0; their scores are
        meaningless), ``request_time`` ``[B]`` -> ``[B, K]`` scores. Each row's scores equal
        that member scored alone: padding is masked and positions count from the right."""
        if micro_batch < 1:
            raise ValueError("micro_batch must be >= 1")
        if candidates.dim() != 2 or candidates.shape[0] != items.shape[0]:
            raise ValueError("candidates must be [B, K] with one row per history")
        rt = request_time.reshape(-1).to(device=items.device, dtype=torch.int64)
        if rt.shape[0] != items.shape[0]:
            raise ValueError("request_time must hold one value per history")
        prefix = self._prefix(items, actions, timestamps, table)
        scores: list[Tensor] = []
        for start in range(0, candidates.shape[1], micro_batch):
            chunk = candidates[:, start : start + micro_batch]  # [B, C]
            out = self._candidates(prefix, chunk, rt, table)
            scores.append((out * self.item_embeddings(chunk, table)).sum(-1))
        if not scores:
            return torch.zeros(candidates.shape, device=items.device)
        return torch.cat(scores, dim=1)

    def score_candidates_naive(
        self,
        items: Tensor,
        actions: Tensor,
        timestamps: Tensor,
        candidates: Tensor,
        request_time: int | Tensor,
        batch_size: int = 1,
        table: Tensor | None = None,
    ) -> Tensor:
        """Reference semantics of :meth:`score_candidates`: for each candidate, a full forward
        pass over ``history + [candidate token]``; the score is the cosine of the candidate
        position's output with the candidate item. ``batch_size`` candidates' sequences are
        stacked into one batch (the result does not depend on it)."""
        items, actions, timestamps = (_as_batch(z) for z in (items, actions, timestamps))
        if items.shape[0] != 1:
            raise ValueError("score_candidates_naive takes one member's history")
        candidates = candidates.reshape(-1)
        rt = self._request_time(request_time, items)
        scores: list[Tensor] = []
        for start in range(0, len(candidates), max(batch_size, 1)):
            chunk = candidates[start : start + batch_size]
            k = len(chunk)
            seq_items = torch.cat([items.expand(k, -1), chunk.unsqueeze(1)], dim=1)
            cand_action = torch.full_like(chunk, self.cfg.candidate_action).unsqueeze(1)
            seq_actions = torch.cat([actions.expand(k, -1), cand_action], dim=1)
            seq_ts = torch.cat([timestamps.expand(k, -1), rt.expand(k, 1)], dim=1)
            valid = torch.cat(
                [items.expand(k, -1) != 0, torch.ones_like(chunk, dtype=torch.bool)[:, None]],
                dim=1,
            )
            x, _, _ = self._trunk(seq_items, seq_actions, seq_ts, valid, table=table)
            assert x is not None
            out = F.normalize(x[:, -1], dim=-1)
            scores.append((out * self.item_embeddings(chunk, table)).sum(-1))
        if not scores:
            return torch.zeros(0, device=items.device)
        return torch.cat(scores)


def save_seqrec(path: Path, model: SequentialRecommender) -> None:
    """Write ``model`` to the directory ``path`` (created): ``config.json`` and
    ``model.safetensors``."""
    path.mkdir(parents=True, exist_ok=True)
    meta = {"format": "feedserve.seqrec/1", "config": model.cfg.model_dump()}
    (path / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path / WEIGHTS_FILE))


def load_seqrec(path: Path, map_location: str = "cpu") -> SequentialRecommender:
    """Load a model written by :func:`save_seqrec` (in eval mode, on ``map_location``)."""
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} is missing")
    meta = json.loads(config_path.read_text())
    cfg = SeqRecConfig.model_validate(meta["config"])
    model = SequentialRecommender(cfg)
    model.load_state_dict(load_file(str(path / WEIGHTS_FILE), device=map_location))
    model.to(map_location)
    model.eval()
    return model
