"""Glue between Triton's Python backend and the handlers in ``feedserve.models.serving``.

``triton_python_backend_utils`` exists only inside tritonserver, so ``model.py`` passes that
module in; everything here is otherwise ordinary code (tests drive it with a fake module).
"""

from __future__ import annotations

import traceback
from typing import Any

import numpy as np

from feedserve.models.serving import Handler, Request
from feedserve.models.signatures import ModelSignature


class TritonModelAdapter:
    def __init__(self, pb_utils: Any, signature: ModelSignature, handler: Handler) -> None:
        self.pb = pb_utils
        self.signature = signature
        self.handler = handler

    def _read(self, request: Any) -> Request:
        inputs: Request = {}
        for spec in self.signature.inputs:
            tensor = self.pb.get_input_tensor_by_name(request, spec.name)
            if tensor is None:
                if not spec.optional:
                    raise ValueError(f"missing required input {spec.name!r}")
                inputs[spec.name] = None
                continue
            arr = tensor.as_numpy()
            # strip the batch dimension: each request carries one item
            inputs[spec.name] = arr[0] if arr.ndim == len(spec.dims) + 1 else arr
        return inputs

    def _respond(self, outputs: dict[str, np.ndarray]) -> Any:
        tensors = []
        for spec in self.signature.outputs:
            arr = np.asarray(outputs[spec.name], dtype=spec.numpy_dtype)
            tensors.append(self.pb.Tensor(spec.name, arr[None, ...]))  # batch dim back
        return self.pb.InferenceResponse(output_tensors=tensors)

    def _error(self, message: str) -> Any:
        return self.pb.InferenceResponse(
            output_tensors=[], error=self.pb.TritonError(f"{self.signature.name}: {message}")
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        batch: list[Request] = []
        positions: list[int] = []
        for i, request in enumerate(requests):
            try:
                batch.append(self._read(request))
                positions.append(i)
            except ValueError as exc:
                responses[i] = self._error(str(exc))
        if batch:
            try:
                results = self.handler.handle(batch)
            except Exception as exc:  # a failed batch answers every request with the cause
                self.pb.Logger.log_error(traceback.format_exc())
                results = [f"internal error: {exc}"] * len(batch)
            for pos, result in zip(positions, results, strict=True):
                responses[pos] = (
                    self._error(result) if isinstance(result, str) else self._respond(result)
                )
        return responses
