"""The retrieval encoder: mean and last-token pooling, local encoder and decoder models, the
fingerprint (embedding-space id). Models are tiny and randomly initialised, built in the test
(BERT with MiniLM's tokenizer files, GPT-2 with a tokenizer trained here): nothing downloads."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from feedserve.models.encoder import (
    ENCODER_CONFIG,
    TextEncoder,
    compute_fingerprint,
    default_base_model,
    export_encoder,
    load_encoder_config,
    pool,
)

SPECIAL = ["<views_p0>", "<views_p50>", "<views_p99>"]
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)
EOS = "<|endoftext|>"
CORPUS = [
    "machine learning engineers share notes on embedding retrieval",
    "kubernetes autoscaling and gpu cluster scheduling",
    "the quick brown fox jumps over the lazy dog",
    "sales pipeline and quarterly forecasting",
]


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from a second thread, and on a busy machine OpenMP threads
    waiting for each other make them an order of magnitude slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_bert(path: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-wide random BERT with MiniLM's tokenizer."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        src = default_base_model() / name
        if src.is_file():
            shutil.copy(src, path / name)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(str(path))
    return path


def tiny_gpt2(path: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-wide random GPT-2 with a byte-level BPE trained on a few sentences and no
    pad token (as decoders usually ship)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2Model, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS)
    assert fast.pad_token is None
    path.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(path))
    eos_id = tok.token_to_id(EOS)
    config = GPT2Config(
        vocab_size=len(fast),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=128,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
    )
    GPT2Model(config).save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def bert_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bert(tmp_path_factory.mktemp("bert-base"))


@pytest.fixture(scope="module")
def gpt2_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_gpt2(tmp_path_factory.mktemp("gpt2-base"))


# --------------------------------------------------------------------------- pooling


def test_mean_and_last_pooling_honour_right_padding() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    mean = pool(hidden, mask, "mean")
    last = pool(hidden, mask, "last")
    for row, n in enumerate((5, 2, 1)):
        torch.testing.assert_close(mean[row], hidden[row, :n].mean(dim=0))
        torch.testing.assert_close(last[row], hidden[row, n - 1])
    # what sits in padded positions never matters
    noisy = hidden.clone()
    noisy[mask == 0] = 1e6
    torch.testing.assert_close(pool(noisy, mask, "mean"), mean)
    torch.testing.assert_close(pool(noisy, mask, "last"), last)
    assert not torch.allclose(mean, last)
    with pytest.raises(ValueError, match="unknown pooling"):
        pool(hidden, mask, "max")


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_padding_does_not_change_an_embedding(
    kind: str, bert_base: Path, gpt2_base: Path, tmp_path: Path
) -> None:
    base, pooling = (bert_base, "mean") if kind == "bert" else (gpt2_base, "last")
    export_encoder(tmp_path / "enc", SPECIAL, base=base, pooling=pooling)  # type: ignore[arg-type]
    enc = TextEncoder(tmp_path / "enc")
    assert enc.config.pooling == pooling
    short, long = "fox", " ".join(CORPUS)
    alone = enc.encode_texts([short])
    batched = enc.encode_texts([short, long])  # the short row is right-padded here
    np.testing.assert_allclose(alone[0], batched[0], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    assert batched.shape == (2, enc.dim) == (2, 32)


def test_last_token_pooling_is_the_decoder_state_at_the_last_token(
    gpt2_base: Path, tmp_path: Path
) -> None:
    cfg = export_encoder(tmp_path / "enc", SPECIAL, base=gpt2_base, pooling="last")
    enc = TextEncoder(tmp_path / "enc")
    ids = enc.tokenizer.encode("kubernetes autoscaling <views_p99>")
    assert int(ids[-1]) == enc.tokenizer.token_id("<views_p99>")
    with torch.no_grad():
        hidden = enc.model(input_ids=torch.from_numpy(ids)[None]).last_hidden_state[0]
    want = torch.nn.functional.normalize(hidden[-1], dim=-1).numpy()
    np.testing.assert_allclose(enc.encode_ids([ids])[0], want, atol=1e-5)
    # causal: the last-token embedding depends on the whole prompt, mean pooling differs
    assert cfg.pooling == "last"
    mean_cfg = export_encoder(tmp_path / "mean", SPECIAL, base=gpt2_base, pooling="mean")
    mean = TextEncoder(tmp_path / "mean").encode_ids([ids])[0]
    assert not np.allclose(mean, want, atol=1e-3)
    assert mean_cfg.fingerprint != cfg.fingerprint


def test_decoder_export_sets_pad_to_eos_and_adds_the_bucket_tokens(
    gpt2_base: Path, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    export_encoder(tmp_path / "enc", SPECIAL, base=gpt2_base, pooling="last")
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "enc"), local_files_only=True)
    assert tok.pad_token == EOS
    enc = TextEncoder(tmp_path / "enc")
    weight = enc.model.get_input_embeddings().weight
    assert weight.shape[0] == enc.tokenizer.vocab_size == len(tok)
    rows = [enc.tokenizer.token_id(t) for t in SPECIAL]
    assert all(r is not None and r >= weight.shape[0] - len(SPECIAL) for r in rows)
    with pytest.raises(ValueError, match="pooling"):
        export_encoder(tmp_path / "bad", SPECIAL, base=gpt2_base, pooling="max")  # type: ignore[arg-type]


def test_bert_export_resizes_embeddings(bert_base: Path, tmp_path: Path) -> None:
    cfg = export_encoder(tmp_path / "enc", SPECIAL, base=bert_base)
    enc = TextEncoder(tmp_path / "enc")
    assert cfg.pooling == "mean" and cfg.dim == 32 and cfg.special_tokens == SPECIAL
    assert enc.model.get_input_embeddings().weight.shape[0] == 30522 + len(SPECIAL)
    ids = enc.tokenizer.encode("[post] engagement: <views_p99>")
    assert enc.tokenizer.token_id("<views_p99>") in ids.tolist()


# --------------------------------------------------------------------------- fingerprint


def test_fingerprint_is_stable(bert_base: Path, tmp_path: Path) -> None:
    a = export_encoder(tmp_path / "a", SPECIAL, base=bert_base)
    b = export_encoder(tmp_path / "b", SPECIAL, base=bert_base)
    assert a.fingerprint and len(a.fingerprint) == 16
    assert a.fingerprint == b.fingerprint  # same weights, tokens, pooling: same space
    assert load_encoder_config(tmp_path / "a").fingerprint == a.fingerprint
    assert TextEncoder(tmp_path / "b").fingerprint == a.fingerprint
    # a moved copy keeps its fingerprint: it depends on contents, not paths
    shutil.copytree(tmp_path / "a", tmp_path / "moved")
    assert load_encoder_config(tmp_path / "moved").fingerprint == a.fingerprint


def test_fingerprint_changes_with_weights_tokens_and_pooling(
    bert_base: Path, tmp_path: Path
) -> None:
    base = export_encoder(tmp_path / "a", SPECIAL, base=bert_base).fingerprint
    other_tokens = export_encoder(tmp_path / "b", [*SPECIAL, "<likes_p0>"], base=bert_base)
    other_pooling = export_encoder(tmp_path / "c", SPECIAL, base=bert_base, pooling="last")
    other_weights = export_encoder(
        tmp_path / "d", SPECIAL, base=tiny_bert(tmp_path / "bert-seed1", seed=1)
    )
    prints = {base, other_tokens.fingerprint, other_pooling.fingerprint, other_weights.fingerprint}
    assert len(prints) == 4
    assert compute_fingerprint(tmp_path / "a", SPECIAL, "mean") == base
    assert compute_fingerprint(tmp_path / "a", SPECIAL, "mean", normalize=False) != base


def test_old_config_without_fingerprint_gets_one(bert_base: Path, tmp_path: Path) -> None:
    cfg = export_encoder(tmp_path / "enc", SPECIAL, base=bert_base)
    path = tmp_path / "enc" / ENCODER_CONFIG
    old = json.loads(path.read_text())
    del old["fingerprint"]
    path.write_text(json.dumps(old))
    assert load_encoder_config(tmp_path / "enc").fingerprint == cfg.fingerprint
    assert TextEncoder(tmp_path / "enc").config.fingerprint == cfg.fingerprint


def test_missing_weights_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no model weights"):
        compute_fingerprint(tmp_path, SPECIAL, "mean")
