"""Contrastive training and evaluation of the retrieval bi-encoder.

Members and posts are written as prompts by the prompt library and embedded by the *same*
model (:class:`feedserve.models.encoder.TextEncoder`); a member's embedding should score the
posts they engage with above all others. :func:`train_retrieval` fine-tunes an encoder
directory on ``(member prompt, engaged post id)`` pairs:

* **loss**: symmetric InfoNCE. Member → post: each member's positive against every other post
  column in the batch (the other members' positives and every mined hard negative); post →
  member: each positive post against the batch's members. A column that is the member's own
  positive under another name (the same post twice in a batch, or a post listed in the pair's
  ``exclude`` set, e.g. something else the member engaged with) is masked, never a negative.
  Posts are embedded once per batch however often they occur in it.
* **hard negatives**: every ``mine_every`` steps the post corpus (or a random sample of
  ``mine_corpus_sample`` posts, to keep CPU training affordable) is re-embedded with the
  current model; at each step the batch's member embeddings (computed anyway for the loss) are
  scored against it and the top-ranked posts that are not a positive of the member become extra
  negative columns (ANCE-style asynchronous index). ``hard_negatives=0`` turns mining off.
* **temperature**: fixed, or learnable (``temperature=None``: ``log(1/τ)`` is a parameter
  initialised at ``temperature_init`` and clamped to ``[temperature_min, temperature_max]``).
* **freezing**: ``freeze_layers=k`` freezes the embedding stage and the first ``k``
  transformer layers. The bucket special-token rows of the token-embedding matrix stay
  trainable (a gradient mask zeroes every other row and they get no weight decay), so the
  ``<views_p99>``-style tokens still learn what they mean. Member prompts carry no special
  tokens: their frozen prefix runs without autograd, which is what makes CPU training cheap.
* AdamW, linear warm-up then linear decay (or constant), gradient clipping, optional bfloat16
  autocast, a tqdm bar with the loss, checkpoints in ``out_dir/checkpoints/step-N/`` (the last
  ``keep_checkpoints`` kept), deterministic by ``seed`` (torch and numpy).

The output directory has exactly the layout :class:`TextEncoder` loads (weights, tokenizer with
the special tokens, ``feedserve_encoder.json`` with a new fingerprint) plus
``retrieval_train.json`` (config, losses, timings).

:func:`evaluate_retrieval` measures Recall@k, NDCG@10 and MRR with exhaustive search over every
post (:class:`feedserve.models.index.ExhaustiveIndex`). :func:`demo_training_pairs` and
:func:`demo_eval_queries` build pairs and leave-last-out queries from the synthetic network.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import math
import re
import shutil
import sys
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from feedserve.contracts import ENGAGEMENT_ACTIONS, Action, EngagementCounts, Member, Post
from feedserve.data.synthetic import DemoDataset
from feedserve.models.encoder import (
    ENCODER_CONFIG,
    WEIGHT_PATTERNS,
    TextEncoder,
    embed_hidden,
    load_encoder_config,
    pad_batch,
    write_encoder_config,
)
from feedserve.models.index import ExhaustiveIndex
from feedserve.models.tokenizer import PromptTokenizer
from feedserve.prompts import (
    ActivityItem,
    BucketTable,
    TokenCounter,
    render_member_prompt,
    render_post_prompt,
)

__all__ = [
    "TRAIN_REPORT",
    "RetrievalReport",
    "RetrievalTrainConfig",
    "build_post_index",
    "demo_eval_queries",
    "demo_training_pairs",
    "evaluate_retrieval",
    "ranking_metrics",
    "retrieval_ranks",
    "train_retrieval",
]

TRAIN_REPORT = "retrieval_train.json"
CHECKPOINTS = "checkpoints"
PAD_MULTIPLE = 16

Pair = tuple[str, int]
"""(member prompt text, positive post id)."""


@dataclass
class RetrievalTrainConfig:
    """What :func:`train_retrieval` does; every field is recorded in the output directory."""

    epochs: int = 1
    steps: int | None = None
    """Optimizer steps; ``None`` = ``epochs`` passes over the pairs (last partial batch kept)."""
    batch_size: int = 32
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup: float = 0.1
    """Fraction of the steps with a linear learning-rate warm-up."""
    schedule: Literal["linear", "constant"] = "linear"
    """After warm-up: linear decay to 0, or constant."""
    grad_clip: float = 1.0
    temperature: float | None = 0.05
    """Softmax temperature; ``None`` = learnable, starting at ``temperature_init``."""
    temperature_init: float = 0.05
    temperature_min: float = 0.01
    temperature_max: float = 1.0
    temperature_lr: float = 1e-2
    hard_negatives: int = 1
    """Mined negatives per pair (0 = in-batch negatives only)."""
    mine_every: int = 50
    """Steps between two re-embeddings of the mining corpus."""
    mine_corpus_sample: int | None = None
    """Re-embed only this many randomly drawn posts for mining (``None`` = every post)."""
    mine_pool: int = 0
    """Draw the negatives at random from the top ``max(mine_pool, hard_negatives)``
    non-positive posts (0 = take exactly the top ones)."""
    logq_correction: bool = False
    """Subtract ``log q(post)`` (the post's share of the training positives) from the logits of
    the in-batch positive columns (sampled-softmax correction, Yi et al. 2019): in-batch
    negatives are drawn by popularity, and without it the model learns to demote popular
    posts."""
    cold_text_rate: float = 0.0
    """Post-side feature dropout for cold start (as in DropoutNet): this share of the post
    columns of a step are shown with their brand-new text (``cold_post_texts``: zero
    engagement buckets), so that a zero-count bucket does not come to mean "never relevant"
    and new posts stay retrievable by their content."""
    member_tokens: int = 128
    """Member prompts are cut to this many tokens (render them within it)."""
    post_tokens: int = 64
    freeze_layers: int | None = None
    """Freeze the embedding stage and the first ``k`` transformer layers (``None``: train all).
    Special-token rows of the token embeddings always stay trainable."""
    bf16: bool = False
    """bfloat16 autocast for forward and backward (several times faster on CPUs with bf16)."""
    device: str = "cpu"
    seed: int = 0
    checkpoint_every: int = 0
    """Save ``out_dir/checkpoints/step-N/`` every N steps (0 = never)."""
    keep_checkpoints: int = 2
    max_pairs: int | None = None
    """Train on at most this many pairs (a seeded random sample)."""
    time_budget_s: float | None = None
    """Stop early (and say so in the report) once training has run this long."""

    def __post_init__(self) -> None:
        if self.batch_size < 2:
            raise ValueError("batch_size must be >= 2 (in-batch negatives)")
        if self.temperature is not None and self.temperature <= 0:
            raise ValueError("temperature must be > 0")
        if not 0 < self.temperature_min <= self.temperature_init <= self.temperature_max:
            raise ValueError("need 0 < temperature_min <= temperature_init <= temperature_max")
        if self.hard_negatives < 0 or self.mine_every < 1:
            raise ValueError("hard_negatives must be >= 0 and mine_every >= 1")
        if self.freeze_layers is not None and self.freeze_layers < 0:
            raise ValueError("freeze_layers must be >= 0 or None")
        if not 0 <= self.cold_text_rate <= 1:
            raise ValueError("cold_text_rate must be in [0, 1]")
        if self.steps is not None and self.steps < 1:
            raise ValueError("steps must be >= 1")


@dataclass
class RetrievalReport:
    """What a training run did."""

    out_dir: str
    fingerprint: str
    base_fingerprint: str
    steps: int
    pairs: int
    losses: list[float]
    seconds: float
    temperature: float
    learnable_temperature: bool
    mined_refreshes: int
    mining_seconds: float
    trainable_parameters: int
    frozen_parameters: int
    truncated_member_prompts: int
    stopped_early: bool
    checkpoints: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def final_loss(self) -> float:
        return self.losses[-1] if self.losses else float("nan")


# ----------------------------------------------------------------------------- model plumbing


def _load_libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _load_libc()


def _trim_heap() -> None:
    """Hand freed heap memory back to the OS (glibc). Every training step allocates activation
    tensors of a new shape; without this the heap fragments and a CPU run of a few hundred
    steps grows by gigabytes (measured: 10 GB after 150 MiniLM steps)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _transformer_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's stack of transformer blocks (BERT ``encoder.layer``, GPT-2 ``h``, Llama
    ``layers``, …): the shallowest ModuleList with ``num_hidden_layers`` entries."""
    n = getattr(model.config, "num_hidden_layers", None)
    found = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, nn.ModuleList) and len(mod) > 0 and (n is None or len(mod) == n)
    ]
    if not found:
        raise ValueError(f"cannot find the transformer layers of {type(model).__name__}")
    return min(found, key=lambda item: item[0].count("."))


class _Freezer:
    """Applies ``freeze_layers`` and remembers what it did."""

    def __init__(self, model: Any, freeze_layers: int | None, special_ids: list[int]) -> None:
        self.model = model
        self.embedding = model.get_input_embeddings()
        self.active = freeze_layers is not None
        self.special_ids = sorted(set(special_ids))
        self._special = torch.zeros(self.embedding.weight.shape[0], dtype=torch.bool)
        self._special[self.special_ids] = True
        if not self.active:
            return
        prefix, layers = _transformer_layers(model)
        k = int(freeze_layers or 0)
        if k > len(layers):
            raise ValueError(f"freeze_layers={k} but the model has {len(layers)} layers")
        frozen_layers = tuple(f"{prefix}.{i}." for i in range(k))
        first_layer = f"{prefix}.0."
        before_layers = True  # parameters registered before the first layer: embedding stage
        emb_weight = self.embedding.weight
        for name, param in model.named_parameters():
            if name.startswith(first_layer):
                before_layers = False
            if param is emb_weight:
                param.requires_grad_(bool(self.special_ids))
                continue
            if before_layers or name.startswith(frozen_layers):
                param.requires_grad_(False)
        if self.special_ids:
            mask = self._special.to(emb_weight.device).unsqueeze(1).to(emb_weight.dtype)
            emb_weight.register_hook(lambda grad: grad * mask)

    def has_special(self, ids: torch.Tensor) -> bool:
        return bool(self._special.to(ids.device)[ids].any())

    def embeds_without_grad(self, ids: torch.Tensor) -> torch.Tensor | None:
        """Token embeddings computed outside autograd when nothing in ``ids`` can learn (the
        frozen prefix then costs a forward pass only); ``None`` when autograd is needed."""
        if not self.active or self.has_special(ids):
            return None
        with torch.no_grad():
            out: torch.Tensor = self.embedding(ids)
        return out


def _param_groups(
    model: nn.Module, freezer: _Freezer, weight_decay: float, lr: float
) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    emb_weight = freezer.embedding.weight
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        # biases, norms and (masked) embedding rows get no weight decay: AdamW would otherwise
        # shrink the frozen rows of the embedding matrix
        if param is emb_weight or param.ndim < 2 or "norm" in name.lower():
            no_decay.append(param)
        else:
            decay.append(param)
    groups: list[dict[str, Any]] = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay, "lr": lr})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lr": lr})
    return groups


def _lr_factor(step: int, total: int, warmup: float, schedule: str) -> float:
    warm = round(warmup * total)
    if warm > 0 and step < warm:
        return (step + 1) / warm
    if schedule == "constant":
        return 1.0
    rest = max(total - warm, 1)
    return max(0.0, 1.0 - (step - warm) / rest)


@dataclass
class _Encoded:
    """Tokenized texts, cut to a length, as a list aligned with its keys."""

    ids: list[np.ndarray]
    truncated: int


def _tokenize(tok: PromptTokenizer, texts: Sequence[str], limit: int) -> _Encoded:
    out, cut = [], 0
    for seq in tok.encode_batch(texts):
        if len(seq) > limit:
            cut += 1
            seq = seq[:limit]
        out.append(seq)
    return _Encoded(out, cut)


class _Tower:
    """Forward passes of the shared encoder for training and for mining."""

    def __init__(
        self, model: Any, freezer: _Freezer, pooling: str, normalize: bool, pad_id: int
    ) -> None:
        self.model = model
        self.freezer = freezer
        self.pooling = pooling
        self.normalize = normalize
        self.pad_id = pad_id
        self.device = next(model.parameters()).device

    def _batch(self, seqs: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = pad_batch(seqs, self.pad_id)
        extra = -ids.shape[1] % PAD_MULTIPLE  # fewer distinct shapes: fewer kernels to build
        if extra:
            ids = np.pad(ids, ((0, 0), (0, extra)), constant_values=self.pad_id)
            mask = np.pad(mask, ((0, 0), (0, extra)))
        return torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device)

    def forward(self, seqs: Sequence[np.ndarray], bf16: bool) -> torch.Tensor:
        ids, mask = self._batch(seqs)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            embeds = self.freezer.embeds_without_grad(ids)
            if embeds is None:
                out = self.model(input_ids=ids, attention_mask=mask)
            else:
                out = self.model(inputs_embeds=embeds, attention_mask=mask)
        return embed_hidden(out.last_hidden_state, mask, self.pooling, self.normalize)

    @torch.no_grad()
    def embed(self, seqs: Sequence[np.ndarray], bf16: bool, batch_size: int = 128) -> torch.Tensor:
        was_training = self.model.training
        self.model.eval()
        order = np.argsort([len(s) for s in seqs], kind="stable")
        out = torch.empty((len(seqs), int(self.model.config.hidden_size)))
        for start in range(0, len(seqs), batch_size):
            rows = order[start : start + batch_size]
            out[torch.from_numpy(rows)] = self.forward([seqs[i] for i in rows], bf16).cpu()
        self.model.train(was_training)
        return out


def _copy_tokenizer_files(src: Path, dst: Path) -> None:
    """Everything in an encoder directory except weights, model config and our config."""
    skip = {ENCODER_CONFIG, "config.json", "generation_config.json", TRAIN_REPORT}
    for path in src.iterdir():
        if not path.is_file() or path.name in skip:
            continue
        if any(path.match(p) for p in WEIGHT_PATTERNS) or path.name.endswith(".index.json"):
            continue
        shutil.copy2(path, dst / path.name)


def _save_encoder(model: Any, encoder_dir: Path, out: Path) -> str:
    """Write ``out`` in the layout :class:`TextEncoder` loads; returns the new fingerprint."""
    out.mkdir(parents=True, exist_ok=True)
    for old in (p for pattern in WEIGHT_PATTERNS for p in out.glob(pattern)):
        old.unlink()  # a previous run's shards must not be hashed into the new fingerprint
    model.save_pretrained(str(out))
    _copy_tokenizer_files(encoder_dir, out)
    config = load_encoder_config(encoder_dir)
    return write_encoder_config(out, config.model_copy(update={"fingerprint": ""})).fingerprint


_STEP_DIR = re.compile(r"^step-(\d+)$")


def _prune_checkpoints(root: Path, keep: int) -> None:
    steps = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)))
    for _, path in steps[: max(len(steps) - max(keep, 1), 0)]:
        shutil.rmtree(path)


# ----------------------------------------------------------------------------- training


def _batches(n: int, cfg: RetrievalTrainConfig, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Pair indices per step: reshuffled every epoch, for ``steps`` or ``epochs`` passes."""
    per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.steps if cfg.steps is not None else per_epoch * cfg.epochs
    done = 0
    while done < total:
        order = rng.permutation(n)
        for start in range(0, n, cfg.batch_size):
            batch = order[start : start + cfg.batch_size]
            if len(batch) < 2:
                continue  # a lone pair has no in-batch negative
            yield batch
            done += 1
            if done >= total:
                return


def _total_steps(n: int, cfg: RetrievalTrainConfig) -> int:
    if cfg.steps is not None:
        return cfg.steps
    full, rest = divmod(n, cfg.batch_size)
    return (full + (1 if rest >= 2 else 0)) * cfg.epochs


@torch.enable_grad()  # a serving handler in the same process may have turned autograd off
def train_retrieval(
    encoder_dir: Path,
    pairs: Sequence[Pair],
    post_texts: Mapping[int, str],
    cfg: RetrievalTrainConfig,
    out_dir: Path,
    progress: bool = True,
    pair_exclude: Sequence[Collection[int]] | None = None,
    cold_post_texts: Mapping[int, str] | None = None,
) -> RetrievalReport:
    """Fine-tune the encoder in ``encoder_dir`` on ``pairs`` and write it to ``out_dir``.

    ``pairs`` are (member prompt text, positive post id); ``post_texts`` maps every post id
    (positives and the mining corpus) to its prompt text. ``pair_exclude[i]`` optionally names
    posts that must never be a negative for pair ``i`` (e.g. the member's other engagements).
    ``cold_post_texts`` optionally gives each post's prompt as a brand-new post would have it
    (zero engagement counts); with ``cfg.cold_text_rate`` > 0 a post column uses it that often.
    """
    from transformers import AutoModel

    started = time.perf_counter()
    if not pairs:
        raise ValueError("no training pairs")
    missing = {pid for _, pid in pairs if pid not in post_texts}
    if missing:
        raise KeyError(f"{len(missing)} positive post ids have no post text, e.g. {min(missing)}")
    if pair_exclude is not None and len(pair_exclude) != len(pairs):
        raise ValueError("pair_exclude must have one entry per pair")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)

    pair_idx = np.arange(len(pairs))
    if cfg.max_pairs is not None and len(pairs) > cfg.max_pairs:
        pair_idx = np.sort(rng.choice(len(pairs), size=cfg.max_pairs, replace=False))
    members = [pairs[i][0] for i in pair_idx]
    positives = np.array([pairs[i][1] for i in pair_idx], dtype=np.int64)
    excludes: list[frozenset[int]] = [
        frozenset(int(x) for x in pair_exclude[i]) if pair_exclude is not None else frozenset()
        for i in pair_idx
    ]

    config = load_encoder_config(encoder_dir)
    tokenizer = PromptTokenizer.from_dir(encoder_dir, config.max_length)
    post_ids = np.array(sorted(post_texts), dtype=np.int64)
    post_row = {int(p): i for i, p in enumerate(post_ids)}
    member_tok = _tokenize(tokenizer, members, cfg.member_tokens)
    post_tok = _tokenize(tokenizer, [post_texts[int(p)] for p in post_ids], cfg.post_tokens)
    cold_tok: _Encoded | None = None
    if cfg.cold_text_rate > 0:
        if cold_post_texts is None:
            raise ValueError("cold_text_rate > 0 needs cold_post_texts")
        cold_tok = _tokenize(
            tokenizer,
            [cold_post_texts.get(int(p), post_texts[int(p)]) for p in post_ids],
            cfg.post_tokens,
        )

    device = torch.device(cfg.device)
    model = AutoModel.from_pretrained(str(encoder_dir), local_files_only=True).to(device)
    model.train()
    special_ids = [i for t in config.special_tokens if (i := tokenizer.token_id(t)) is not None]
    freezer = _Freezer(model, cfg.freeze_layers, special_ids)
    pad_id = getattr(model.config, "pad_token_id", None) or 0
    tower = _Tower(model, freezer, config.pooling, config.normalize, int(pad_id))

    learnable = cfg.temperature is None
    init = cfg.temperature_init if learnable else float(cfg.temperature or 0.05)
    log_scale = nn.Parameter(torch.tensor(math.log(1.0 / init), device=device))
    lo_scale, hi_scale = math.log(1.0 / cfg.temperature_max), math.log(1.0 / cfg.temperature_min)
    groups = _param_groups(model, freezer, cfg.weight_decay, cfg.lr)
    if learnable:
        groups.append({"params": [log_scale], "weight_decay": 0.0, "lr": cfg.temperature_lr})
    for g in groups:
        g["base_lr"] = g["lr"]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if freezer.active and freezer.special_ids:
        trainable -= freezer.embedding.weight.numel() - len(freezer.special_ids) * int(
            freezer.embedding.weight.shape[1]
        )
    frozen = sum(p.numel() for p in model.parameters()) - trainable
    base_fingerprint = config.fingerprint

    total = _total_steps(len(members), cfg)
    log_q: dict[int, float] | None = None
    if cfg.logq_correction:
        uniq, freq = np.unique(positives, return_counts=True)
        log_q = {int(u): float(np.log(f / len(positives))) for u, f in zip(uniq, freq, strict=True)}
    mining = cfg.hard_negatives > 0
    mine_ids = post_ids
    mine_emb: torch.Tensor | None = None
    mined_refreshes, mining_seconds = 0, 0.0
    losses: list[float] = []
    checkpoints: list[str] = []
    stopped_early = False
    ckpt_root = out_dir / CHECKPOINTS
    bar = tqdm(total=total, desc="train retrieval", unit="step", disable=not progress)
    step = 0
    for batch in _batches(len(members), cfg, rng):
        if cfg.time_budget_s is not None and time.perf_counter() - started > cfg.time_budget_s:
            stopped_early = True
            break
        if mining and step % cfg.mine_every == 0:
            t = time.perf_counter()
            if cfg.mine_corpus_sample is not None and cfg.mine_corpus_sample < len(post_ids):
                rows = np.sort(rng.choice(len(post_ids), cfg.mine_corpus_sample, replace=False))
            else:
                rows = np.arange(len(post_ids))
            mine_ids = post_ids[rows]
            mine_emb = tower.embed([post_tok.ids[i] for i in rows], cfg.bf16).to(device)
            _trim_heap()
            mined_refreshes += 1
            mining_seconds += time.perf_counter() - t

        factor = _lr_factor(step, total, cfg.warmup, cfg.schedule)
        for g in optimizer.param_groups:
            g["lr"] = g["base_lr"] * factor

        pos = positives[batch]
        excl = [excludes[i] for i in batch]
        q = tower.forward([member_tok.ids[i] for i in batch], cfg.bf16)
        negatives: list[int] = []
        if mining and mine_emb is not None:
            negatives = _mine(q.detach(), mine_emb, mine_ids, pos, excl, cfg, rng)
        cols = np.unique(np.concatenate([pos, np.asarray(negatives, dtype=np.int64)]))
        col_of = {int(c): j for j, c in enumerate(cols)}
        rows_of_cols = [post_row[int(c)] for c in cols]
        seqs = [post_tok.ids[r] for r in rows_of_cols]
        if cold_tok is not None:
            as_new = rng.random(len(cols)) < cfg.cold_text_rate
            seqs = [
                cold_tok.ids[r] if new else seq
                for r, new, seq in zip(rows_of_cols, as_new, seqs, strict=True)
            ]
        p = tower.forward(seqs, cfg.bf16)
        scale = log_scale.clamp(lo_scale, hi_scale).exp()
        bias = None
        if log_q is not None:
            in_batch = np.isin(cols, pos)
            bias = torch.from_numpy(
                np.where(in_batch, [log_q.get(int(c), 0.0) for c in cols], 0.0)
            ).to(device=device, dtype=torch.float32)
        loss = _symmetric_infonce(q, p, pos, cols, col_of, excl, scale, bias)

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [prm for g in optimizer.param_groups for prm in g["params"]]
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        with torch.no_grad():
            log_scale.clamp_(lo_scale, hi_scale)
        losses.append(float(loss.detach()))
        del q, p, loss  # free the step's activations before trimming the heap
        step += 1
        _trim_heap()
        bar.set_postfix(loss=f"{losses[-1]:.3f}", tau=f"{math.exp(-float(log_scale.detach())):.4f}")
        bar.update(1)
        if cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0 and step < total:
            path = ckpt_root / f"step-{step}"
            _save_encoder(model, encoder_dir, path)
            checkpoints.append(str(path))
            _prune_checkpoints(ckpt_root, cfg.keep_checkpoints)
    bar.close()

    model.eval()
    fingerprint = _save_encoder(model, encoder_dir, out_dir)
    kept = [c for c in checkpoints if Path(c).is_dir()]
    report = RetrievalReport(
        out_dir=str(out_dir),
        fingerprint=fingerprint,
        base_fingerprint=base_fingerprint,
        steps=step,
        pairs=len(members),
        losses=losses,
        seconds=time.perf_counter() - started,
        temperature=math.exp(-float(log_scale.detach())),
        learnable_temperature=learnable,
        mined_refreshes=mined_refreshes,
        mining_seconds=mining_seconds,
        trainable_parameters=int(trainable),
        frozen_parameters=int(frozen),
        truncated_member_prompts=member_tok.truncated,
        stopped_early=stopped_early,
        checkpoints=kept,
        config=asdict(cfg),
    )
    (out_dir / TRAIN_REPORT).write_text(json.dumps(asdict(report), indent=2) + "\n")
    return report


def _mine(
    q: torch.Tensor,
    corpus: torch.Tensor,
    corpus_ids: np.ndarray,
    positives: np.ndarray,
    excludes: Sequence[frozenset[int]],
    cfg: RetrievalTrainConfig,
    rng: np.random.Generator,
) -> list[int]:
    """Top-ranked non-positive corpus posts for each member of the batch."""
    pool = max(cfg.mine_pool, cfg.hard_negatives)
    scores = q.float() @ corpus.T
    depth = min(len(corpus_ids), pool + max((len(e) for e in excludes), default=0) + 1)
    top = torch.topk(scores, depth, dim=1).indices.cpu().numpy()
    out: list[int] = []
    for i, row in enumerate(top):
        cand = [
            int(c)
            for c in corpus_ids[row]
            if int(c) != int(positives[i]) and int(c) not in excludes[i]
        ][:pool]
        if len(cand) > cfg.hard_negatives:
            pick = rng.choice(len(cand), cfg.hard_negatives, replace=False)
            cand = [cand[j] for j in sorted(pick)]
        out.extend(cand)
    return out


def _symmetric_infonce(
    q: torch.Tensor,
    p: torch.Tensor,
    positives: np.ndarray,
    cols: np.ndarray,
    col_of: Mapping[int, int],
    excludes: Sequence[frozenset[int]],
    scale: torch.Tensor,
    log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """Member → post over every post column, post → member over the batch's members, with
    duplicate positives and excluded posts masked out of the negatives. ``log_q`` [cols] is
    subtracted from the member → post logits (sampling correction)."""
    b = len(positives)
    target = torch.tensor([col_of[int(x)] for x in positives], device=q.device)
    logits = scale * (q @ p.T)  # [b, cols]
    if log_q is not None:
        logits = logits - log_q
    mask = torch.zeros_like(logits, dtype=torch.bool)
    for i, excl in enumerate(excludes):
        if excl:
            for j, c in enumerate(cols.tolist()):
                if c in excl and j != int(target[i]):
                    mask[i, j] = True
    loss_q = nn.functional.cross_entropy(logits.masked_fill(mask, float("-inf")), target)

    pos_emb = p[target]  # [b, d]
    logits_p = scale * (pos_emb @ q.T)  # [b posts, b members]
    same = torch.from_numpy(positives[:, None] == positives[None, :]).to(q.device)
    for j, excl in enumerate(excludes):  # member j also engaged with post i: not a negative
        if excl:
            hit = torch.tensor([int(x) in excl for x in positives], device=q.device)
            same[:, j] |= hit
    same.fill_diagonal_(False)
    arange = torch.arange(b, device=q.device)
    loss_p = nn.functional.cross_entropy(logits_p.masked_fill(same, float("-inf")), arange)
    return (loss_q + loss_p) / 2


# ----------------------------------------------------------------------------- evaluation


def build_post_index(
    encoder: TextEncoder, post_texts: Mapping[int, str], batch_size: int = 64
) -> ExhaustiveIndex:
    """Embed every post text and load the vectors into an exhaustive index."""
    ids = np.array(sorted(post_texts), dtype=np.int64)
    emb = encoder.encode_texts([post_texts[int(i)] for i in ids], batch_size=batch_size)
    index = ExhaustiveIndex(encoder.dim)
    index.upsert(ids, emb)
    return index


def retrieval_ranks(
    encoder: TextEncoder,
    queries: Sequence[str],
    targets: Sequence[int],
    exclude: Sequence[Collection[int]],
    index: ExhaustiveIndex,
    depth: int,
    batch_size: int = 64,
) -> np.ndarray:
    """1-based rank of each target among the non-excluded posts, 0 when below ``depth``."""
    if not len(queries) == len(targets) == len(exclude):
        raise ValueError("queries, targets and exclude must have the same length")
    if not queries:
        return np.zeros(0, dtype=np.int64)
    q = encoder.encode_texts(queries, batch_size=batch_size)
    found, _ = index.search(q, depth, [sorted(int(x) for x in e) for e in exclude])
    return ranks_of(found, targets)


def ranks_of(found: np.ndarray, targets: Sequence[int]) -> np.ndarray:
    """1-based position of ``targets[i]`` in row ``found[i]`` (0 = absent)."""
    out = np.zeros(len(targets), dtype=np.int64)
    for i, (row, t) in enumerate(zip(found, targets, strict=True)):
        hit = np.flatnonzero(row == int(t))
        if hit.size:
            out[i] = int(hit[0]) + 1
    return out


def ranking_metrics(ranks: np.ndarray, ks: Sequence[int] = (10, 100)) -> dict[str, float]:
    """Recall@k per ``k``, NDCG@10 and MRR (one relevant item per query; a rank of 0, i.e. not
    within the search depth, counts as a miss, so MRR is truncated at that depth)."""
    r = np.asarray(ranks, dtype=np.int64)
    n = max(len(r), 1)
    hit = r > 0
    out = {f"recall@{k}": float(np.sum(hit & (r <= k)) / n) for k in ks}
    in10 = hit & (r <= 10)
    out["ndcg@10"] = float(np.sum(1.0 / np.log2(r[in10] + 1.0)) / n)
    out["mrr"] = float(np.sum(1.0 / r[hit]) / n)
    return out


def evaluate_retrieval(
    encoder: TextEncoder,
    queries: list[str],
    targets: list[int],
    post_texts: dict[int, str],
    exclude: list[set[int]],
    ks: Sequence[int] = (10, 100),
    *,
    index: ExhaustiveIndex | None = None,
    batch_size: int = 64,
) -> dict[str, float]:
    """Recall@k, NDCG@10 and MRR of exhaustive top-K retrieval over every post.

    Each query's target is its one relevant post; ``exclude[i]`` are posts query ``i`` must
    not get (its history). Pass ``index`` (from :func:`build_post_index`) to reuse corpus
    embeddings across calls; ``post_texts`` is then not re-embedded.
    """
    if index is None:
        index = build_post_index(encoder, post_texts, batch_size=batch_size)
    depth = max(max(ks, default=10), 10)
    ranks = retrieval_ranks(encoder, queries, targets, exclude, index, depth, batch_size)
    return ranking_metrics(ranks, ks)


# ----------------------------------------------------------------------------- demo data pairs


def _demo_engagements(ds: DemoDataset) -> dict[int, np.ndarray]:
    """Each member's engagement rows (no impressions), oldest first."""
    codes = np.array([int(a) for a in ENGAGEMENT_ACTIONS])
    return {m: h[np.isin(h["action"], codes)] for m, h in ds.histories().items()}


def demo_post_texts(
    ds: DemoDataset, buckets: BucketTable, count_tokens: TokenCounter, post_budget: int
) -> dict[int, str]:
    """Every post's prompt, with engagement counts from the data set."""
    authors = {m.member_id: m for m in ds.members}
    counts = ds.engagement_counts()
    out: dict[int, str] = {}
    for i, post in enumerate(ds.posts):
        c = EngagementCounts(**{k: int(v[i]) for k, v in counts.items()})
        out[post.post_id] = render_post_prompt(
            post,
            authors.get(post.author_id),
            c,
            buckets,
            budget=post_budget,
            count_tokens=count_tokens,
        )
    return out


def _split_last(rows: np.ndarray) -> tuple[int, np.ndarray, int]:
    """(held-out post, the rows without any engagement on it, ts of its first engagement)."""
    last = int(rows["post_id"][-1])
    on_last = rows["post_id"] == last
    first_ts = int(rows["ts"][on_last].min())
    return last, rows[~on_last], first_ts


def _activity(rows: np.ndarray, posts: Mapping[int, Post]) -> list[ActivityItem]:
    return [
        ActivityItem(Action(int(a)), posts[int(p)])
        for p, a in zip(rows["post_id"], rows["action"], strict=True)
    ]


def demo_training_pairs(
    ds: DemoDataset,
    buckets: BucketTable,
    count_tokens: TokenCounter,
    member_budget: int,
    post_budget: int,
    max_pairs_per_member: int | None,
    seed: int,
) -> tuple[list[Pair], dict[int, str]]:
    """Training pairs from the synthetic network, and every post's prompt.

    For each member, every post they engaged with (first engagement at time ``t``) becomes a
    pair: the member prompt is rendered from the profile and the engagements strictly before
    ``t``; the positive is the post. The post of the member's last engagement is held out for
    evaluation (:func:`demo_eval_queries`): it is never a positive, and as it is last it is in
    no history either. At most ``max_pairs_per_member`` pairs per member (a seeded sample).
    """
    rng = np.random.default_rng(seed)
    posts = {p.post_id: p for p in ds.posts}
    pairs: list[Pair] = []
    engagements = _demo_engagements(ds)
    for member in ds.members:
        rows = engagements.get(member.member_id)
        if rows is None or len(rows) < 2:
            continue
        _, rows, _ = _split_last(rows)
        _, first = np.unique(rows["post_id"], return_index=True)
        first = np.sort(first)
        if max_pairs_per_member is not None and len(first) > max_pairs_per_member:
            first = np.sort(rng.choice(first, max_pairs_per_member, replace=False))
        for j in first.tolist():
            t = int(rows["ts"][j])
            history = rows[rows["ts"] < t]
            prompt = render_member_prompt(
                member, _activity(history, posts), budget=member_budget, count_tokens=count_tokens
            )
            pairs.append((prompt, int(rows["post_id"][j])))
    return pairs, demo_post_texts(ds, buckets, count_tokens, post_budget)


def demo_eval_queries(
    ds: DemoDataset, count_tokens: TokenCounter, member_budget: int
) -> tuple[list[str], list[int], list[set[int]]]:
    """Leave-last-out queries: per member with at least two engaged posts, the prompt from the
    engagements strictly before their last engaged post, that post as target, and the posts
    already engaged with as the exclusion set."""
    posts = {p.post_id: p for p in ds.posts}
    queries: list[str] = []
    targets: list[int] = []
    exclude: list[set[int]] = []
    members: dict[int, Member] = {m.member_id: m for m in ds.members}
    for member_id, rows in _demo_engagements(ds).items():
        if len(rows) < 2:
            continue
        target, rest, t = _split_last(rows)
        history = rest[rest["ts"] < t]
        if len(history) == 0:
            continue
        queries.append(
            render_member_prompt(
                members[member_id],
                _activity(history, posts),
                budget=member_budget,
                count_tokens=count_tokens,
            )
        )
        targets.append(target)
        exclude.append({int(p) for p in history["post_id"]})
    return queries, targets, exclude
