"""The featurizer as a KServe transformer, in front of the Triton predictor of
``retrieval_encoder``: ``python -m feedserve_featurizers.kserve_transformer`` (the container
command the operator gives an InferenceService's transformer, ``inference.kserve.transformer``).

A client asks for the embedding of a member or a post by id; ``preprocess`` featurizes with
the same pure functions the Celery tasks call (``hydrate.hydrate_member``: the member prompt's
token ids, from the profile and the recent engagements in the feature store;
``hydrate.post_prompt_ids``: a stored post's prompt), KServe sends the token ids to the
predictor over the Open Inference Protocol (v2), and the embedding and its space come back.
CPU featurization in front of the GPU model, for a KServe user, with no Celery.

- v2: ``POST /v2/models/retrieval_encoder/infer`` with one INT64 input ``member_id`` or
  ``post_id`` (shape [1]) and optionally ``now`` (INT64 [1], unix seconds: the member's history
  as of then; default: the clock); the answer is the predictor's (``embedding``, ``space``);
- v1: ``POST /v1/models/retrieval_encoder:predict`` with ``{"instances": [{"member_id": 7},
  {"post_id": 12}, ...]}`` (an instance may also carry ``now`` and a ``session``); the answer
  is ``{"predictions": [{"embedding": [...], "space": "..."}, ...]}``, one predictor call per
  instance (their prompts differ in length).

An unknown member or post, or a malformed request, is a 400 (``InvalidInput``). Settings:
``FeaturizerSettings`` (``FEEDSERVE_*``: the feature store, the artifacts); command line:
KServe's model server arguments (``--http_port``, ``--predictor_host``, ...; KServe adds
them in an InferenceService), with ``--model_name`` defaulting to ``retrieval_encoder`` and
``--predictor_protocol`` to ``v2``.

Its own process: ``kserve`` and ``tritonclient.grpc`` cannot be imported in one process (a
duplicate protobuf symbol), so nothing in feedserve imports this module.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import numpy as np
from kserve import InferInput, InferRequest, InferResponse, Model, ModelServer, model_server
from kserve.errors import InvalidInput
from kserve.predictor_config import PredictorConfig
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from feedserve.settings import FeaturizerSettings
from feedserve_featurizers import hydrate

MODEL = "retrieval_encoder"
ID_INPUTS = ("member_id", "post_id", "now")


class EmbedRequest(BaseModel):
    """What to embed: a member (as of ``now``, with this session) or a stored post."""

    model_config = ConfigDict(extra="forbid")

    member_id: int | None = Field(default=None, ge=0)
    post_id: int | None = Field(default=None, ge=0)
    now: int | None = Field(default=None, ge=0, description="unix seconds; default: the clock")
    session: hydrate.SessionContext | None = None

    @model_validator(mode="after")
    def _one_subject(self) -> EmbedRequest:
        if (self.member_id is None) == (self.post_id is None):
            raise ValueError("give exactly one of member_id and post_id")
        return self


def prompt_ids(ctx: hydrate.FeaturizerContext, request: EmbedRequest, now: int) -> np.ndarray:
    """The encoder's input for ``request``: the member or post prompt as token ids."""
    if request.post_id is not None:
        return np.asarray(hydrate.post_prompt_ids(ctx, request.post_id), dtype=np.int64)
    assert request.member_id is not None
    member = hydrate.hydrate_member(ctx, request.member_id, request.session, now)
    ids = np.asarray(member["input_ids"], dtype=np.int64)
    if not ids.size:
        raise KeyError(f"member {request.member_id} has no profile to embed")
    return ids


def parse_v2(request: InferRequest) -> EmbedRequest:
    """A v2 request's INT64 inputs (one value each) as an ``EmbedRequest``."""
    fields: dict[str, int] = {}
    for tensor in request.inputs:
        if tensor.name not in ID_INPUTS:
            raise InvalidInput(f"unknown input {tensor.name!r}; expected {', '.join(ID_INPUTS)}")
        values = np.asarray(tensor.as_numpy()).reshape(-1)
        if values.size != 1 or values.dtype.kind not in "iu":
            raise InvalidInput(f"input {tensor.name!r}: one integer (shape [1]) per request")
        fields[tensor.name] = int(values[0])
    return _validated(fields)


def parse_v1(body: dict[str, Any]) -> list[EmbedRequest]:
    instances = body.get("instances")
    if not isinstance(instances, list) or not instances:
        raise InvalidInput('expected {"instances": [{"member_id": ...} or {"post_id": ...}]}')
    return [_validated(i) for i in instances]


def _validated(raw: Any) -> EmbedRequest:
    try:
        return EmbedRequest.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(request)'}: {e['msg']}"
                             for e in exc.errors())  # fmt: skip
        raise InvalidInput(problems) from None


def predictor_request(ids: np.ndarray) -> InferRequest:
    """The predictor's v2 request: the token ids as a batch of one (JSON tensors)."""
    arr = np.asarray(ids, dtype=np.int64)[None, :]
    tensor = InferInput("input_ids", list(arr.shape), "INT64")
    tensor.set_data_from_numpy(arr, binary_data=False)
    return InferRequest(model_name=MODEL, infer_inputs=[tensor])


def prediction(response: InferResponse) -> dict[str, Any]:
    """One v1 prediction from the predictor's answer."""
    out = {o.name: np.asarray(o.as_numpy()) for o in response.outputs}
    space = out["space"].reshape(-1)[0]
    return {
        "embedding": [float(x) for x in out["embedding"].reshape(-1)],
        "space": space.decode() if isinstance(space, bytes) else str(space),
    }


class FeedTransformer(Model):
    """KServe's handlers, thin: parse, featurize (``prompt_ids``), shape tensors."""

    def __init__(self, name: str, settings: FeaturizerSettings) -> None:
        super().__init__(name)
        self.settings = settings
        self.ctx: hydrate.FeaturizerContext | None = None

    def load(self) -> bool:
        """The tokenizer, bucket tables and the feature store connection, once."""
        self.ctx = hydrate.FeaturizerContext.load(self.settings)
        self.ready = True
        return True

    def _ids(self, request: EmbedRequest) -> np.ndarray:
        assert self.ctx is not None
        now = request.now if request.now is not None else int(time.time())
        try:
            return prompt_ids(self.ctx, request, now)
        except KeyError as exc:
            raise InvalidInput(str(exc.args[0] if exc.args else exc)) from None

    async def preprocess(
        self, payload: dict[str, Any] | InferRequest, headers: dict[str, str] | None = None
    ) -> InferRequest | list[InferRequest]:
        if isinstance(payload, InferRequest):
            ids = await asyncio.to_thread(self._ids, parse_v2(payload))
            return predictor_request(ids)
        requests = parse_v1(payload)
        return [predictor_request(await asyncio.to_thread(self._ids, r)) for r in requests]

    async def predict(
        self,
        payload: InferRequest | list[InferRequest],
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> Any:
        if isinstance(payload, list):  # v1: one predictor call per instance, concurrently
            calls = (Model.predict(self, p, headers, response_headers) for p in payload)
            return list(await asyncio.gather(*calls))
        return await Model.predict(self, payload, headers, response_headers)

    async def postprocess(
        self,
        result: Any,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> Any:
        if isinstance(result, list):
            return {"predictions": [prediction(r) for r in result]}
        return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        parents=[model_server.parser], description="feedserve's featurizer as a KServe transformer"
    )
    parser.set_defaults(model_name=MODEL, predictor_protocol="v2")
    args, _ = parser.parse_known_args(argv)
    config = PredictorConfig(
        predictor_host=args.predictor_host,
        predictor_protocol=args.predictor_protocol,
        predictor_use_ssl=args.predictor_use_ssl,
        predictor_request_timeout_seconds=args.predictor_request_timeout_seconds,
        predictor_request_retries=args.predictor_request_retries,
        predictor_health_check=args.enable_predictor_health_check,
    )
    model = FeedTransformer(args.model_name, FeaturizerSettings())
    model.load()
    ModelServer(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        enable_grpc=args.enable_grpc,
        predictor_config=config,
    ).start([model])


if __name__ == "__main__":
    main()
