"""The prompt tokenizer: the retrieval encoder's vocabulary plus the bucket special tokens.

Featurizer workers tokenize prompts with this class (the fast ``tokenizers`` library only, no
torch); the retrieval encoder uses the very same ``tokenizer.json`` when it is handed text.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Encoding, Tokenizer

from feedserve.prompts import SplittingCounter, TokenCounter, tokenizer_counter


class PromptTokenizer:
    """Wraps a Hugging Face fast tokenizer file; truncates to ``max_length`` tokens."""

    def __init__(self, tokenizer_file: Path, max_length: int) -> None:
        if not tokenizer_file.is_file():
            raise FileNotFoundError(
                f"tokenizer file {tokenizer_file} is missing: run `feedserve build` first"
            )
        self._tok = Tokenizer.from_file(str(tokenizer_file))
        counter = Tokenizer.from_file(str(tokenizer_file))
        counter.no_truncation()
        counter.no_padding()
        self._counter = _LastEncoding(counter)
        self.count_tokens: TokenCounter = tokenizer_counter(self._counter)
        """Tokens a text takes, including the [CLS]/[SEP] the encoder adds (a counter the
        prompt library recognises as adding up over its separators)."""
        count = self.count_tokens
        self._ids: Callable[[str], list[int] | None] = (
            count.ids if isinstance(count, SplittingCounter) else lambda text: None
        )
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=max_length)
        self.max_length = max_length

    @classmethod
    def from_dir(cls, encoder_dir: Path, max_length: int) -> PromptTokenizer:
        return cls(encoder_dir / "tokenizer.json", max_length)

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def token_id(self, token: str) -> int | None:
        value = self._tok.token_to_id(token)
        return None if value is None else int(value)

    def encode(self, text: str) -> np.ndarray:
        """Token ids (int64), truncated to ``max_length``."""
        ids = self._ids(text)  # word-piece ids from memoized chunks (see WordPieceCounter)
        if ids is None:
            ids = self._counter.last_ids(text)  # the prompt renderer just counted this text
        if ids is None or len(ids) > self.max_length:
            ids = self._tok.encode(text).ids
        return np.asarray(ids, dtype=np.int64)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=np.int64) for e in self._tok.encode_batch(list(texts))]


class _LastEncoding:
    """A counting tokenizer that remembers, per thread, the ids of the text it encoded last.

    The prompt renderer's last count is of the prompt it returns (its check of the budget
    search), which ``PromptTokenizer.encode`` is asked for next: within ``max_length``
    those ids are the truncating tokenizer's too, so the prompt is tokenized once, not twice.
    Per thread, because featurizer workers run tasks in threads."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._last = threading.local()

    def __getattr__(self, name: str) -> Any:  # pre_tokenizer, truncation, padding, ...
        return getattr(self._tokenizer, name)

    def encode(self, text: str, add_special_tokens: bool = True) -> Encoding:
        encoding = self._tokenizer.encode(text, add_special_tokens=add_special_tokens)
        if add_special_tokens:
            self._last.text, self._last.ids = text, encoding.ids
        return encoding

    def last_ids(self, text: str) -> list[int] | None:
        if getattr(self._last, "text", None) == text:
            ids: list[int] = self._last.ids
            return ids
        return None
