"""The operations a feed workflow is made of: each a signature plus an async implementation.

An implementation takes an ``OpContext`` (the clients it may use), its inputs by name and
the time it has left, and returns its outputs by name. It only adapts: the logic lives in
``feedserve.gateway.feed`` (merge, business rules), ``feedserve_featurizers.hydrate`` (behind
the ``Featurizer`` interface) and the models behind ``InferenceClient``.

Runtime representations of the value types (``spec.VALUE_TYPES``):

======================  ==================================================================
MemberId, Count         ``int``
Session                 ``SessionContext | None``
Timestamp               ``int`` (unix seconds)
MemberFeatures          the featurizer's dict (``hydrate.hydrate_member``), prompt removed
PromptTokens            ``np.ndarray`` of token ids (empty: no profile)
Embedding               ``Vec | None``
PostIndex               ``ModelHeld`` (a handle: the vectors live in the post_index model)
Candidates              ``list[tuple[int, float]]``
CandidateSet            ``list[feed.Candidate]``
PostMeta                the featurizer's dict (``hydrate.hydrate_candidates``)
Page                    ``list[int]``
======================  ==================================================================
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from feedserve.gateway import feed as rules
from feedserve.models.signatures import GENERATIVE_RANKER, RETRIEVAL_ENCODER
from feedserve.store.base import FeatureStore
from feedserve.triton_client import InferenceClient, OipV2Client, TritonError, tensor_text
from feedserve.workflow.spec import Mode, OpSignature
from feedserve_featurizers.client import Featurizer

ALL_MODES = frozenset({Mode.online, Mode.offline, Mode.nearline, Mode.offline_nearline})
REQUEST_ONLY = frozenset({Mode.online})
MATERIALIZED_ONLY = frozenset({Mode.offline, Mode.nearline, Mode.offline_nearline})


@dataclass(frozen=True)
class Vec:
    """An embedding with its provenance."""

    vector: np.ndarray
    space: str = ""
    computed_at: float = 0.0


@dataclass(frozen=True)
class ModelHeld:
    """A value that lives inside a served model (the online side holds only this handle)."""

    step: str
    model: str


@dataclass
class FeedConfig:
    retrieval_k: int = 200
    max_per_author: int = 2
    quotas: dict[str, int] | None = None


@dataclass
class OpContext:
    """What an operation may use. One per process; ops never open connections themselves."""

    featurizer: Featurizer
    triton: InferenceClient
    store: FeatureStore
    config: FeedConfig = field(default_factory=FeedConfig)
    remote: Callable[[str], OipV2Client] | None = None
    """Returns the client for a remote endpoint URL (``runner.RemoteClients``)."""
    encoder_space: Callable[[], Awaitable[str | None]] | None = None
    """The serving encoder's embedding space now (``EncoderSpace``): a stored embedding from
    another space (made before an encoder release) is treated as missing."""


class EncoderSpace:
    """Asks the serving retrieval encoder for its embedding space, at most every ``ttl_s``."""

    PROBE = np.array([101, 102], dtype=np.int64)  # [CLS] [SEP]: the smallest prompt

    def __init__(self, triton: InferenceClient, ttl_s: float = 30.0) -> None:
        self.triton = triton
        self.ttl_s = ttl_s
        self._space: str | None = None
        self._at = -float("inf")

    async def __call__(self) -> str | None:
        now = time.monotonic()
        if now - self._at >= self.ttl_s:
            self._at = now  # one probe per period, even when it fails
            with suppress(TritonError):  # down: keep the last known space, retry next period
                _, self._space = await self.triton.embed_ids_tagged(self.PROBE, timeout_s=2.0)
        return self._space


WANTED: ContextVar[frozenset[str] | None] = ContextVar("feedserve_wanted_outputs", default=None)
"""The outputs of the running step that this run consumes (set by the runner per step)."""


def wanted(output: str) -> bool:
    """Whether the running step's ``output`` is consumed in this run: an op may skip work
    for outputs nobody reads (e.g. the member prompt when the embedding is read, not made)."""
    outputs = WANTED.get()
    return outputs is None or output in outputs


EMIT: ContextVar[Callable[[str, Any], None] | None] = ContextVar(
    "feedserve_emit_output", default=None
)
"""Hands one of the running step's outputs to its consumers before the step finishes (set by
the runner per step, for the outputs its op declares ``early``)."""


def emitter() -> Callable[[str, Any], None] | None:
    """The running step's ``emit(output, value)``, or None when nothing can be emitted."""
    return EMIT.get()


Inputs = Mapping[str, Any]
Outputs = dict[str, Any]
Impl = Callable[[OpContext, Inputs, float], Awaitable[Outputs]]


@dataclass(frozen=True)
class RemoteAdapter:
    """How an op's inputs become Open Inference Protocol v2 tensors and back (remote mode)."""

    to_tensors: Callable[[Inputs], dict[str, np.ndarray]]
    from_tensors: Callable[[Inputs, Mapping[str, np.ndarray]], Outputs]
    default_model: str
    outputs: tuple[str, ...]
    """Response tensors to ask for."""


def _no_shortcut(_inp: Inputs) -> Outputs | None:
    return None


@dataclass(frozen=True)
class Op:
    signature: OpSignature
    run: Impl
    remote: RemoteAdapter | None = None
    shortcut: Callable[[Inputs], Outputs | None] = _no_shortcut
    """Outputs known without running the op, local or remote (nothing to embed, nothing to
    rank), else None."""
    encoder_space: bool = False
    """Its stored outputs are in the retrieval encoder's space (checked on every read)."""
    early: frozenset[str] = frozenset()
    """Outputs it may emit (``emitter()``) before it finishes: their consumers start then.
    An emitted value is final: the op returns the same value for it."""


OPS: dict[str, Op] = {}


def op(
    name: str,
    inputs: Mapping[str, str],
    outputs: Mapping[str, str],
    modes: frozenset[Mode] = REQUEST_ONLY,
    description: str = "",
    variadic: str = "",
    optional: frozenset[str] = frozenset(),
    remote: RemoteAdapter | None = None,
    shortcut: Callable[[Inputs], Outputs | None] = _no_shortcut,
    encoder_space: bool = False,
    early: frozenset[str] = frozenset(),
) -> Callable[[Impl], Impl]:
    def register(fn: Impl) -> Impl:
        sig = OpSignature(
            name, dict(inputs), dict(outputs), modes, description, variadic, optional,
            remote is not None,
        )  # fmt: skip
        OPS[name] = Op(sig, fn, remote, shortcut, encoder_space, frozenset(early))
        return fn

    return register


def _np(member: Inputs, key: str, dtype: type = np.int64) -> np.ndarray:
    return np.asarray(member[key], dtype=dtype)


# --- member ------------------------------------------------------------------------------------


@op(
    "hydrate_member",
    {"member_id": "MemberId", "session_context": "Session", "now": "Timestamp"},
    {"member": "MemberFeatures", "member_prompt": "PromptTokens"},
    modes=ALL_MODES,
    description="featurizer pool: profile, history, ranker tensors, candidate ids, and the "
    "member prompt's tokens when this run needs them",
    optional=frozenset({"session_context"}),
    early=frozenset({"member_prompt"}),
)
async def hydrate_member(ctx: OpContext, inp: Inputs, timeout_s: float) -> Outputs:
    session = inp.get("session_context")
    emit = emitter()
    with_prompt = wanted("member_prompt")
    on_prompt = None
    if emit is not None and with_prompt:

        def on_prompt(ids: np.ndarray) -> None:  # the embedding starts while hydration ends
            emit("member_prompt", np.asarray(ids, dtype=np.int64))

    member = dict(
        await ctx.featurizer.hydrate_member(
            int(inp["member_id"]), session, int(inp["now"]), with_prompt, on_prompt=on_prompt
        )
    )
    prompt = np.asarray(member.pop("input_ids", np.zeros(0)), dtype=np.int64)
    return {"member": member, "member_prompt": prompt}


def _embed_shortcut(inp: Inputs) -> Outputs | None:
    if not len(inp["member_prompt"]):  # no profile: nothing to embed
        return {"member_embedding": None}
    return None


def _embed_tensors(inp: Inputs) -> dict[str, np.ndarray]:
    return {"input_ids": np.asarray(inp["member_prompt"], dtype=np.int64)}


def _embed_result(inp: Inputs, out: Mapping[str, np.ndarray]) -> Outputs:
    space = out.get("space")
    tag = "" if space is None else tensor_text(space)
    vec = np.asarray(out["embedding"], dtype=np.float32).reshape(-1)
    return {"member_embedding": Vec(vec, tag, time.time())}


@op(
    "embed_member",
    {"member_prompt": "PromptTokens"},
    {"member_embedding": "Embedding"},
    modes=ALL_MODES,
    description="retrieval_encoder: the member prompt as one embedding",
    remote=RemoteAdapter(_embed_tensors, _embed_result, RETRIEVAL_ENCODER.name, ("embedding",)),
    shortcut=lambda inp: _embed_shortcut(inp),
    encoder_space=True,
)
async def embed_member(ctx: OpContext, inp: Inputs, timeout_s: float) -> Outputs:
    input_ids = np.asarray(inp["member_prompt"], dtype=np.int64)
    vector, space = await ctx.triton.embed_ids_tagged(input_ids, timeout_s=timeout_s)
    return {"member_embedding": Vec(np.asarray(vector, np.float32), space, time.time())}


@op(
    "embed_posts",
    {},
    {"post_index": "PostIndex"},
    modes=MATERIALIZED_ONLY,
    description="every post's embedding: `feedserve index build` offline, the post "
    "indexing consumers nearline",
)
async def embed_posts(ctx: OpContext, inp: Inputs, timeout_s: float) -> Outputs:
    raise NotImplementedError(  # never runs per key: see runner.run_offline / the post indexer
        "embed_posts runs as `feedserve run offline embed_posts` and as post indexing"
    )


# --- candidate sources -------------------------------------------------------------------------


@op(
    "retrieve_ebr",
    {"member": "MemberFeatures", "member_embedding": "Embedding", "post_index": "PostIndex"},
    {"ebr": "Candidates"},
    description="post_index: exhaustive top-k by the member embedding",
    optional=frozenset({"post_index"}),
)
async def retrieve_ebr(ctx: OpContext, inp: Inputs, timeout_s: float) -> Outputs:
    emb: Vec | None = inp["member_embedding"]
    if emb is None:
        return {"ebr": []}
    member = inp["member"]
    ids, scores = await ctx.triton.search(
        emb.vector,
        ctx.config.retrieval_k,
        _np(member, "seen_ids"),
        timeout_s=timeout_s,
        blocked_author_ids=_np(member, "blocked_author_ids"),
    )
    return {"ebr": _pairs(ids, scores)}


@op(
    "retrieve_session",
    {"member": "MemberFeatures", "session_context": "Session", "post_index": "PostIndex"},
    {"session": "Candidates"},
    description="post_index: posts like the ones engaged with in this session",
    optional=frozenset({"post_index", "session_context"}),
)
async def retrieve_session(ctx: OpContext, inp: Inputs, timeout_s: float) -> Outputs:
    session = inp.get("session_context")
    if session is None or not session.engaged_post_ids:
        return {"session": []}
    member = inp["member"]
    quotas = ctx.config.quotas or rules.DEFAULT_QUOTAS
    ids, scores = await ctx.triton.search(
        None,
        quotas.get("session", 0) or 1,
        _np(member, "seen_ids"),
        timeout_s=timeout_s,
        query_post_ids=np.array(session.engaged_post_ids, dtype=np.int64),
        blocked_author_ids=_np(member, "blocked_author_ids"),
    )
    return {"session": _pairs(ids, scores)}


def _id_source(name: str, field_name: str, description: str) -> None:
    async def run(ctx: OpContext, inp: Inputs, timeout_s: float) -> Outputs:
        return {name: rules.rank_scores(_np(inp["member"], field_name).tolist())}

    op(name=f"retrieve_{name}", inputs={"member": "MemberFeatures"},
       outputs={name: "Candidates"}, description=description)(run)  # fmt: skip


_id_source("network", "network_ids", "feature store: newest posts by connections and follows")
_id_source("popular", "popular_ids", "feature store: most engaged posts")
_id_source("fresh", "fresh_ids", "feature store: newest posts")


@op(
    "merge",
    {"member": "MemberFeatures"},
    {"candidates": "CandidateSet"},
    description="union of the sources with per-source quotas, seen posts removed",
    variadic="Candidates",
)
async def merge(ctx: OpContext, inp: Inputs, timeout_s: float) -> Outputs:
    sources = {k: v for k, v in inp.items() if k != "member" and v is not None}
    seen = set(_np(inp["member"], "seen_ids").tolist())
    merged = rules.merge_candidates(sources, ctx.config.quotas or rules.DEFAULT_QUOTAS, seen)
    return {"candidates": merged}


@op(
    "hydrate_candidates",
    {"member": "MemberFeatures", "candidates": "CandidateSet"},
    {"eligible": "CandidateSet", "post_meta": "PostMeta"},
    description="featurizer pool: candidate metadata; drops unknown posts and blocked authors",
)
async def hydrate_candidates(ctx: OpContext, inp: Inputs, timeout_s: float) -> Outputs:
    candidates: list[rules.Candidate] = inp["candidates"]
    meta = await ctx.featurizer.hydrate_candidates([c.post_id for c in candidates])
    blocked = set(_np(inp["member"], "blocked_author_ids").tolist())
    allowed = {
        int(p)
        for p, a in zip(np.asarray(meta["post_ids"]), np.asarray(meta["author_ids"]), strict=True)
        if int(a) not in blocked
    }
    return {"eligible": [c for c in candidates if c.post_id in allowed], "post_meta": meta}


# --- ranking and rules -------------------------------------------------------------------------

COLD_START_WEIGHT = {"popular": 1.0, "network": 0.9, "fresh": 0.8, "session": 0.75, "ebr": 0.7}


def cold_start_order(candidates: list[rules.Candidate]) -> list[rules.Candidate]:
    """No history to rank against: popularity first, then freshness."""
    scored = [
        replace(
            c,
            score=max(COLD_START_WEIGHT.get(s, 0.5) for s in c.sources)
            * (0.5 + 0.5 * c.retrieval_score),
        )
        for c in candidates
    ]
    return sorted(scored, key=lambda c: (-(c.score or 0.0), c.post_id))


def _rank_shortcut(inp: Inputs) -> Outputs | None:
    if not bool(inp["member"]["known"]):
        return {"ranked": cold_start_order(inp["candidates"])}
    if not inp["candidates"]:
        return {"ranked": []}
    return None


def _rank_tensors(inp: Inputs) -> dict[str, np.ndarray]:
    member = inp["member"]
    return {
        "history_post_ids": _np(member, "history_post_ids"),
        "history_actions": _np(member, "history_actions"),
        "history_timestamps": _np(member, "history_timestamps"),
        "candidate_ids": np.array([c.post_id for c in inp["candidates"]], dtype=np.int64),
        "request_time": np.array([int(member["request_time"])], dtype=np.int64),
    }


def _rank_result(inp: Inputs, out: Mapping[str, np.ndarray]) -> Outputs:
    return {"ranked": _ordered(inp["candidates"], np.asarray(out["scores"]).reshape(-1))}


def _ordered(candidates: list[rules.Candidate], scores: np.ndarray) -> list[rules.Candidate]:
    if len(scores) != len(candidates):
        raise TritonError("generative_ranker", "returned the wrong number of scores")
    scored = [  # built directly: dataclasses.replace introspects the fields per candidate
        rules.Candidate(c.post_id, c.sources, c.retrieval_score, s)
        for c, s in zip(candidates, scores.tolist(), strict=True)
    ]
    return sorted(scored, key=lambda c: (-(c.score or 0.0), c.post_id))


@op(
    "rank",
    {"member": "MemberFeatures", "candidates": "CandidateSet"},
    {"ranked": "CandidateSet"},
    description="generative_ranker: candidates scored against the member's history "
    "(cold-start members: popularity order); runs beside hydrate_candidates, whose "
    "eligibility post_rank_rules applies",
    remote=RemoteAdapter(_rank_tensors, _rank_result, GENERATIVE_RANKER.name, ("scores",)),
    shortcut=lambda inp: _rank_shortcut(inp),
)
async def rank(ctx: OpContext, inp: Inputs, timeout_s: float) -> Outputs:
    member = inp["member"]
    candidates: list[rules.Candidate] = inp["candidates"]
    ids = np.array([c.post_id for c in candidates], dtype=np.int64)
    scores = await ctx.triton.rank(member, ids, timeout_s=timeout_s)
    return {"ranked": _ordered(candidates, np.asarray(scores).reshape(-1))}


@op(
    "post_rank_rules",
    {"ranked": "CandidateSet", "eligible": "CandidateSet", "post_meta": "PostMeta",
     "count": "Count"},
    {"page": "Page"},
    description="business rules: eligible posts only (unknown posts, blocked authors), author "
    "diversity, page size",
)  # fmt: skip
async def post_rank_rules(ctx: OpContext, inp: Inputs, timeout_s: float) -> Outputs:
    meta = inp["post_meta"]
    author_of = dict(
        zip(np.asarray(meta["post_ids"]).tolist(), np.asarray(meta["author_ids"]).tolist(),
            strict=True)
    )  # fmt: skip
    allowed = {c.post_id for c in inp["eligible"]}
    ordered = [c.post_id for c in inp["ranked"] if c.post_id in allowed]
    page = rules.diversify(ordered, author_of, ctx.config.max_per_author, int(inp["count"]))
    return {"page": page}


# --- helpers -----------------------------------------------------------------------------------


def empty_value(vtype: str) -> Any:
    """What a fallback of ``empty`` gives for a value type."""
    return {"Candidates": [], "CandidateSet": [], "Page": [], "Embedding": None}.get(vtype)


def _pairs(ids: np.ndarray, scores: np.ndarray) -> list[tuple[int, float]]:
    return [(int(p), float(s)) for p, s in zip(ids.tolist(), scores.tolist(), strict=True)]


SIGNATURES: dict[str, OpSignature] = {name: o.signature for name, o in OPS.items()}
"""Every op's signature (``spec.check`` validates workflows against these)."""
