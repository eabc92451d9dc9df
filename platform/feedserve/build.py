"""``feedserve build``: everything the models serve from, built from a data set.

1. percentile bucket tables of the engagement counters (``buckets.json``);
2. the retrieval encoder with the bucket tokens added (``encoder/``);
3. post prompts for the whole corpus, embedded in batches (``index/`` snapshot: the offline
   mode of ``feedserve index build``);
4. the generative ranker (content-aware HSTU, :mod:`feedserve.models.gr_serving`), trained on
   the members' engagement sequences with post content from the snapshot (``ranker/``);
5. ``manifest.json``: what was built from what, with timings.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from feedserve import __version__
from feedserve.contracts import EngagementCounts, Member, Post
from feedserve.data.io import read_dataset
from feedserve.data.sequences import dataset_sequences
from feedserve.data.synthetic import DemoDataset
from feedserve.models.encoder import Pooling, TextEncoder, export_encoder
from feedserve.models.gr_serving import (
    ServingRankerConfig,
    save_serving_ranker,
    train_serving_ranker,
)
from feedserve.models.post_table import PostEmbeddingTable, write_snapshot
from feedserve.prompts import PROMPT_VERSION, BucketTable, render_post_prompt, special_tokens
from feedserve.store.base import FeatureStore
from feedserve_featurizers.hydrate import BUCKETS_FILE

MANIFEST = "manifest.json"


@dataclass
class BuildOptions:
    post_prompt_tokens: int = 128
    ranker_epochs: int = 8
    ranker: ServingRankerConfig | None = None
    """Ranker settings; its training ``epochs`` and ``seed`` are replaced by the options'."""
    seed: int = 0
    batch_size: int = 64
    progress: bool = True
    base_model: Path | None = None
    """Any local Hugging Face encoder or decoder directory (default: bundled MiniLM)."""
    pooling: Pooling = "mean"
    """``mean`` for encoders, ``last`` (last real token) for causal decoders."""


@dataclass
class Corpus:
    """Posts with what their prompts need: authors and engagement counts."""

    posts: list[Post]
    authors: dict[int, Member]
    counts: list[EngagementCounts]

    @classmethod
    def from_dataset(cls, ds: DemoDataset) -> Corpus:
        raw = ds.engagement_counts()
        counts = [
            EngagementCounts(**{k: int(v[i]) for k, v in raw.items()}) for i in range(len(ds.posts))
        ]
        return cls(list(ds.posts), {m.member_id: m for m in ds.members}, counts)

    @classmethod
    def from_store(cls, store: FeatureStore, limit: int = 2**62) -> Corpus:
        """Every post in a feature store (incl. nearline additions), for an index rebuild."""
        ids = store.recent_posts(limit)
        posts = [p for p in store.get_posts(ids) if p is not None]
        author_ids = sorted({p.author_id for p in posts})
        authors = {m.member_id: m for m in store.get_members(author_ids) if m is not None}
        return cls(posts, authors, store.get_counts([p.post_id for p in posts]))

    def prompts(self, buckets: BucketTable, budget: int, count: Callable[[str], int]) -> list[str]:
        return [
            render_post_prompt(
                post,
                self.authors.get(post.author_id),
                c,
                buckets,
                budget=budget,
                count_tokens=count,
            )
            for post, c in zip(self.posts, self.counts, strict=True)
        ]


def build_index(
    corpus: Corpus,
    encoder: TextEncoder,
    buckets: BucketTable,
    out_dir: Path,
    *,
    prompt_tokens: int = 128,
    batch_size: int = 64,
    progress: bool = True,
) -> np.ndarray:
    """The offline mode of the index: embed every post prompt in batches, write a snapshot
    (ids, embeddings, authors, the encoder's embedding space). Returns the embeddings."""
    prompts = corpus.prompts(buckets, prompt_tokens, encoder.tokenizer.count_tokens)
    ids = encoder.tokenizer.encode_batch(prompts)
    emb = np.zeros((len(ids), encoder.dim), dtype=np.float32)
    step = 256
    for start in tqdm(
        range(0, len(ids), step), desc="embed posts", unit="chunk", disable=not progress
    ):
        emb[start : start + step] = encoder.encode_ids(ids[start : start + step], batch_size)
    write_snapshot(
        out_dir,
        np.array([p.post_id for p in corpus.posts], dtype=np.int64),
        emb,
        author_ids=np.array([p.author_id for p in corpus.posts], dtype=np.int64),
        space=encoder.config.fingerprint,
    )
    return emb


def build_artifacts(
    data_dir: Path, out_dir: Path, opts: BuildOptions, log: Callable[[str], None] = print
) -> dict[str, object]:
    torch.manual_seed(opts.seed)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    ds = read_dataset(data_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_members, n_posts, n_inter = len(ds.members), len(ds.posts), len(ds.interactions)
    log(f"data: {n_members} members, {n_posts} posts, {n_inter} interactions")

    buckets = BucketTable.fit(ds.engagement_counts())
    buckets.save(out_dir / BUCKETS_FILE)
    timings["buckets_s"] = time.perf_counter() - t0

    t = time.perf_counter()
    export_encoder(
        out_dir / "encoder", special_tokens(), base=opts.base_model, pooling=opts.pooling
    )
    encoder = TextEncoder(out_dir / "encoder")
    timings["encoder_export_s"] = time.perf_counter() - t
    log(f"encoder: {encoder.config.base} (+{len(encoder.config.special_tokens)} bucket tokens)")

    t = time.perf_counter()
    build_index(
        Corpus.from_dataset(ds),
        encoder,
        buckets,
        out_dir / "index",
        prompt_tokens=opts.post_prompt_tokens,
        batch_size=opts.batch_size,
        progress=opts.progress,
    )
    timings["embed_posts_s"] = time.perf_counter() - t

    t = time.perf_counter()
    cfg = opts.ranker or ServingRankerConfig()
    cfg = replace(cfg, train=replace(cfg.train, epochs=opts.ranker_epochs, seed=opts.seed))
    sequences = dataset_sequences(ds, include_impressions=False)
    ranker, report = train_serving_ranker(
        sequences, PostEmbeddingTable(out_dir / "index", None), cfg, progress=opts.progress
    )
    save_serving_ranker(out_dir / "ranker", ranker)
    timings["train_ranker_s"] = time.perf_counter() - t
    quality = ranker.info.get("eval", {})
    log(
        f"ranker: {cfg.kind} on {report.examples} members, {report.epochs} epochs, "
        f"final loss {report.final_loss:.3f}"
        + (
            f"; held-out HR@10 {quality[cfg.kind]['hr@10']:.3f} "
            f"(popularity {quality['popularity']['hr@10']:.3f})"
            if quality
            else ""
        )
    )

    manifest: dict[str, object] = {
        "feedserve_version": __version__,
        "prompt_version": PROMPT_VERSION,
        "data_dir": str(data_dir.resolve()),
        "counts": {"members": len(ds.members), "posts": len(ds.posts)},
        "embedding_dim": encoder.dim,
        "ranker": ranker.info,
        "seed": opts.seed,
        "timings": {k: round(v, 2) for k, v in timings.items()},
        "built_at": int(time.time()),
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest
