"""Celery tasks: thin wrappers that parse arguments and call ``hydrate``'s pure functions."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from celery import Task

from feedserve import codec
from feedserve.settings import FeaturizerSettings
from feedserve.store import open_embedding_log
from feedserve.store.base import EmbeddingLog
from feedserve.triton_client import TritonUnavailable, run_sync
from feedserve_featurizers import hydrate
from feedserve_featurizers.celery_app import app, prompt_channel


@lru_cache(maxsize=1)
def context() -> hydrate.FeaturizerContext:
    """Per worker process: store connection, tokenizer and bucket tables, loaded once."""
    return hydrate.FeaturizerContext.load(FeaturizerSettings())


@lru_cache(maxsize=1)
def embedding_log() -> EmbeddingLog:
    return open_embedding_log(context().settings)


@app.task(name="feedserve.ping")
def ping() -> str:
    context()  # readiness means the artifacts load, not merely that the process runs
    return "pong"


@app.task(name="feedserve.hydrate_member", bind=True)
def hydrate_member(
    self: Task,
    member_id: int,
    session: dict[str, object] | None,
    now: int,
    with_prompt: bool = True,
    early_prompt: bool = False,
) -> dict[str, object]:
    """``early_prompt``: the prompt's tokens are also published as soon as they exist, on the
    result channel + ``PROMPT_SUFFIX``, so the caller can start embedding them."""
    parsed = hydrate.SessionContext.model_validate(session) if session else None
    on_prompt = None
    if early_prompt and self.request.id:
        channel = prompt_channel(self.backend.get_key_for_task(self.request.id))
        client = self.backend.client

        def on_prompt(ids: np.ndarray) -> None:
            client.publish(channel, codec.encode(ids))

    return hydrate.hydrate_member(
        context(), int(member_id), parsed, int(now), bool(with_prompt), on_prompt
    )


@app.task(name="feedserve.hydrate_candidates")
def hydrate_candidates(post_ids: list[int]) -> dict[str, object]:
    return hydrate.hydrate_candidates(context(), [int(p) for p in post_ids])


@app.task(
    name="feedserve.index_post",
    autoretry_for=(TritonUnavailable,),
    retry_backoff=True,
    retry_backoff_max=30,
    max_retries=8,
)
def index_post(post_id: int) -> None:
    ctx = context()
    settings = ctx.settings

    def embed(ids: np.ndarray) -> tuple[np.ndarray, str]:
        return run_sync(settings.triton_url, 10.0, lambda c: c.embed_ids_tagged(ids))

    hydrate.index_post(ctx, int(post_id), embed, embedding_log())
