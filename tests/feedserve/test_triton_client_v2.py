"""The gateway's inference client against Open Inference Protocol v2 servers that are not
Triton (KServe's model server, ``v2_server.py``, one process per endpoint), chosen the way a
deployment chooses it: ``FEEDSERVE_INFERENCE_PROTOCOL=v2`` and ``FEEDSERVE_MODEL_URLS``."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from feedserve.gateway.app import inference_client
from feedserve.launcher import ManagedProcess, free_port, http_ok, wait_until
from feedserve.settings import GatewaySettings
from feedserve.triton_client import AsyncTritonClient, OipV2Client, TritonUnavailable, split_url

SERVER = Path(__file__).with_name("v2_server.py")


def start(models: list[str], tmp_path: Path) -> Iterator[str]:
    port = free_port()
    cmd = [sys.executable, str(SERVER), f"--http_port={port}", *models]
    proc = ManagedProcess("v2-server", cmd, dict(os.environ), tmp_path / f"v2-{port}.log")
    proc.start()
    try:
        for model in models:
            ready = f"http://127.0.0.1:{port}/v2/models/{model}/ready"
            wait_until(http_ok(ready), 60, "KServe model server", proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def encoder_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from start(["retrieval_encoder"], tmp_path_factory.mktemp("v2a"))


@pytest.fixture(scope="module")
def scoring_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from start(["post_index", "generative_ranker"], tmp_path_factory.mktemp("v2b"))


def test_split_url() -> None:
    assert split_url("127.0.0.1:8000") == ("127.0.0.1:8000", False)
    assert split_url("http://feed-ranker-predictor.ns.svc/") == (
        "feed-ranker-predictor.ns.svc",
        False,
    )
    assert split_url(" https://isvc.example.com:8443 ") == ("isvc.example.com:8443", True)


def test_protocol_is_checked() -> None:
    with pytest.raises(ValueError, match="protocol"):
        AsyncTritonClient("127.0.0.1:1", protocol="grpc")  # type: ignore[arg-type]


def test_gateway_settings_select_plain_v2_and_each_models_endpoint(
    encoder_server: str, scoring_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEEDSERVE_INFERENCE_PROTOCOL", "v2")
    monkeypatch.setenv("FEEDSERVE_TRITON_URL", encoder_server)
    urls = {"post_index": scoring_server, "generative_ranker": scoring_server}
    monkeypatch.setenv("FEEDSERVE_MODEL_URLS", json.dumps(urls))
    settings = GatewaySettings()
    assert settings.inference_protocol == "v2" and settings.model_urls == urls

    async def calls() -> None:
        client = inference_client(settings)
        assert isinstance(client, AsyncTritonClient) and client.protocol == "v2"
        try:
            assert await client.ready()
            embedding, space = await client.embed_ids_tagged(np.array([5, 7, 9]))
            np.testing.assert_array_equal(embedding, [3.0, 21.0, 1.0])
            assert space == "stand-in-space"
            posts, scores = await client.search(embedding, 4, exclude_ids=np.array([101, 102]))
            assert posts.tolist() == [100, 103, 104, 105]
            assert scores.tolist() == pytest.approx([1.0, 0.75, 0.5, 0.25])
            history: dict[str, Any] = {
                "history_post_ids": np.array([1, 2]),
                "history_actions": np.array([1, 1]),
                "history_timestamps": np.array([10, 20]),
                "request_time": 30,
            }
            ranked = await client.rank(history, np.array([10, 40]))
            assert ranked.tolist() == [7.0, 22.0]
        finally:
            await client.close()

    asyncio.run(calls())


def test_a_model_at_the_wrong_endpoint_fails(encoder_server: str, scoring_server: str) -> None:
    """Routing is per model: without its own URL, the ranker is asked at the encoder's
    server, which does not serve it (and readiness says so first)."""

    async def calls() -> None:
        client = AsyncTritonClient(encoder_server, timeout_s=5, protocol="v2")
        try:
            assert await client.ready(("retrieval_encoder",))
            assert not await client.ready()
            history = {k: np.array([1]) for k in
                       ("history_post_ids", "history_actions", "history_timestamps")}  # fmt: skip
            with pytest.raises(TritonUnavailable):
                await client.rank(history, np.array([10]))
        finally:
            await client.close()

    asyncio.run(calls())


def test_the_workflows_remote_client_too(encoder_server: str) -> None:
    """``OipV2Client`` (remote workflow steps) against the same non-Triton server."""

    async def call() -> dict[str, np.ndarray]:
        client = OipV2Client(encoder_server, timeout_s=5)
        try:
            return await client.infer(
                "retrieval_encoder", {"input_ids": np.array([2, 3])}, ("embedding", "space")
            )
        finally:
            await client.close()

    out = asyncio.run(call())
    np.testing.assert_array_equal(out["embedding"], [2.0, 5.0, 1.0])
    assert out["space"].tolist() == ["stand-in-space"]
