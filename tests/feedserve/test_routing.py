"""Canary traffic split: weighted version choice, the routing files, and the Triton client
sending the chosen version."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from feedserve.routing import VersionRouter, parse_weights, pick_version
from feedserve.triton_client import AsyncTritonClient


def test_pick_version_follows_the_weights() -> None:
    weights = {"2": 80, "3": 20}
    assert pick_version(weights, 0.0) == "2" and pick_version(weights, 0.79) == "2"
    assert pick_version(weights, 0.8) == "3" and pick_version(weights, 0.999) == "3"
    assert pick_version({"10": 50, "9": 50}, 0.4) == "9"  # versions ordered as numbers
    assert pick_version({"4": 0, "5": 100}, 0.0) == "5"
    assert pick_version({}, 0.5) == "" and pick_version({"1": 0}, 0.5) == ""
    rng = np.random.default_rng(0)
    picks = [pick_version(weights, u) for u in rng.random(10_000)]
    assert abs(picks.count("3") / len(picks) - 0.2) < 0.02


def test_parse_weights_rejects_what_is_not_a_split() -> None:
    assert parse_weights('{"2": 90, "3": 10}') == {"2": 90, "3": 10}
    for bad in ("[1]", '{"v2": 10}', '{"2": 101}', '{"2": "10"}', "not json"):
        with pytest.raises(ValueError):
            parse_weights(bad)


def test_router_reads_files_and_follows_changes(tmp_path: Path) -> None:
    router = VersionRouter(tmp_path, check_every_s=0.0, rng=lambda: 0.85)
    assert router.pick("generative_ranker") == ""  # no file: Triton's choice
    path = tmp_path / "generative_ranker"
    path.write_text('{"2": 80, "3": 20}')
    assert router.pick("generative_ranker") == "3"
    path.write_text('{"3": 100}')
    os.utime(path, (1, 1))  # a new mtime even within the file system's resolution
    assert router.weights("generative_ranker") == {"3": 100}
    path.write_text("{broken")
    os.utime(path, (2, 2))
    assert router.weights("generative_ranker") == {"3": 100}  # last good weights kept
    path.unlink()
    assert router.weights("generative_ranker") == {}


def test_client_sends_the_routed_version(tmp_path: Path) -> None:
    (tmp_path / "generative_ranker").write_text('{"7": 100}')
    seen: list[Any] = []

    class Result:
        def as_numpy(self, name: str) -> np.ndarray:
            return np.zeros((1, 3), dtype=np.float32)

    async def infer(model: str, inputs: Any, outputs: Any, model_version: str = "") -> Result:
        seen.append((model, model_version))
        return Result()

    async def run() -> None:
        client = AsyncTritonClient("127.0.0.1:1", router=VersionRouter(tmp_path))
        client._client.infer = infer
        try:
            history = {k: np.zeros(3, dtype=np.int64) for k in
                       ("history_post_ids", "history_actions", "history_timestamps")}  # fmt: skip
            await client.rank(history, np.arange(3, dtype=np.int64))
            await client.embed_ids(np.zeros(4, dtype=np.int64))
        finally:
            await client.close()

    asyncio.run(run())
    assert seen == [("generative_ranker", "7"), ("retrieval_encoder", "")]
