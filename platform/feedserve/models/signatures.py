"""Input/output signatures of the Triton models — the one place tensor names and types live.

``model_repo/*/config.pbtxt`` must agree with these (a test parses every config and runs every
``model.py`` against them), and the gateway's Triton client builds its requests from them.
Every model batches (``max_batch_size`` > 0); dims exclude the batch dimension. Variable-length
inputs allow ragged batching, so requests of different lengths share one ``execute`` call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TRITON_DTYPES: dict[str, type[np.generic]] = {
    "INT32": np.int32,
    "INT64": np.int64,
    "FP32": np.float32,
    "BYTES": np.object_,
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # Triton datatype without the TYPE_ prefix
    dims: tuple[int, ...]
    optional: bool = False
    ragged: bool = False

    @property
    def numpy_dtype(self) -> type[np.generic]:
        return TRITON_DTYPES[self.dtype]


@dataclass(frozen=True)
class ModelSignature:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(f"{self.name} has no input {name!r}")

    def output(self, name: str) -> TensorSpec:
        for spec in self.outputs:
            if spec.name == name:
                return spec
        raise KeyError(f"{self.name} has no output {name!r}")


RETRIEVAL_ENCODER = ModelSignature(
    name="retrieval_encoder",
    inputs=(
        TensorSpec("input_ids", "INT64", (-1,), optional=True, ragged=True),
        TensorSpec("text", "BYTES", (1,), optional=True),
    ),
    outputs=(
        TensorSpec("embedding", "FP32", (-1,)),
        # the encoder's fingerprint: nearline records carry it so that an index only takes
        # vectors from the embedding space of its own snapshot
        TensorSpec("space", "BYTES", (1,)),
    ),
    max_batch_size=64,
)

POST_INDEX = ModelSignature(
    name="post_index",
    inputs=(
        # the query is either an embedding, or posts whose mean embedding is the query
        # (the session-context source: "more like what was engaged with in this session")
        TensorSpec("query", "FP32", (-1,), optional=True),
        TensorSpec("query_post_ids", "INT64", (-1,), optional=True, ragged=True),
        TensorSpec("k", "INT32", (1,)),
        TensorSpec("exclude_ids", "INT64", (-1,), optional=True, ragged=True),
        TensorSpec("blocked_author_ids", "INT64", (-1,), optional=True, ragged=True),
    ),
    outputs=(
        TensorSpec("post_ids", "INT64", (-1,)),
        TensorSpec("scores", "FP32", (-1,)),
    ),
    max_batch_size=64,
)

GENERATIVE_RANKER = ModelSignature(
    name="generative_ranker",
    inputs=(
        TensorSpec("history_post_ids", "INT64", (-1,), ragged=True),
        TensorSpec("history_actions", "INT64", (-1,), ragged=True),
        TensorSpec("history_timestamps", "INT64", (-1,), ragged=True),
        TensorSpec("candidate_ids", "INT64", (-1,), ragged=True),
        # unix seconds the candidates are scored at (default: the server's clock)
        TensorSpec("request_time", "INT64", (1,), optional=True),
    ),
    outputs=(TensorSpec("scores", "FP32", (-1,)),),
    max_batch_size=32,
)

SIGNATURES: dict[str, ModelSignature] = {
    s.name: s for s in (RETRIEVAL_ENCODER, POST_INDEX, GENERATIVE_RANKER)
}
