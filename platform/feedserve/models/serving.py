"""What the Triton models compute, as plain classes callable without Triton.

Each handler takes one dynamic batch as a list of requests (input name → array, without the
batch dimension; ``None`` for an optional input not sent) and returns, per request, either
its outputs or an error message (a bad request fails alone, not its batch neighbours).
``model_repo/*/<version>/model.py`` only converts Triton tensors to and from these.

Artifacts: a model version directory that carries its own artifacts (``encoder/``, ``index/``,
written by ``feedserve train retrieval`` exports) serves those; otherwise the handler serves
the release in ``FEEDSERVE_ARTIFACTS_DIR`` (what ``feedserve build`` wrote).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from feedserve.models.encoder import TextEncoder
from feedserve.models.gr_serving import GenerativeRankerService, RankRequest
from feedserve.models.post_table import PostEmbeddingTable
from feedserve.settings import ModelSettings
from feedserve.store import open_embedding_log

Request = dict[str, np.ndarray | None]
Result = dict[str, np.ndarray] | str


class Handler(Protocol):
    def handle(self, batch: Sequence[Request]) -> list[Result]: ...


def artifact_dir(settings: ModelSettings, version_dir: Path | None, name: str) -> Path:
    """``version_dir/name`` when the model version ships it, else the release's ``name``."""
    if version_dir is not None and (version_dir / name).is_dir():
        return version_dir / name
    return Path(settings.artifacts_dir) / name


def _configure_torch(settings: ModelSettings) -> None:
    # no process-wide autograd switch: the models' own inference entry points run under
    # no_grad / inference_mode, and a process that also trains (a CLI export, a test session)
    # must keep autograd
    if settings.device == "cpu":
        torch.set_num_threads(max(1, min(4, torch.get_num_threads())))


class EncoderHandler:
    """``retrieval_encoder``: token ids (preferred) or text → unit-length embedding."""

    def __init__(self, encoder: TextEncoder) -> None:
        self.encoder = encoder

    @classmethod
    def from_settings(
        cls, settings: ModelSettings, version_dir: Path | None = None
    ) -> EncoderHandler:
        _configure_torch(settings)
        encoder_dir = artifact_dir(settings, version_dir, "encoder")
        return cls(TextEncoder(encoder_dir, device=settings.device))

    def handle(self, batch: Sequence[Request]) -> list[Result]:
        results: list[Result] = ["" for _ in batch]
        ids: list[np.ndarray] = []
        rows: list[int] = []
        vocab = self.encoder.tokenizer.vocab_size
        for i, req in enumerate(batch):
            input_ids, text = req.get("input_ids"), req.get("text")
            if input_ids is not None:
                seq = np.asarray(input_ids, dtype=np.int64).reshape(-1)
                if seq.size == 0:
                    results[i] = "input_ids is empty"
                    continue
                if seq.min() < 0 or seq.max() >= vocab:
                    results[i] = f"input_ids out of range [0, {vocab})"
                    continue
                ids.append(seq)
            elif text is not None:
                raw = np.asarray(text).reshape(-1)[0]
                value = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
                ids.append(self.encoder.tokenizer.encode(value))
            else:
                results[i] = "send either input_ids or text"
                continue
            rows.append(i)
        if rows:
            emb = self.encoder.encode_ids(ids)
            space = np.array([self.encoder.config.fingerprint.encode()], dtype=np.object_)
            for row, vec in zip(rows, emb, strict=True):
                results[row] = {"embedding": vec, "space": space}
        return results


class IndexHandler:
    """``post_index``: exhaustive top-K over all post embeddings.

    The query is an embedding (``query``) or the mean embedding of some posts
    (``query_post_ids``: the session-context source). Excluded posts and posts by blocked
    authors never come back.
    """

    max_k = 4096

    def __init__(self, table: PostEmbeddingTable) -> None:
        self.table = table

    @classmethod
    def from_settings(
        cls, settings: ModelSettings, version_dir: Path | None = None
    ) -> IndexHandler:
        _configure_torch(settings)
        log = open_embedding_log(settings)
        index_dir = artifact_dir(settings, version_dir, "index")
        return cls(PostEmbeddingTable(index_dir, log, settings.nearline_poll_s))

    def _query(self, req: Request) -> np.ndarray | str:
        query, post_ids = req.get("query"), req.get("query_post_ids")
        if query is not None and post_ids is not None:
            return "send query or query_post_ids, not both"
        if query is not None:
            vec = np.asarray(query, dtype=np.float32).reshape(-1)
            if vec.shape[0] != self.table.dim:
                return f"query must have {self.table.dim} values, got {vec.shape[0]}"
            return vec
        if post_ids is not None:
            ids = np.asarray(post_ids, dtype=np.int64).reshape(-1)
            emb, found = self.table.embeddings_of(ids)
            if not found.any():
                return "none of query_post_ids is in the index"
            mean = emb[found].mean(axis=0)
            return mean / max(float(np.linalg.norm(mean)), 1e-12)
        return "send either query or query_post_ids"

    def handle(self, batch: Sequence[Request]) -> list[Result]:
        results: list[Result] = ["" for _ in batch]
        queries: list[np.ndarray] = []
        ks: list[int] = []
        excludes: list[list[int]] = []
        blocked: list[list[int]] = []
        rows: list[int] = []
        for i, req in enumerate(batch):
            query = self._query(req)
            k = int(np.asarray(req["k"]).reshape(-1)[0])
            if isinstance(query, str):
                results[i] = query
                continue
            if not 1 <= k <= self.max_k:
                results[i] = f"k must be in [1, {self.max_k}], got {k}"
                continue
            exclude, authors = req.get("exclude_ids"), req.get("blocked_author_ids")
            excluded = [] if exclude is None else np.asarray(exclude).reshape(-1).tolist()
            if req.get("query") is None and req.get("query_post_ids") is not None:
                excluded += np.asarray(req["query_post_ids"]).reshape(-1).tolist()
            excludes.append(excluded)
            blocked.append([] if authors is None else np.asarray(authors).reshape(-1).tolist())
            queries.append(query)
            ks.append(k)
            rows.append(i)
        if rows:
            ids, scores = self.table.search(np.stack(queries), max(ks), excludes, blocked)
            for j, row in enumerate(rows):
                keep = ids[j, : ks[j]] > 0
                results[row] = {
                    "post_ids": ids[j, : ks[j]][keep],
                    "scores": scores[j, : ks[j]][keep].astype(np.float32),
                }
        return results


class RankerHandler:
    """``generative_ranker``: a dynamic batch of members scored in one shared-prefix pass."""

    def __init__(self, service: GenerativeRankerService) -> None:
        self.service = service

    @classmethod
    def from_settings(
        cls, settings: ModelSettings, version_dir: Path | None = None
    ) -> RankerHandler:
        """The ranker reads post content from the release's own index snapshot (the embedding
        space it was trained in), not from a newer retrieval version's."""
        _configure_torch(settings)
        log = open_embedding_log(settings)
        table = PostEmbeddingTable(
            Path(settings.artifacts_dir) / "index", log, settings.nearline_poll_s
        )
        ranker_dir = artifact_dir(settings, version_dir, "ranker")
        service = GenerativeRankerService(
            ranker_dir, table, settings.device, settings.ranker_micro_batch
        )
        return cls(service)

    def _parse(self, req: Request, now: int) -> RankRequest | str:
        names = ("history_post_ids", "history_actions", "history_timestamps")
        post_ids, actions, timestamps = (
            np.asarray(req[n], dtype=np.int64).reshape(-1) for n in names
        )
        if not post_ids.shape == actions.shape == timestamps.shape:
            return f"{', '.join(names)} differ in length"
        top = self.service.n_actions - 1
        if actions.size and (actions.min() < 0 or actions.max() > top):
            return f"history_actions must be action codes in [0, {top}]"
        if post_ids.size and post_ids.min() < 0:
            return "history_post_ids must be >= 0"
        candidates = np.asarray(req["candidate_ids"], dtype=np.int64).reshape(-1)
        if candidates.size and candidates.min() <= 0:
            return "candidate_ids must be positive post ids"
        rt = req.get("request_time")
        request_time = now if rt is None else int(np.asarray(rt).reshape(-1)[0])
        return RankRequest(post_ids, actions, timestamps, candidates, request_time)

    def handle(self, batch: Sequence[Request]) -> list[Result]:
        results: list[Result] = ["" for _ in batch]
        now = int(time.time())
        rows: list[int] = []
        parsed: list[RankRequest] = []
        for i, req in enumerate(batch):
            item = self._parse(req, now)
            if isinstance(item, str):
                results[i] = item
                continue
            rows.append(i)
            parsed.append(item)
        for row, s in zip(rows, self.service.score(parsed), strict=True):
            results[row] = {"scores": s}
        return results


HANDLERS: dict[str, type[EncoderHandler] | type[IndexHandler] | type[RankerHandler]] = {
    "retrieval_encoder": EncoderHandler,
    "post_index": IndexHandler,
    "generative_ranker": RankerHandler,
}


def build_handler(
    model_name: str, settings: ModelSettings | None = None, version_dir: Path | None = None
) -> Handler:
    """The handler of ``model_name``; ``version_dir`` is the Triton model version directory."""
    if model_name not in HANDLERS:
        raise KeyError(f"unknown model {model_name!r}; known: {sorted(HANDLERS)}")
    return HANDLERS[model_name].from_settings(settings or ModelSettings(), version_dir)
