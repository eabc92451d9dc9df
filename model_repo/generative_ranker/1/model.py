"""Triton Python-backend model `generative_ranker`: adapts Triton tensors to feedserve code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import triton_python_backend_utils as pb_utils

from feedserve.models.serving import build_handler
from feedserve.models.signatures import SIGNATURES
from feedserve.models.triton_backend import TritonModelAdapter

MODEL = "generative_ranker"


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        handler = build_handler(MODEL, version_dir=Path(__file__).resolve().parent)
        self.adapter = TritonModelAdapter(pb_utils, SIGNATURES[MODEL], handler)
        pb_utils.Logger.log_info(f"{MODEL} ready")

    def execute(self, requests: list[Any]) -> list[Any]:
        return self.adapter.execute(requests)
