"""The featurizer as a KServe transformer: KServe's model server (a subprocess on a free
loopback port: kserve cannot share this process with tritonclient.grpc) in front of a real
tritonserver serving ``retrieval_encoder``, over the feature store in the local Redis. What
it answers must be exactly what the featurizer's functions and the encoder give directly."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from feedserve.data.io import read_dataset
from feedserve.launcher import (
    ManagedProcess,
    free_port,
    http_ok,
    load_dataset,
    prepare_triton_backends,
    pytriton_dir,
    triton_env,
    wait_until,
)
from feedserve.model_repo import prepare_model_repo
from feedserve.settings import FeaturizerSettings
from feedserve.store import open_store
from feedserve.store.redis_store import redis_answers
from feedserve.triton_client import AsyncTritonClient, WireProtocol
from feedserve_featurizers import hydrate

pytestmark = [pytest.mark.integration, pytest.mark.redis]

REPO = Path(__file__).resolve().parents[2]
REDIS_URL = "redis://127.0.0.1:6379/0"
NOW = 1_750_000_000
MODEL = "retrieval_encoder"


@pytest.fixture(scope="module")
def settings(built: Any) -> Iterator[FeaturizerSettings]:
    """The demo data set in Redis under a prefix of this module's own."""
    if not redis_answers(REDIS_URL):
        pytest.fail(f"Redis does not answer at {REDIS_URL}; .ci/run starts one (see README)")
    s = FeaturizerSettings(
        redis_url=REDIS_URL, redis_prefix=f"kt{uuid.uuid4().hex[:10]}",
        artifacts_dir=built.artifacts_dir, data_dir=built.data_dir,
    )  # fmt: skip
    load_dataset(s)
    try:
        yield s
    finally:
        open_store(s).clear()


def _env(s: FeaturizerSettings) -> dict[str, str]:
    return {
        **os.environ,
        "FEEDSERVE_REDIS_URL": s.redis_url,
        "FEEDSERVE_REDIS_PREFIX": s.redis_prefix,
        "FEEDSERVE_ARTIFACTS_DIR": str(Path(s.artifacts_dir).resolve()),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture(scope="module")
def triton(settings: FeaturizerSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """tritonserver as in a KServe predictor pod: explicit model control, the one model."""
    tmp = tmp_path_factory.mktemp("kserve-predictor")
    repo = prepare_model_repo(REPO / "model_repo", tmp / "model_repo")
    backends = prepare_triton_backends(tmp)
    http = free_port()
    cmd = [
        str(pytriton_dir() / "bin" / "tritonserver"), f"--model-store={repo}",
        f"--backend-directory={backends}", "--http-address=127.0.0.1", f"--http-port={http}",
        "--allow-grpc=false", "--allow-metrics=false", "--model-control-mode=explicit",
        f"--load-model={MODEL}", "--exit-timeout-secs=5",
    ]  # fmt: skip
    proc = ManagedProcess("tritonserver", cmd, triton_env(_env(settings)), tmp / "triton.log")
    proc.start()
    try:
        wait_until(http_ok(f"http://127.0.0.1:{http}/v2/health/ready"), 180, "triton", proc)
        yield f"127.0.0.1:{http}"
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def transformer(
    triton: str, settings: FeaturizerSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The container command of the operator's transformer, with the arguments KServe adds."""
    port = free_port()
    cmd = [
        sys.executable, "-m", "feedserve_featurizers.kserve_transformer", f"--http_port={port}",
        f"--predictor_host={triton}", "--enable_grpc=false",
    ]  # fmt: skip
    log = tmp_path_factory.mktemp("kserve-transformer") / "transformer.log"
    proc = ManagedProcess("kserve-transformer", cmd, _env(settings), log)
    proc.start()
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(http_ok(f"{url}/v2/models/{MODEL}/ready"), 120, "transformer", proc)
        yield url
    finally:
        proc.stop()
    assert proc.proc is not None and proc.proc.returncode == 0, proc.log_tail()


def direct(
    triton: str, ids: np.ndarray, protocol: WireProtocol = "triton"
) -> tuple[np.ndarray, str]:
    """The encoder's answer for ``ids``, asked directly (the gateway's Triton client)."""

    async def call() -> tuple[np.ndarray, str]:
        client = AsyncTritonClient(triton, timeout_s=60, protocol=protocol)
        try:
            assert await client.ready((MODEL,))
            return await client.embed_ids_tagged(ids)
        finally:
            await client.close()

    return asyncio.run(call())


@pytest.fixture(scope="module")
def ctx(settings: FeaturizerSettings) -> hydrate.FeaturizerContext:
    return hydrate.FeaturizerContext.load(settings)


@pytest.fixture(scope="module")
def ids(settings: FeaturizerSettings) -> tuple[int, int]:
    """A member and a post of the data set."""
    ds = read_dataset(settings.data_dir)
    return ds.members[3].member_id, ds.posts[5].post_id


def v2_inputs(**values: int) -> dict[str, Any]:
    return {"inputs": [{"name": k, "shape": [1], "datatype": "INT64", "data": [v]}
                       for k, v in values.items()]}  # fmt: skip


def test_v2_member_embedding_is_the_featurizer_then_the_encoder(
    transformer: str, triton: str, ctx: hydrate.FeaturizerContext, ids: tuple[int, int]
) -> None:
    member, _ = ids
    resp = httpx.post(f"{transformer}/v2/models/{MODEL}/infer",
                      json=v2_inputs(member_id=member, now=NOW), timeout=60)  # fmt: skip
    assert resp.status_code == 200, resp.text
    outputs = {o["name"]: o for o in resp.json()["outputs"]}
    token_ids = hydrate.hydrate_member(ctx, member, None, NOW)["input_ids"]
    embedding, space = direct(triton, np.asarray(token_ids))
    got = np.asarray(outputs["embedding"]["data"], dtype=np.float32).reshape(embedding.shape)
    np.testing.assert_allclose(got, embedding, rtol=1e-5, atol=1e-6)
    assert outputs["space"]["data"] == [space]
    assert abs(float(np.linalg.norm(got)) - 1.0) < 1e-4  # the encoder's unit vectors


def test_v1_instances_members_and_posts(
    transformer: str, triton: str, ctx: hydrate.FeaturizerContext, ids: tuple[int, int]
) -> None:
    member, post = ids
    with_session = {"member_id": member, "now": NOW, "session": {"engaged_post_ids": [post]}}
    body = {"instances": [{"member_id": member, "now": NOW}, {"post_id": post}, with_session]}
    resp = httpx.post(f"{transformer}/v1/models/{MODEL}:predict", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    predictions = resp.json()["predictions"]
    session = hydrate.SessionContext(engaged_post_ids=[post])
    expected = [
        hydrate.hydrate_member(ctx, member, None, NOW)["input_ids"],
        hydrate.post_prompt_ids(ctx, post),
        hydrate.hydrate_member(ctx, member, session, NOW)["input_ids"],
    ]
    for prediction, token_ids in zip(predictions, expected, strict=True):
        embedding, space = direct(triton, np.asarray(token_ids))
        np.testing.assert_allclose(prediction["embedding"], embedding, rtol=1e-5, atol=1e-6)
        assert prediction["space"] == space
    # the session's engagement changed the member's prompt, and so the embedding
    assert not np.allclose(predictions[0]["embedding"], predictions[2]["embedding"])


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("v2", v2_inputs(member_id=10**9), "no profile"),
        ("v2", v2_inputs(member_id=1, post_id=2), "exactly one of member_id and post_id"),
        ("v2", v2_inputs(user=1), "unknown input 'user'"),
        ("v1", {"instances": [{"post_id": 10**9}]}, "not in the feature store"),
        ("v1", {"instances": [{"member_id": -1}]}, "member_id"),
        ("v1", {"rows": []}, "instances"),
    ],
)
def test_bad_requests_are_400s(transformer: str, path: str, body: Any, message: str) -> None:
    url = (f"{transformer}/v2/models/{MODEL}/infer" if path == "v2"
           else f"{transformer}/v1/models/{MODEL}:predict")  # fmt: skip
    resp = httpx.post(url, json=body, timeout=60)
    assert resp.status_code == 400, resp.text
    assert message in resp.text


def test_the_gateway_client_speaks_plain_v2_to_triton(
    triton: str, ctx: hydrate.FeaturizerContext, ids: tuple[int, int]
) -> None:
    """JSON tensors (``inference_protocol: v2``) and the binary extension agree."""
    token_ids = np.asarray(hydrate.post_prompt_ids(ctx, ids[1]))
    binary, space = direct(triton, token_ids, "triton")
    plain, plain_space = direct(triton, token_ids, "v2")
    np.testing.assert_allclose(plain, binary, rtol=1e-6, atol=1e-7)
    assert plain_space == space
