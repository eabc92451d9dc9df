"""Domain records shared by every process: members, posts, interactions.

These are the contracts between the data generator, the feature store, the featurizer pool and
the gateway. Ids are positive 64-bit integers so that they travel as tensors unchanged.
Demographic attributes are kept apart (``Member.demographics``) for auditing only: the prompt
library works from an allow-list and never reads them.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum

from pydantic import BaseModel, ConfigDict, Field

MAX_ID = 2**62


class Action(IntEnum):
    """Interaction kinds. Codes are stable: they are stored in history tensors (0 = padding)."""

    impression = 1
    click = 2
    like = 3
    comment = 4
    share = 5
    dwell = 6

    @classmethod
    def from_name(cls, name: str) -> Action:
        return cls[name]


ENGAGEMENT_ACTIONS: frozenset[Action] = frozenset(
    {Action.click, Action.like, Action.comment, Action.share, Action.dwell}
)
"""Actions that count as the member engaging with a post (impressions do not)."""

ACTION_STRENGTH: tuple[Action, ...] = (
    Action.impression,
    Action.click,
    Action.dwell,
    Action.like,
    Action.comment,
    Action.share,
)
"""Weakest to strongest: when several events of one member on one post are collapsed into
one (the ranker's sequences), the strongest action is kept."""


class PostFormat(StrEnum):
    text = "text"
    image = "image"
    video = "video"
    article = "article"


class Seniority(StrEnum):
    entry = "entry"
    mid = "mid"
    senior = "senior"
    lead = "lead"
    executive = "executive"


class Position(BaseModel):
    """One entry of a member's work history."""

    model_config = ConfigDict(frozen=True)

    title: str
    company: str
    start_year: int
    end_year: int | None = None


class Education(BaseModel):
    model_config = ConfigDict(frozen=True)

    school: str
    degree: str
    field: str


class Demographics(BaseModel):
    """Protected attributes. Stored for equity audits only; never enters a prompt or tensor."""

    model_config = ConfigDict(frozen=True)

    age_band: str | None = None
    gender: str | None = None
    ethnicity: str | None = None


class Member(BaseModel):
    model_config = ConfigDict(frozen=True)

    member_id: int = Field(gt=0, lt=MAX_ID)
    name: str
    headline: str
    title: str
    industry: str
    seniority: Seniority
    location: str
    skills: list[str] = Field(default_factory=list)
    positions: list[Position] = Field(default_factory=list)
    education: list[Education] = Field(default_factory=list)
    connections: list[int] = Field(default_factory=list)
    follows: list[int] = Field(
        default_factory=list, description="authors followed without a connection"
    )
    blocked_authors: list[int] = Field(
        default_factory=list, description="authors whose posts the member never sees"
    )
    demographics: Demographics = Field(default_factory=Demographics)


class ArticleMeta(BaseModel):
    model_config = ConfigDict(frozen=True)

    title: str
    domain: str
    reading_minutes: int = Field(ge=0)


class Post(BaseModel):
    model_config = ConfigDict(frozen=True)

    post_id: int = Field(gt=0, lt=MAX_ID)
    author_id: int = Field(gt=0, lt=MAX_ID)
    format: PostFormat
    topic: str
    text: str
    created_at: int = Field(ge=0, description="unix seconds")
    article: ArticleMeta | None = None


class Interaction(BaseModel):
    model_config = ConfigDict(frozen=True)

    member_id: int = Field(gt=0, lt=MAX_ID)
    post_id: int = Field(gt=0, lt=MAX_ID)
    action: Action
    ts: int = Field(ge=0, description="unix seconds")
    dwell_ms: int = Field(default=0, ge=0)


COUNT_KINDS: tuple[str, ...] = ("views", "likes", "comments", "shares")
"""Engagement counters kept per post; each becomes a percentile-bucket token in prompts."""

ACTION_TO_COUNT: dict[Action, str] = {
    Action.impression: "views",
    Action.like: "likes",
    Action.comment: "comments",
    Action.share: "shares",
}


class EngagementCounts(BaseModel):
    model_config = ConfigDict(frozen=True)

    views: int = Field(default=0, ge=0)
    likes: int = Field(default=0, ge=0)
    comments: int = Field(default=0, ge=0)
    shares: int = Field(default=0, ge=0)

    def get(self, kind: str) -> int:
        return int(getattr(self, kind))
