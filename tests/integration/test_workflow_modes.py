"""Workflow modes through real processes: the offline job, nearline refresh, remote steps.

One stack (tritonserver, Redis, Celery worker, event consumer, gateway) serving the feed
workflow with the member embedding in ``offline+nearline`` mode (the shared one).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from feedserve.data.io import read_dataset
from feedserve.launcher import Stack, free_port
from feedserve.launcher import wait_until as poll
from feedserve.settings import FeaturizerSettings
from feedserve.store import open_store
from feedserve.store.base import FeatureStore, StoredVector
from feedserve.triton_client import AsyncTritonClient
from feedserve.workflow.ops import OpContext
from feedserve.workflow.runner import RemoteClients, Runner, RunResult
from feedserve.workflow.spec import Mode, RemoteSpec, Workflow, load, load_default
from feedserve_featurizers import hydrate
from feedserve_featurizers.client import InProcessFeaturizer

pytestmark = pytest.mark.integration

TABLE = "member_embedding"


@pytest.fixture(scope="module")
def stack(shared_stacks: Any) -> Iterator[Stack]:
    """Shared with test_stack's offline+nearline tests (see conftest)."""
    with shared_stacks.lease("offline+nearline") as stack:
        yield stack


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.gateway_url, timeout=30.0) as c:
        yield c


@pytest.fixture(scope="module")
def store(stack: Stack) -> FeatureStore:
    return open_store(stack.settings)


@pytest.fixture(scope="module")
def members(built: Any) -> list[int]:
    ds = read_dataset(built.data_dir)
    counts = np.bincount(ds.interactions["member_id"], minlength=len(ds.members) + 1)
    return [int(m) for m in np.argsort(-counts)[:30]]


def explain(client: httpx.Client, member: int) -> dict[str, Any]:
    resp = client.post("/v1/feed", json={"member_id": member, "count": 10, "explain": True})
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def step_status(body: dict[str, Any], step: str) -> str:
    statuses = {s["step"]: s["status"] for s in body["explain"]["steps"]}
    return statuses[step]


def test_offline_job_precomputes_every_member(
    stack: Stack, store: FeatureStore, client: httpx.Client
) -> None:
    env = stack._feedserve_env()
    assert "FEEDSERVE_WORKFLOW" in env
    started = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "feedserve.cli", "run", "offline", "embed_member",
         "--no-progress", "--concurrency", "8"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    n_members = len(store.member_ids())
    assert f"for {n_members} key(s)" in proc.stdout and "0 failed" in proc.stdout
    assert store.vector_count(TABLE) == n_members
    some = store.get_vectors(TABLE, store.member_ids()[:5])
    assert all(v is not None and v.updated_at >= started and v.space for v in some)
    body = explain(client, store.member_ids()[0])
    assert step_status(body, "embed_member") == "stored"
    assert body["degraded"] is False and body["items"]


def test_nearline_refresh_is_visible_to_the_next_request(
    client: httpx.Client, store: FeatureStore, members: list[int], built: Any
) -> None:
    member = members[3]
    old = store.get_vectors(TABLE, [member])[0]
    if old is None:  # not precomputed: the first request computes it on the miss
        assert step_status(explain(client, member), "embed_member") == "computed-on-miss"
        old = store.get_vectors(TABLE, [member])[0]
    assert old is not None
    ds = read_dataset(built.data_dir)
    seen = set(store.get_history(member)["post_id"].tolist())
    targets = [p.post_id for p in ds.posts if p.post_id not in seen][-8:]
    t0 = time.time()
    events = [{"member_id": member, "post_id": p, "action": "comment"} for p in targets]
    assert client.post("/v1/events", json={"events": events}).status_code == 202

    def refreshed() -> StoredVector | None:
        v = store.get_vectors(TABLE, [member])[0]
        return v if v is not None and v.updated_at > t0 else None

    new = poll(refreshed, 20.0, "member embedding refreshed nearline")
    print(f"member embedding refreshed {new.updated_at - t0:.2f}s after the engagement")
    assert not np.allclose(new.vector, old.vector)  # the prompt now holds the new engagements
    body = explain(client, member)
    assert step_status(body, "embed_member") == "stored"
    assert body["explain"]["as_of"][TABLE] == pytest.approx(new.updated_at)
    # and the history the member was embedded from includes them: they are filtered as seen
    assert not {i["post_id"] for i in body["items"]} & set(targets)


def test_impressions_do_not_trigger_a_refresh(
    client: httpx.Client, store: FeatureStore, members: list[int]
) -> None:
    member = members[5]
    explain(client, member)  # stored, or computed on the miss
    before = store.get_vectors(TABLE, [member])[0]
    assert before is not None
    post = int(store.recent_posts(1)[0])
    event = {"member_id": member, "post_id": post, "action": "impression"}
    assert client.post("/v1/events", json={"events": [event]}).status_code == 202
    poll(lambda: post in store.get_history(member)["post_id"].tolist(), 10.0, "impression applied")
    after = store.get_vectors(TABLE, [member])[0]
    assert after is not None and after.updated_at == before.updated_at


# --- remote steps ---------------------------------------------------------------------------------


def _remote(wf: Workflow, url: str, **fields: Any) -> Workflow:
    """``wf`` with embed_member and rank computed by the v2 endpoint at ``url``."""
    steps = [
        s.model_copy(update={"mode": Mode.remote, "remote": RemoteSpec(url=url), **fields})
        if s.name in ("embed_member", "rank")
        else s
        for s in wf.spec.steps
    ]
    return load_spec(wf.spec.model_copy(update={"steps": steps}))


def load_spec(spec: Any) -> Workflow:
    from feedserve.workflow.spec import check

    return check(spec)


def run_in_process(stack: Stack, wf: Workflow, member: int, now: int) -> RunResult:
    settings = FeaturizerSettings(
        **stack.settings.model_dump(include=set(FeaturizerSettings.model_fields)),
    )

    async def main() -> RunResult:
        triton = AsyncTritonClient(stack.triton_url, 10.0)
        remote = RemoteClients(10.0)
        try:
            ctx = hydrate.FeaturizerContext.load(settings)
            featurizer = InProcessFeaturizer(ctx, triton, embedding_log=None)
            runner = Runner(wf, OpContext(featurizer, triton, ctx.store, remote=remote))
            inputs = {"member_id": member, "session_context": None, "now": now, "count": 20}
            return await runner.run(inputs, deadline_s=30.0)
        finally:
            await remote.close()
            await triton.close()

    return asyncio.run(main())


def test_remote_steps_call_a_real_tritonserver_and_fall_back(
    stack: Stack, members: list[int]
) -> None:
    local = load_default()
    member, now = members[7], int(time.time())
    expected = run_in_process(stack, local, member, now)
    assert not expected.degraded

    remote = run_in_process(stack, _remote(local, f"http://{stack.triton_url}"), member, now)
    modes = {t.step: (t.mode, t.status) for t in remote.trace}
    assert modes["embed_member"] == ("remote", "ok") and modes["rank"] == ("remote", "ok")
    assert not remote.degraded
    assert remote.values["page"] == expected.values["page"]  # same models, same feed
    local_scores = [c.score for c in expected.values["ranked"]]
    remote_scores = [c.score for c in remote.values["ranked"]]
    np.testing.assert_allclose(remote_scores, local_scores, rtol=1e-5, atol=1e-6)

    # nobody listens there: both remote steps fall back, the feed still answers
    dead = run_in_process(stack, _remote(local, f"127.0.0.1:{free_port()}"), member, now)
    assert {r.split(" ", 1)[0] for r in dead.degraded} == {"embed_member", "rank"}
    assert dead.values["page"] and all(c.score is None for c in dead.values["ranked"])

    # a remote step past its timeout falls back too
    late = run_in_process(
        stack, _remote(local, f"http://{stack.triton_url}", timeout_ms=1), member, now
    )
    assert any(r.startswith("rank fell back") for r in late.degraded)


def test_workflow_file_is_what_every_process_runs(stack: Stack) -> None:
    path = stack.settings.workflow
    assert path is not None
    wf = load(path)
    assert wf.step("embed_member").mode == Mode.offline_nearline
    assert os.path.exists(path)
