"""Releasing models: a retrieval model (re-embed the corpus with it, export both Triton models
as a new version) or a generative ranker (a new ``generative_ranker`` version), and switching
a running tritonserver over.

An encoder and the index it serves must come from the same embedding space, so they are
exported together, under one version number.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from feedserve.build import Corpus, build_index
from feedserve.data.io import read_dataset
from feedserve.model_repo import export_versions, prepare_model_repo
from feedserve.models.encoder import TextEncoder
from feedserve.models.retrieval import (
    RetrievalReport,
    RetrievalTrainConfig,
    demo_eval_queries,
    demo_training_pairs,
    evaluate_retrieval,
    train_retrieval,
)
from feedserve.models.tokenizer import PromptTokenizer
from feedserve.prompts import BucketTable
from feedserve.settings import CommonSettings
from feedserve.store import open_store
from feedserve.triton_client import AsyncTritonClient
from feedserve_featurizers.hydrate import BUCKETS_FILE

RETRIEVAL_MODELS = ("retrieval_encoder", "post_index")


@dataclass(frozen=True)
class Release:
    version: int
    encoder_dir: Path
    index_dir: Path
    posts: int
    space: str


def load_corpus(settings: CommonSettings, data_dir: Path | None) -> Corpus:
    """Posts to index: a data set directory, or else the live feature store (Redis), which
    includes every post added or edited since the data set was loaded."""
    if data_dir is not None:
        return Corpus.from_dataset(read_dataset(data_dir))
    if settings.embedded:
        raise ValueError("give a data set directory, or set FEEDSERVE_REDIS_URL to read posts")
    return Corpus.from_store(open_store(settings))


def index_with(
    encoder_dir: Path,
    buckets_file: Path,
    corpus: Corpus,
    out_dir: Path,
    *,
    prompt_tokens: int = 128,
    progress: bool = True,
) -> str:
    """Embed ``corpus`` with the encoder in ``encoder_dir``; returns its embedding space."""
    encoder = TextEncoder(encoder_dir)
    buckets = BucketTable.load(buckets_file)
    build_index(corpus, encoder, buckets, out_dir, prompt_tokens=prompt_tokens, progress=progress)
    return encoder.config.fingerprint


def release_retrieval(
    encoder_dir: Path,
    artifacts_dir: Path,
    corpus: Corpus,
    work_dir: Path,
    source_repo: Path,
    runtime_repo: Path,
    *,
    progress: bool = True,
) -> Release:
    """Index ``corpus`` with the encoder and export encoder + index as one new version."""
    index_dir = work_dir / "index"
    space = index_with(
        encoder_dir, artifacts_dir / BUCKETS_FILE, corpus, index_dir, progress=progress
    )
    prepare_model_repo(source_repo, runtime_repo)
    version = export_versions(
        runtime_repo,
        {"retrieval_encoder": {"encoder": encoder_dir}, "post_index": {"index": index_dir}},
    )
    return Release(version, encoder_dir, index_dir, len(corpus.posts), space)


def release_ranker(ranker_dir: Path, source_repo: Path, runtime_repo: Path) -> int:
    """Export a served-ranker directory (``gr_serving.save_serving_ranker``) as a new
    ``generative_ranker`` version; returns its number."""
    prepare_model_repo(source_repo, runtime_repo)
    return export_versions(runtime_repo, {"generative_ranker": {"ranker": ranker_dir}})


@dataclass(frozen=True)
class TrainOutcome:
    report: RetrievalReport
    metrics: dict[str, dict[str, float]]
    """Leave-last-out metrics per encoder ("base", "trained"); empty when not evaluated."""


def train_demo_retrieval(
    data_dir: Path,
    artifacts_dir: Path,
    out_dir: Path,
    cfg: RetrievalTrainConfig,
    *,
    max_pairs_per_member: int | None = 8,
    evaluate: bool = True,
    eval_members: int | None = 500,
    progress: bool = True,
) -> TrainOutcome:
    """Fine-tune the release's encoder on the data set's member → engaged-post pairs.

    Each member's last engaged post is held out; with ``evaluate`` the base and the trained
    encoder are compared on those (Recall@10/100, NDCG@10, MRR; up to ``eval_members``).
    """
    ds = read_dataset(data_dir)
    base = artifacts_dir / "encoder"
    buckets = BucketTable.load(artifacts_dir / BUCKETS_FILE)
    count = PromptTokenizer.from_dir(base, 10_000).count_tokens
    pairs, post_texts = demo_training_pairs(
        ds, buckets, count, cfg.member_tokens, cfg.post_tokens, max_pairs_per_member, cfg.seed
    )
    report = train_retrieval(base, pairs, post_texts, cfg, out_dir, progress=progress)
    metrics: dict[str, dict[str, float]] = {}
    if evaluate:
        queries, targets, exclude = demo_eval_queries(ds, count, cfg.member_tokens)
        if eval_members is not None:
            keep = np.random.default_rng(cfg.seed).permutation(len(queries))[:eval_members]
            queries = [queries[i] for i in keep]
            targets = [targets[i] for i in keep]
            exclude = [exclude[i] for i in keep]
        for name, encoder_dir in (("base", base), ("trained", out_dir)):
            encoder = TextEncoder(encoder_dir)
            metrics[name] = evaluate_retrieval(encoder, queries, targets, post_texts, exclude)
    return TrainOutcome(report, metrics)


def activate(triton_url: str, models: tuple[str, ...] = RETRIEVAL_MODELS) -> dict[str, str]:
    """Have a running tritonserver (explicit model control) load the newest versions."""

    async def main() -> dict[str, str]:
        client = AsyncTritonClient(triton_url, timeout_s=600.0)  # loading takes a while
        try:
            for name in models:
                await client.load_model(name)
            return {name: await client.model_version(name) for name in models}
        finally:
            await client.close()

    return asyncio.run(main())
