"""The prompt tokenizer: the retrieval encoder's vocabulary plus the bucket special tokens.

Featurizer workers tokenize prompts with this class (the fast ``tokenizers`` library only, no
torch); the retrieval encoder uses the very same ``tokenizer.json`` when it is handed text.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from feedserve.prompts import TokenCounter, tokenizer_counter


class PromptTokenizer:
    """Wraps a Hugging Face fast tokenizer file; truncates to ``max_length`` tokens."""

    def __init__(self, tokenizer_file: Path, max_length: int) -> None:
        if not tokenizer_file.is_file():
            raise FileNotFoundError(
                f"tokenizer file {tokenizer_file} is missing: run `feedserve build` first"
            )
        self._tok = Tokenizer.from_file(str(tokenizer_file))
        self._counter = Tokenizer.from_file(str(tokenizer_file))
        self._counter.no_truncation()
        self._counter.no_padding()
        self.count_tokens: TokenCounter = tokenizer_counter(self._counter)
        """Tokens a text takes, including the [CLS]/[SEP] the encoder adds (a counter the
        prompt library recognises as adding up over its separators)."""
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
        return np.asarray(self._tok.encode(text).ids, dtype=np.int64)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=np.int64) for e in self._tok.encode_batch(list(texts))]
