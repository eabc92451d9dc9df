"""The three models in the calling process (monolith mode): the handlers the Triton models
run (``feedserve.models.serving``), called directly, without a server, a network hop or
dynamic batching across requests. For measuring what disaggregation costs, and for
single-process deployments; the platform's default is Triton."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping

import numpy as np

from feedserve.models.serving import Handler, build_handler
from feedserve.models.signatures import SIGNATURES, ModelSignature
from feedserve.settings import ModelSettings
from feedserve.triton_client import ModelCalls, TritonRequestError


class LocalInferenceClient(ModelCalls):
    def __init__(self, settings: ModelSettings | None = None) -> None:
        settings = settings or ModelSettings()
        self.handlers: dict[str, Handler] = {
            name: build_handler(name, settings) for name in SIGNATURES
        }
        self._locks = {name: threading.Lock() for name in SIGNATURES}

    def _run(self, signature: ModelSignature, request: dict[str, np.ndarray | None]) -> object:
        with self._locks[signature.name]:  # a handler serves one batch at a time, as in Triton
            return self.handlers[signature.name].handle([request])[0]

    async def _infer(
        self, signature: ModelSignature, inputs: Mapping[str, np.ndarray], timeout_s: float | None
    ) -> dict[str, np.ndarray]:
        request: dict[str, np.ndarray | None] = {
            spec.name: None
            if spec.name not in inputs
            else np.asarray(inputs[spec.name], dtype=spec.numpy_dtype)
            for spec in signature.inputs
        }
        result = await asyncio.to_thread(self._run, signature, request)
        if isinstance(result, str):
            raise TritonRequestError(signature.name, result)
        assert isinstance(result, dict)
        return {spec.name: result[spec.name] for spec in signature.outputs}

    async def ready(self, models: tuple[str, ...] = tuple(SIGNATURES)) -> bool:
        return all(m in self.handlers for m in models)

    async def close(self) -> None:
        return None
