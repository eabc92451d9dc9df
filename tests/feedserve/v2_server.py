"""A non-Triton Open Inference Protocol (v2) server for the Triton client's tests: KServe's
model server with stand-ins for feedserve's three models, each answering a simple function of
its inputs. Run as a process of its own (kserve cannot share one with tritonclient.grpc):

    python tests/feedserve/v2_server.py --http_port PORT MODEL [MODEL ...]
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
from kserve.errors import InvalidInput

SPACE = "stand-in-space"


def _output(name: str, arr: np.ndarray, datatype: str) -> InferOutput:
    out = InferOutput(name=name, shape=list(arr.shape), datatype=datatype)
    out.set_data_from_numpy(arr, binary_data=False)
    return out


def answer(model: str, inputs: dict[str, np.ndarray]) -> list[InferOutput]:
    """The stand-ins (batch of one): an embedding of the ids' count and sum; the first ``k``
    post ids from 100 up that are not excluded, scored down from 1; each candidate scored
    half its id plus the history length."""
    if model == "retrieval_encoder":
        ids = inputs["input_ids"][0]
        embedding = np.array([[len(ids), ids.sum(), 1.0]], dtype=np.float32)
        space = np.array([[SPACE.encode()]], dtype=np.object_)
        return [_output("embedding", embedding, "FP32"), _output("space", space, "BYTES")]
    if model == "post_index":
        k = int(inputs["k"].reshape(-1)[0])
        excluded = set(inputs.get("exclude_ids", np.zeros((1, 0), np.int64))[0].tolist())
        posts = [p for p in range(100, 100 + k + len(excluded)) if p not in excluded][:k]
        scores = np.array([[1.0 - i / k for i in range(k)]], dtype=np.float32)
        return [
            _output("post_ids", np.array([posts], dtype=np.int64), "INT64"),
            _output("scores", scores, "FP32"),
        ]
    if model == "generative_ranker":
        candidates = inputs["candidate_ids"][0].astype(np.float32)
        history = len(inputs["history_post_ids"][0])
        return [_output("scores", (candidates / 2 + history)[None, :], "FP32")]
    raise InvalidInput(f"no stand-in for {model}")


class StandIn(Model):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.ready = True

    async def predict(
        self,
        payload: InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> Any:
        inputs = {t.name: np.asarray(t.as_numpy()) for t in payload.inputs}
        return InferResponse(
            response_id=payload.id or "",
            model_name=self.name,
            infer_outputs=answer(self.name, inputs),
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--http_port", type=int, required=True)
    parser.add_argument("models", nargs="+")
    args, _ = parser.parse_known_args()
    ModelServer(http_port=args.http_port, enable_grpc=False).start(
        [StandIn(m) for m in args.models]
    )
