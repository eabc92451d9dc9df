"""Versioned prompt templates for members and posts, with token-budget truncation.

What a prompt may contain is decided by explicit allow-lists (``*_PROMPT_FIELDS``); templates
read model fields only through :func:`read_field`, which refuses any field not on the list of the
role it is read for. Demographics (age band, gender, ethnicity) and location are on no list, and
an import-time check makes sure no allow-list ever names a :data:`PROTECTED_FIELDS` entry.

Templates are registered per ``(kind, version)``; ``v2`` can be added with
:func:`register_template` without touching ``v1``, and an already registered version can never be
replaced.

Truncation keeps the most useful parts under a token budget. Every step asks the caller's token
counter about the *whole* prompt it would produce (no additivity is assumed, so it works with a
real tokenizer that adds ``[CLS]``/``[SEP]``), and each step is an exponential-then-binary search
over how many items of one section to keep (:func:`max_fitting`): the number of counter calls is
logarithmic in what is kept and independent of the length of a member's history.

Member prompt v1, in priority order (each stage keeps as many items as still fit):

1. profile header (title, headline, industry, seniority) — always; ``ValueError`` if it alone
   exceeds the budget;
2. the newest engaged post (falls back to just its action and topic if the full item is too
   long);
3. the first 5 skills;
4. the most recent position;
5. more recent activity, newest first (oldest items are the ones dropped);
6. the remaining skills, in the member's order;
7. the remaining positions, most recent first;
8. education.

Stages 3–4 reserve a little room for the strongest profile signals before a long history takes
the rest. In the rendered text, activity is always in chronological order (oldest kept item
first, newest last). Only engagements count as activity (impressions are skipped), and member
prompts never contain engagement counts.

Post prompt v1: the header (format, author, engagement buckets, topic) always; the article
metadata next (all or nothing); then the text, cut at a word boundary with ``…``.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from types import MappingProxyType
from typing import Any, Literal, Protocol, overload

from pydantic import BaseModel

from feedserve.contracts import (
    COUNT_KINDS,
    ENGAGEMENT_ACTIONS,
    Action,
    ArticleMeta,
    Education,
    EngagementCounts,
    Member,
    Position,
    Post,
)
from feedserve.prompts.buckets import BucketTable

__all__ = [
    "ARTICLE_PROMPT_FIELDS",
    "AUTHOR_PROMPT_FIELDS",
    "EDUCATION_PROMPT_FIELDS",
    "MEMBER_PROMPT_FIELDS",
    "POSITION_PROMPT_FIELDS",
    "POST_PROMPT_FIELDS",
    "PROMPT_FIELD_ALLOWLISTS",
    "PROMPT_VERSION",
    "PROTECTED_FIELDS",
    "ActivityItem",
    "FieldNotAllowedError",
    "MemberTemplate",
    "PostTemplate",
    "SplittingCounter",
    "TemplateKind",
    "TokenCounter",
    "UnknownPromptVersionError",
    "WordPieceCounter",
    "adds_up",
    "approx_token_count",
    "get_template",
    "max_fitting",
    "normalize_text",
    "prompt_versions",
    "read_field",
    "register_template",
    "render_member_prompt",
    "render_post_prompt",
    "tokenizer_counter",
    "truncate_words",
]

PROMPT_VERSION = "v1"
"""The template version used when a caller does not ask for one."""

TemplateKind = Literal["member", "post"]

# --------------------------------------------------------------------------------------------
# Allow-lists: the only fields a prompt may read
# --------------------------------------------------------------------------------------------

PROTECTED_FIELDS: frozenset[str] = frozenset(
    {"demographics", "age_band", "gender", "ethnicity", "location"}
)
"""Fields that must never reach a prompt, whatever the role."""

MEMBER_PROMPT_FIELDS: frozenset[str] = frozenset(
    {"headline", "title", "industry", "seniority", "skills", "positions", "education"}
)
"""Member fields a member prompt may read (not the name: it is a proxy for protected traits)."""

AUTHOR_PROMPT_FIELDS: frozenset[str] = frozenset({"name", "headline"})
"""Member fields a post prompt may read about the post's author."""

POST_PROMPT_FIELDS: frozenset[str] = frozenset({"format", "topic", "text", "article"})
POSITION_PROMPT_FIELDS: frozenset[str] = frozenset({"title", "company", "start_year", "end_year"})
EDUCATION_PROMPT_FIELDS: frozenset[str] = frozenset({"school", "degree", "field"})
ARTICLE_PROMPT_FIELDS: frozenset[str] = frozenset({"title", "domain", "reading_minutes"})

PROMPT_FIELD_ALLOWLISTS: Mapping[str, tuple[type[BaseModel], frozenset[str]]] = MappingProxyType(
    {
        "member": (Member, MEMBER_PROMPT_FIELDS),
        "author": (Member, AUTHOR_PROMPT_FIELDS),
        "post": (Post, POST_PROMPT_FIELDS),
        "position": (Position, POSITION_PROMPT_FIELDS),
        "education": (Education, EDUCATION_PROMPT_FIELDS),
        "article": (ArticleMeta, ARTICLE_PROMPT_FIELDS),
    }
)
"""Role → (record type, fields a template may read from it in that role)."""


def _check_allowlists() -> None:
    for role, (model, fields) in PROMPT_FIELD_ALLOWLISTS.items():
        leaked = fields & PROTECTED_FIELDS
        if leaked:
            raise RuntimeError(f"prompt allow-list {role!r} names protected fields {leaked}")
        unknown = fields - set(model.model_fields)
        if unknown:
            raise RuntimeError(f"prompt allow-list {role!r} names unknown fields {unknown}")


_check_allowlists()


class FieldNotAllowedError(Exception):
    """A template tried to read a field that is not on its role's allow-list."""


def read_field(obj: BaseModel, field: str, role: str) -> object:
    """Read ``obj.<field>`` for a prompt, enforcing the allow-list of ``role``.

    Raises :class:`FieldNotAllowedError` for an unknown role, a record of the wrong type for the
    role, or a field that the role's allow-list does not name.
    """
    try:
        model, allowed = PROMPT_FIELD_ALLOWLISTS[role]
    except KeyError:
        raise FieldNotAllowedError(
            f"unknown prompt role {role!r}; roles: {', '.join(PROMPT_FIELD_ALLOWLISTS)}"
        ) from None
    if not isinstance(obj, model):
        raise FieldNotAllowedError(
            f"role {role!r} reads {model.__name__} records, got {type(obj).__name__}"
        )
    if field not in allowed:
        raise FieldNotAllowedError(
            f"field {field!r} of {model.__name__} is not on the {role!r} prompt allow-list"
        )
    value: object = getattr(obj, field)
    return value


def _read_str(obj: BaseModel, field: str, role: str) -> str:
    value = read_field(obj, field, role)
    if not isinstance(value, str):
        raise TypeError(f"{role}.{field} must be a string, got {type(value).__name__}")
    return value


def _read_int(obj: BaseModel, field: str, role: str) -> int | None:
    value = read_field(obj, field, role)
    if value is not None and not isinstance(value, int):
        raise TypeError(f"{role}.{field} must be an int, got {type(value).__name__}")
    return value


def _read_list(obj: BaseModel, field: str, role: str) -> list[Any]:
    value = read_field(obj, field, role)
    if not isinstance(value, list):
        raise TypeError(f"{role}.{field} must be a list, got {type(value).__name__}")
    return value


# --------------------------------------------------------------------------------------------
# Token counting
# --------------------------------------------------------------------------------------------

TokenCounter = Callable[[str], int]
"""Counts the tokens of a whole prompt; must not decrease when text is appended."""

PIECE_CACHE_SIZE = 65_536
"""Distinct prompt pieces whose token counts a :class:`SplittingCounter` remembers (a few MB)."""

_APPROX_RE = re.compile(r"\w{1,8}|[^\w\s]")


def approx_token_count(text: str) -> int:
    """A deterministic, tokenizer-free estimate: one token per run of up to 8 word characters
    and one per other non-space character. Appending text never lowers the count."""
    return len(_APPROX_RE.findall(text))


def tokenizer_counter(tokenizer: Any, *, add_special_tokens: bool = True) -> TokenCounter:
    """A :data:`TokenCounter` for a ``tokenizers.Tokenizer`` (or anything with a compatible
    ``encode``). With ``add_special_tokens`` the count includes ``[CLS]``/``[SEP]``, so the
    budget is the model's input length. The tokenizer must have truncation and padding off
    (``no_truncation()``/``no_padding()``), or counts would be capped or padded."""
    if getattr(tokenizer, "truncation", None) or getattr(tokenizer, "padding", None):
        raise ValueError(
            "tokenizer has truncation or padding enabled; call no_truncation() and no_padding() "
            "on it (or on a copy) before counting prompt tokens"
        )

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)

    if type(getattr(tokenizer, "pre_tokenizer", None)).__name__ == "BertPreTokenizer":
        return SplittingCounter(WordPieceCounter.build(tokenizer, count) or count)
    return count


class SplittingCounter:
    """A :data:`TokenCounter` that adds up over the prompt separators: text joined at a space
    or punctuation counts the sum of its parts (word-piece tokenizers behind BERT's
    pre-tokenizer, which splits there; :func:`approx_token_count`). Budget searches price
    candidates for such a counter piece by piece (see ``_PieceCounter``)."""

    __slots__ = ("_count", "piece")

    def __init__(self, count: TokenCounter, piece_cache_size: int = PIECE_CACHE_SIZE) -> None:
        self._count = count
        self.piece: TokenCounter = functools.lru_cache(maxsize=piece_cache_size)(count)
        """The same count, remembered for the last ``piece_cache_size`` distinct texts: prompt
        pieces (a post's title, a profile line) recur across requests, whole prompts rarely."""

    def __call__(self, text: str) -> int:
        return self._count(text)

    def ids(self, text: str) -> list[int] | None:
        """The token ids of ``text`` (with the special tokens) when the count knows them
        without asking the tokenizer (a :class:`WordPieceCounter`'s), else None."""
        ids = getattr(self._count, "ids", None)
        return None if ids is None else ids(text)


WORD_CACHE_SIZE = 262_144
"""Distinct words and chunks whose token ids a :class:`WordPieceCounter` remembers."""

_COUNTED_BY_WORDS = (
    (0x09, 0x0A),  # tab, line feed (become spaces)
    (0x0D, 0x0D),  # carriage return
    (0x20, 0x7E),  # printable ASCII
    (0xA0, 0x24F),  # Latin-1 supplement, Latin extended-A and -B (accents are stripped)
    (0x2010, 0x2027),  # dashes, curly quotes, bullets, the ellipsis
    (0x2030, 0x205E),  # per mille, primes, angle quotes, ...
    (0x20A0, 0x20C0),  # currency signs
)
"""Characters a :class:`WordPieceCounter` counts itself; text with any other is counted by the
tokenizer (CJK, emoji, combining marks, scripts with context-dependent case, ...)."""


class WordPieceCounter:
    """The :data:`TokenCounter` of a BERT word-piece tokenizer (and its token ids), computed
    from the memoized token ids of the text's whitespace-separated chunks.

    Such a tokenizer normalizes text character by character (controls dropped, whitespace
    made a space, accents stripped, lower case), splits it at whitespace and around every
    punctuation mark, and cuts each word into word pieces independently of the others: a
    text takes the word pieces of its chunks plus ``[CLS]``/``[SEP]``. Counting a prompt
    piece through ``tokenizers``' Python API costs ~50 µs, almost all of it the call, and a
    member prompt's budget search prices ~30 pieces the first time it sees them; here a piece
    costs a lower-casing (``str.translate`` beyond ASCII), a split and a lookup per chunk (a
    new chunk: its words' ids, the word-piece model running once per distinct word). The
    prompt's ids come the same way (``ids``): a 250-token prompt costs ~40 µs instead of the
    tokenizer's ~400.

    Exact by construction: the per-character normalization and the whitespace/punctuation
    classes are read off the tokenizer itself (``build``) for the characters in
    ``_COUNTED_BY_WORDS`` only, and checked on all of them together; a text with any other
    character, or with anything that could be an added token (``[SEP]``, ``<likes_p90>``),
    is counted by ``fallback``. Tests hold it equal to the tokenizer on generated text.
    """

    __slots__ = (
        "_added", "_added_start", "_ascii_lowers", "_chunk", "_fallback", "_other", "_prefix",
        "_suffix", "_table", "_word", "_words",
    )  # fmt: skip

    def __init__(
        self,
        table: Mapping[int, str],
        punctuation: str,
        word_pieces: Callable[[str], Sequence[int]],
        special: tuple[Sequence[int], Sequence[int]],
        added: Sequence[str],
        fallback: TokenCounter,
        word_cache_size: int = WORD_CACHE_SIZE,
    ) -> None:
        # only characters normalized to non-space text or to one space: str.split() then
        # splits where the tokenizer does
        self._table = {
            c: out for c, out in table.items() if out == " " or not any(ch.isspace() for ch in out)
        }
        known = "".join(chr(c) for c in sorted(self._table))
        self._other = re.compile(f"[^{_char_class(known)}]")
        punct = _char_class(punctuation)
        self._words = re.compile(f"[{punct}]|[^{punct}]+" if punct else ".+")
        # the alternation is slow to try at every position: first look for a first character
        starts = "".join({c for a in added if a for c in (a[0].lower(), a[0].upper())})
        self._added_start = re.compile(f"[{_char_class(starts)}]") if starts else None
        self._added = re.compile("|".join(re.escape(a) for a in added if a), re.IGNORECASE)
        self._ascii_lowers = all(
            self._table.get(c) == (" " if chr(c) in "\t\n\r" else chr(c).lower())
            for c in (0x09, 0x0A, 0x0D, *range(0x20, 0x7F))
        )
        """Whether the tokenizer normalizes ASCII by lower-casing it (then no table is used)."""
        self._word = functools.lru_cache(maxsize=word_cache_size)(
            lambda word: tuple(word_pieces(word))
        )
        self._chunk = functools.lru_cache(maxsize=word_cache_size)(self._chunk_ids)
        self._prefix, self._suffix = tuple(special[0]), tuple(special[1])
        """The special tokens' ids before and after the text's (``[CLS]`` and ``[SEP]``)."""
        self._fallback = fallback

    @classmethod
    def build(cls, tokenizer: Any, fallback: TokenCounter) -> WordPieceCounter | None:
        """For a ``tokenizers.Tokenizer`` with BERT's normalizer and pre-tokenizer and a
        word-piece model (None for any other); ``fallback`` counts what it cannot."""
        kinds = (type(getattr(tokenizer, a, None)).__name__ for a in _BERT_PARTS)
        if tuple(kinds) != tuple(_BERT_PARTS.values()):
            return None
        normalize = tokenizer.normalizer.normalize_str
        pre_tokenize = tokenizer.pre_tokenizer.pre_tokenize_str
        table: dict[int, str] = {}
        punctuation: set[str] = set()
        for lo, hi in _COUNTED_BY_WORDS:
            for code in range(lo, hi + 1):
                out = normalize(chr(code))
                kinds_of = [_char_kind(pre_tokenize, c) for c in out]
                if None in kinds_of or ("s" in kinds_of and out != " "):
                    continue  # split in a way this counter would not
                table[code] = out
                punctuation.update(c for c, k in zip(out, kinds_of, strict=True) if k == "p")
        every = "".join(chr(c) for c in table)
        if normalize(every) != every.translate(table):  # not character by character after all
            return None
        model = tokenizer.model

        def word_pieces(word: str) -> list[int]:
            return [t.id for t in model.tokenize(word)]

        added = [t.content for t in tokenizer.get_added_tokens_decoder().values()]
        bare = tokenizer.encode("a", add_special_tokens=False).ids
        full = tokenizer.encode("a", add_special_tokens=True).ids
        at = next((i for i in range(len(full)) if full[i : i + len(bare)] == bare), None)
        if not bare or at is None:
            return None
        special = (full[:at], full[at + len(bare) :])
        return cls(table, "".join(punctuation), word_pieces, special, added, fallback)

    def __call__(self, text: str) -> int:
        chunks = self._chunks(text)
        if chunks is None:
            return self._fallback(text)
        return len(self._prefix) + len(self._suffix) + sum(map(len, map(self._chunk, chunks)))

    def ids(self, text: str) -> list[int] | None:
        """The token ids of ``text`` with the special tokens, as the tokenizer gives them
        (no truncation); None for text this counter leaves to the tokenizer."""
        chunks = self._chunks(text)
        if chunks is None:
            return None
        return [*self._prefix, *itertools.chain.from_iterable(map(self._chunk, chunks)),
                *self._suffix]  # fmt: skip

    def _chunks(self, text: str) -> list[str] | None:
        """The normalized text's whitespace-separated chunks; None: leave it to the tokenizer."""
        if self._other.search(text) or self._may_hold_added(text):
            return None
        if text.isascii() and self._ascii_lowers:
            normalized = text.lower()
        else:
            normalized = text.translate(self._table)
            if self._may_hold_added(normalized):
                return None
        return normalized.split()

    def _chunk_ids(self, chunk: str) -> tuple[int, ...]:
        return tuple(itertools.chain.from_iterable(map(self._word, self._words.findall(chunk))))

    def _may_hold_added(self, text: str) -> bool:
        start = self._added_start
        return (
            start is not None and start.search(text) is not None and bool(self._added.search(text))
        )


_BERT_PARTS = {
    "normalizer": "BertNormalizer",
    "pre_tokenizer": "BertPreTokenizer",
    "model": "WordPiece",
}


def _char_kind(pre_tokenize: Callable[[str], list[tuple[str, Any]]], char: str) -> str | None:
    """How BERT's pre-tokenizer treats ``char`` between two letters: ``s`` (whitespace: a
    split, dropped), ``p`` (punctuation: a word of its own), ``w`` (part of the word)."""
    words = [w for w, _ in pre_tokenize(f"a{char}a")]
    if words == ["a", "a"]:
        return "s"
    if words == ["a", char, "a"]:
        return "p"
    if words == [f"a{char}a"]:
        return "w"
    return None


def _char_class(chars: str) -> str:
    """A regular-expression character class body matching exactly ``chars``."""
    return "".join(re.escape(c) for c in sorted(set(chars)))


def adds_up(count_tokens: TokenCounter) -> bool:
    return isinstance(count_tokens, SplittingCounter) or count_tokens is approx_token_count


# --------------------------------------------------------------------------------------------
# Text normalization
# --------------------------------------------------------------------------------------------

_WHITESPACE_CONTROLS = frozenset("\t\n\v\f\r\x1c\x1d\x1e\x1f\x85")
_CONTROL_TABLE: dict[int, str | None] = {
    c: (" " if chr(c) in _WHITESPACE_CONTROLS else None)
    for c in (*range(0x00, 0x20), *range(0x7F, 0xA0))
}
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
# Anything shaped like an added/special token: <likes_p99>, </s>, <|endoftext|>, [SEP], [cls] …
_ANGLE_TOKEN_RE = re.compile(r"<([^\s<>]{1,64})>")
_BRACKET_TOKEN_RE = re.compile(r"\[([A-Za-z_]{1,16})\]")
ELLIPSIS = "…"


def normalize_text(text: str) -> str:
    """Make user text safe and compact for a prompt.

    Control characters are stripped (the whitespace-like ones become spaces), lone surrogates
    are dropped, runs of whitespace collapse to one space, and token-shaped patterns lose their
    delimiters (``<likes_p99>`` → ``‹likes_p99›``, ``[SEP]`` → ``⟦SEP⟧``) so that user text can
    never produce a bucket or tokenizer special token. Non-ASCII letters and emoji are kept as
    they are (no Unicode normalization).
    """
    s = text.translate(_CONTROL_TABLE)
    s = _SURROGATE_RE.sub("", s)
    s = " ".join(s.split())
    s = _ANGLE_TOKEN_RE.sub("‹\\1›", s)
    return _BRACKET_TOKEN_RE.sub("⟦\\1⟧", s)


def truncate_words(text: str, max_words: int) -> str:
    """Keep the first ``max_words`` space-separated words of normalized text, ending in ``…``
    when something was cut. Cheap on very long text (stops splitting after ``max_words``)."""
    if max_words < 0:
        raise ValueError(f"max_words must be >= 0, got {max_words}")
    parts = text.split(" ", max_words)
    if len(parts) <= max_words:
        return text
    if max_words == 0:
        return ""
    return " ".join(parts[:max_words]) + ELLIPSIS


def _clean(text: str, max_words: int) -> str:
    return truncate_words(normalize_text(text), max_words)


# --------------------------------------------------------------------------------------------
# Budget search
# --------------------------------------------------------------------------------------------


def max_fitting(fits: Callable[[int], bool], lo: int, hi: int) -> int:
    """The largest ``k`` in ``[lo, hi]`` with ``fits(k)``, for a monotone predicate (if ``k``
    fits, every smaller ``k`` fits) and ``fits(lo)`` known to hold.

    Probes ``lo+1, lo+2, lo+4, …`` then bisects, so it calls ``fits`` O(log(k - lo)) times and
    never builds a candidate much larger than the answer (at most about twice as large).
    """
    if hi <= lo:
        return lo
    good, step = lo, 1
    while True:
        probe = min(lo + step, hi)
        if not fits(probe):
            bad = probe
            break
        good = probe
        if probe == hi:
            return hi
        step *= 2
    while bad - good > 1:
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good


class _PieceCounter:
    """Memoized token counts of prompt pieces, special tokens excluded.

    Prompt pieces meet at separators that start and end in punctuation or a space (``" | "``,
    ``": "``, ``", "``, ``"; "``), where a :class:`SplittingCounter` always splits; a prompt
    then takes exactly the sum of its pieces' tokens plus the special tokens. A budget search
    priced this way tokenizes each piece once instead of every candidate prompt whole (the
    member prompt's search tried ~15 prompts of up to 256 tokens). Callers check the sum
    against one real count of their answer.
    """

    __slots__ = ("_count", "_memo", "special")

    def __init__(self, count_tokens: TokenCounter) -> None:
        # a SplittingCounter remembers pieces across prompts (and processes' requests)
        self._count = (
            count_tokens.piece if isinstance(count_tokens, SplittingCounter) else count_tokens
        )
        self._memo: dict[str, int] = {}
        self.special = self._count("")

    def __call__(self, piece: str) -> int:
        n = self._memo.get(piece)
        if n is None:
            n = self._memo[piece] = self._count(piece) - self.special
        return n


class _Lazy:
    """Items rendered on first use (so a 10 000-item history costs only what is kept)."""

    __slots__ = ("_cache", "_n", "_render")

    def __init__(self, n: int, render: Callable[[int], str]) -> None:
        self._n = n
        self._render = render
        self._cache: dict[int, str] = {}

    def __len__(self) -> int:
        return self._n

    def get(self, i: int) -> str:
        item = self._cache.get(i)
        if item is None:
            item = self._cache[i] = self._render(i)
        return item


_SEP = " | "


def _section(label: str, body: str) -> str:
    return f"{_SEP}{label}: {body}" if body else ""


def _over_budget(budget: int, used: int, kind: str) -> ValueError:
    return ValueError(
        f"token budget {budget} is too small for the fixed {kind} prompt header "
        f"({used} tokens); raise the budget to at least {used}"
    )


def _check_budget(budget: int) -> None:
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise TypeError(f"budget must be an int, got {type(budget).__name__}")


# --------------------------------------------------------------------------------------------
# Template registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActivityItem:
    """One post a member engaged with (``activity`` sequences are oldest first)."""

    action: Action
    post: Post


class PostTemplate(Protocol):
    def __call__(
        self,
        post: Post,
        author: Member | None,
        counts: EngagementCounts,
        buckets: BucketTable,
        *,
        budget: int,
        count_tokens: TokenCounter,
    ) -> str: ...


class MemberTemplate(Protocol):
    def __call__(
        self,
        member: Member,
        activity: Sequence[ActivityItem],
        *,
        budget: int,
        count_tokens: TokenCounter,
    ) -> str: ...


class UnknownPromptVersionError(KeyError, ValueError):
    """No template is registered for this (kind, version)."""

    def __init__(self, kind: str, version: str, known: Sequence[str]) -> None:
        self.kind = kind
        self.version = version
        self.known = tuple(known)
        super().__init__(kind, version)

    def __str__(self) -> str:
        known = ", ".join(self.known) or "none"
        return f"unknown {self.kind} prompt version {self.version!r}; registered: {known}"


_REGISTRY: dict[tuple[str, str], PostTemplate | MemberTemplate] = {}


@overload
def register_template(kind: Literal["post"], version: str, template: PostTemplate) -> None: ...
@overload
def register_template(kind: Literal["member"], version: str, template: MemberTemplate) -> None: ...
def register_template(
    kind: TemplateKind, version: str, template: PostTemplate | MemberTemplate
) -> None:
    """Register a template; a registered (kind, version) can never be replaced."""
    if kind not in ("member", "post"):
        raise ValueError(f"template kind must be 'member' or 'post', got {kind!r}")
    if (kind, version) in _REGISTRY:
        raise ValueError(
            f"{kind} prompt template {version!r} is already registered; "
            "add a new version instead of changing an existing one"
        )
    _REGISTRY[(kind, version)] = template


@overload
def get_template(kind: Literal["post"], version: str) -> PostTemplate: ...
@overload
def get_template(kind: Literal["member"], version: str) -> MemberTemplate: ...
def get_template(kind: TemplateKind, version: str) -> PostTemplate | MemberTemplate:
    """The template for (kind, version); :class:`UnknownPromptVersionError` if none."""
    try:
        return _REGISTRY[(kind, version)]
    except KeyError:
        raise UnknownPromptVersionError(kind, version, prompt_versions(kind)) from None


def prompt_versions(kind: TemplateKind) -> tuple[str, ...]:
    """Registered versions of a template kind, sorted."""
    return tuple(sorted(v for k, v in _REGISTRY if k == kind))


def render_post_prompt(
    post: Post,
    author: Member | None,
    counts: EngagementCounts,
    buckets: BucketTable,
    *,
    budget: int,
    count_tokens: TokenCounter = approx_token_count,
    version: str = PROMPT_VERSION,
) -> str:
    """Render a post prompt with ``count_tokens(prompt) <= budget``.

    Raises :class:`UnknownPromptVersionError` for an unknown version and ``ValueError`` when the
    budget cannot hold the fixed header (format, author, engagement buckets, topic).
    """
    template = get_template("post", version)
    _check_budget(budget)
    return template(post, author, counts, buckets, budget=budget, count_tokens=count_tokens)


def render_member_prompt(
    member: Member,
    activity: Sequence[ActivityItem],
    *,
    budget: int,
    count_tokens: TokenCounter = approx_token_count,
    version: str = PROMPT_VERSION,
) -> str:
    """Render a member prompt with ``count_tokens(prompt) <= budget``; ``activity`` is oldest
    first. Raises :class:`UnknownPromptVersionError` for an unknown version and ``ValueError``
    when the budget cannot hold the profile header."""
    template = get_template("member", version)
    _check_budget(budget)
    return template(member, activity, budget=budget, count_tokens=count_tokens)


# --------------------------------------------------------------------------------------------
# v1 templates
# --------------------------------------------------------------------------------------------

# Word caps per field keep the fixed headers bounded whatever users type.
_V1_WORDS = {
    "name": 8,
    "headline": 32,
    "title": 16,
    "industry": 8,
    "topic": 8,
    "skill": 6,
    "company": 10,
    "school": 12,
    "degree": 8,
    "field": 8,
    "article_title": 24,
    "domain": 4,
}
_V1_ACTIVITY_SNIPPET_WORDS = 20
_V1_MEMBER_STAGES: tuple[tuple[str, int | None], ...] = (
    ("activity", 1),
    ("skills", 5),
    ("positions", 1),
    ("activity", None),
    ("skills", None),
    ("positions", None),
    ("education", None),
)


def _v1_position(pos: Position) -> str:
    title = _clean(_read_str(pos, "title", "position"), _V1_WORDS["title"])
    company = _clean(_read_str(pos, "company", "position"), _V1_WORDS["company"])
    start = _read_int(pos, "start_year", "position")
    end = _read_int(pos, "end_year", "position")
    head = f"{title} at {company}" if title and company else title or company
    years = f"{start}–{'present' if end is None else end}"
    return f"{head} ({years})" if head else years


def _v1_position_recency(pos: Position) -> tuple[bool, int, int]:
    end = _read_int(pos, "end_year", "position")
    start = _read_int(pos, "start_year", "position") or 0
    return (end is None, end if end is not None else start, start)


def _v1_education(edu: Education) -> str:
    degree = _clean(_read_str(edu, "degree", "education"), _V1_WORDS["degree"])
    field = _clean(_read_str(edu, "field", "education"), _V1_WORDS["field"])
    school = _clean(_read_str(edu, "school", "education"), _V1_WORDS["school"])
    what = " ".join(p for p in (degree, field) if p)
    return ", ".join(p for p in (what, school) if p)


def _v1_activity(item: ActivityItem, brief: bool) -> str:
    topic = _clean(_read_str(item.post, "topic", "post"), _V1_WORDS["topic"])
    head = f"{item.action.name} ({topic})" if topic else item.action.name
    if brief:
        return head
    snippet = _clean(_read_str(item.post, "text", "post"), _V1_ACTIVITY_SNIPPET_WORDS)
    return f"{head}: {snippet}" if snippet else head


def _render_member_v1(
    member: Member,
    activity: Sequence[ActivityItem],
    *,
    budget: int,
    count_tokens: TokenCounter,
    priced_by_pieces: bool = True,
) -> str:
    profile = [
        (label, _clean(_read_str(member, label, "member"), _V1_WORDS[label]))
        for label in ("title", "headline", "industry")
    ]
    profile.append(("seniority", normalize_text(_read_str(member, "seniority", "member"))))
    header = "[member] " + _SEP.join(f"{label}: {value}" for label, value in profile if value)

    raw_skills = _read_list(member, "skills", "member")
    skills = [s for s in (_clean(str(x), _V1_WORDS["skill"]) for x in raw_skills) if s]
    raw_positions = _read_list(member, "positions", "member")
    positions = [
        _v1_position(p) for p in sorted(raw_positions, key=_v1_position_recency, reverse=True)
    ]
    education = [e for e in map(_v1_education, _read_list(member, "education", "member")) if e]
    engaged = [a for a in activity if a.action in ENGAGEMENT_ACTIONS]
    n_act = len(engaged)
    # index 0 is the newest engagement; only the items that are tried get rendered
    recent = _Lazy(n_act, lambda i: _v1_activity(engaged[n_act - 1 - i], brief=False))
    newest_brief = _v1_activity(engaged[-1], brief=True) if engaged else ""
    sizes = {
        "activity": n_act,
        "skills": len(skills),
        "positions": len(positions),
        "education": len(education),
    }

    def sections(k: Mapping[str, int], brief: bool) -> list[tuple[str, str, list[str]]]:
        acts = [recent.get(i) for i in range(k["activity"] - 1, -1, -1)]
        if brief and acts:
            acts[-1] = newest_brief
        return [
            ("skills", ", ", skills[: k["skills"]]),
            ("experience", "; ", positions[: k["positions"]]),
            ("education", "; ", education[: k["education"]]),
            ("activity", "; ", acts),
        ]

    def build(k: Mapping[str, int], brief: bool) -> str:
        return header + "".join(
            _section(label, sep.join(items)) for label, sep, items in sections(k, brief)
        )

    pieces = _PieceCounter(count_tokens)

    def estimate(k: Mapping[str, int], brief: bool) -> int:
        total = pieces.special + pieces(header)
        for label, sep, items in sections(k, brief):
            if sep.join(items):  # an empty body leaves the section out
                total += pieces(f"{_SEP}{label}: {items[0]}")
                total += sum(pieces(sep + item) for item in items[1:])
        return total

    def search(price: Callable[[Mapping[str, int], bool], int]) -> tuple[dict[str, int], bool]:
        kept = dict.fromkeys(sizes, 0)
        brief = False

        def fits(section: str, n: int, brief: bool = False) -> bool:
            return price({**kept, section: n}, brief) <= budget

        used = price(kept, False)
        if used > budget:
            raise _over_budget(budget, used, "member")
        for section, cap in _V1_MEMBER_STAGES:
            if section == "activity" and brief:
                continue  # the newest item alone only fit without its text: nothing more will
            hi = sizes[section] if cap is None else min(cap, sizes[section])
            kept[section] = max_fitting(partial(fits, section, brief=brief), kept[section], hi)
            if section == "activity" and kept["activity"] == 0 and n_act and fits(section, 1, True):
                kept["activity"], brief = 1, True
        return kept, brief

    def exact(k: Mapping[str, int], brief: bool) -> int:
        return count_tokens(build(k, brief))

    if not (priced_by_pieces and adds_up(count_tokens)):  # tests hold both searches equal
        return build(*search(exact))
    kept, brief = search(estimate)
    prompt = build(kept, brief)
    if count_tokens(prompt) != estimate(kept, brief):  # a counter that does not add up
        prompt = build(*search(exact))
    return prompt


def _render_post_v1(
    post: Post,
    author: Member | None,
    counts: EngagementCounts,
    buckets: BucketTable,
    *,
    budget: int,
    count_tokens: TokenCounter,
) -> str:
    fmt = normalize_text(str(read_field(post, "format", "post")))
    if author is None:
        who = "unknown author"
    else:
        name = _clean(_read_str(author, "name", "author"), _V1_WORDS["name"])
        headline = _clean(_read_str(author, "headline", "author"), _V1_WORDS["headline"])
        who = ", ".join(p for p in (name, headline) if p) or "unknown author"
    engagement = " ".join(buckets.token(kind, counts.get(kind)) for kind in COUNT_KINDS)
    topic = _clean(_read_str(post, "topic", "post"), _V1_WORDS["topic"])

    article = ""
    meta = read_field(post, "article", "post")
    if isinstance(meta, ArticleMeta):
        a_title = _clean(_read_str(meta, "title", "article"), _V1_WORDS["article_title"])
        domain = _clean(_read_str(meta, "domain", "article"), _V1_WORDS["domain"])
        minutes = _read_int(meta, "reading_minutes", "article")
        where = ", ".join(p for p in (domain, f"{minutes} min" if minutes else "") if p)
        article = f"{a_title} ({where})" if where else a_title

    head = f"[post] format: {fmt}{_section('author', who)}{_section('engagement', engagement)}"
    tail = _section("topic", topic)
    words = normalize_text(_read_str(post, "text", "post")).split(" ")
    if words == [""]:
        words = []

    def build(with_article: bool, k_words: int) -> str:
        text = " ".join(words[:k_words]) + (ELLIPSIS if k_words < len(words) else "")
        return (
            head
            + (_section("article", article) if with_article else "")
            + tail
            + (_section("text", text) if k_words else "")
        )

    used = count_tokens(build(False, 0))
    if used > budget:
        raise _over_budget(budget, used, "post")
    with_article = bool(article) and count_tokens(build(True, 0)) <= budget
    k = max_fitting(lambda k: count_tokens(build(with_article, k)) <= budget, 0, len(words))
    return build(with_article, k)


register_template("member", "v1", _render_member_v1)
register_template("post", "v1", _render_post_v1)
