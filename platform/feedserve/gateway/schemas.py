"""Typed request and response bodies of the gateway's HTTP API (the OpenAPI docs come from here)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from feedserve.contracts import MAX_ID, ArticleMeta, PostFormat

ActionName = Literal["impression", "click", "like", "comment", "share", "dwell"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SessionIn(_Strict):
    engaged_post_ids: list[int] = Field(
        default_factory=list,
        max_length=100,
        description="posts engaged with in this session that may not be stored yet",
    )
    seen_post_ids: list[int] = Field(
        default_factory=list, max_length=1000, description="posts already shown in this session"
    )


class FeedRequest(_Strict):
    member_id: int = Field(gt=0, lt=MAX_ID, description="the member whose feed to build")
    count: int = Field(default=20, ge=1, le=100, description="how many posts to return")
    session: SessionIn | None = Field(default=None, description="optional session context")
    explain: bool = Field(
        default=False, description="include how the workflow ran (steps, modes, timings)"
    )

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"member_id": 42, "count": 10}]},
    )


class FeedItem(BaseModel):
    post_id: int
    author_id: int
    rank: int = Field(description="1-based position in the feed")
    score: float = Field(description="ranker score, or retrieval score when degraded")
    sources: list[str] = Field(description="candidate sources that proposed the post")
    format: str
    topic: str


class StepRun(BaseModel):
    step: str
    mode: str = Field(description="online | remote | offline | nearline | offline+nearline")
    status: str = Field(
        description="ok | fallback | stored (read a precomputed value) | computed-on-miss | "
        "held-by-model | failed"
    )
    ms: float = Field(description="the step's own time, once its inputs were ready")
    detail: str = ""
    start_ms: float = Field(default=0.0, description="when it started, from the request start")


class FeedExplain(BaseModel):
    workflow: str
    steps: list[StepRun] = Field(description="each step of the request path, in finish order")
    as_of: dict[str, float] = Field(
        default_factory=dict,
        description="unix time each embedding used was computed (its freshness)",
    )


class FeedResponse(BaseModel):
    member_id: int
    items: list[FeedItem]
    trace_id: str
    cold_start: bool = Field(description="unknown member: popular and fresh posts")
    degraded: bool = Field(description="a stage failed and a fallback answered")
    degraded_reasons: list[str] = Field(default_factory=list)
    explain: FeedExplain | None = Field(default=None, description="when the request asked")


class EventIn(_Strict):
    event_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="client id for idempotent retries; generated when absent",
    )
    member_id: int = Field(gt=0, lt=MAX_ID)
    post_id: int = Field(gt=0, lt=MAX_ID)
    action: ActionName
    ts: int | None = Field(default=None, ge=0, description="unix seconds; default: now")
    dwell_ms: int = Field(default=0, ge=0, le=86_400_000)


class EventsRequest(_Strict):
    events: list[EventIn] = Field(
        min_length=1, max_length=1000, description="engagement events, one batch"
    )


class EventsAccepted(BaseModel):
    accepted: int
    event_ids: list[str]


class PostIn(_Strict):
    post_id: int | None = Field(default=None, gt=0, lt=MAX_ID, description="default: assigned")
    author_id: int = Field(gt=0, lt=MAX_ID)
    format: PostFormat = PostFormat.text
    topic: str = Field(default="general", min_length=1, max_length=64)
    text: str = Field(min_length=1, max_length=10_000)
    created_at: int | None = Field(default=None, ge=0, description="unix seconds; default: now")
    article: ArticleMeta | None = None


class PostEdit(_Strict):
    """Fields to change; those left out keep their value. The author cannot change."""

    format: PostFormat | None = None
    topic: str | None = Field(default=None, min_length=1, max_length=64)
    text: str | None = Field(default=None, min_length=1, max_length=10_000)
    article: ArticleMeta | None = Field(default=None, description="null removes the article")

    @field_validator("format", "topic", "text", mode="before")
    @classmethod
    def _not_null(cls, value: object) -> object:
        """Every post has these: leave a field out to keep it, null cannot clear it."""
        if value is None:
            raise ValueError("may not be null (leave the field out to keep its value)")
        return value


class PostAccepted(BaseModel):
    post_id: int
    status: Literal["indexing"] = "indexing"


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, bool] = Field(default_factory=dict)


class ErrorDetail(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    error: str
    details: list[ErrorDetail] = Field(default_factory=list)
    trace_id: str | None = None
