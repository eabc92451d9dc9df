"""Monolith mode: the gateway process alone serves feeds (store, featurizer and the three
models in process; no Redis, Celery or Triton)."""

from __future__ import annotations

import httpx
import pytest

from feedserve.launcher import Stack

pytestmark = pytest.mark.integration


def test_one_process_serves_ranked_feeds(monolith_stack: Stack) -> None:
    assert [p.name for p in monolith_stack.processes] == ["gateway"]
    with httpx.Client(base_url=monolith_stack.gateway_url, timeout=30) as client:
        ready = client.get("/readyz").json()
        assert ready["status"] == "ok"
        body = client.post("/v1/feed", json={"member_id": 5, "count": 10, "explain": True}).json()
        assert body["degraded"] is False and len(body["items"]) == 10
        ran = {s["step"]: s["status"] for s in body["explain"]["steps"]}
        assert ran["rank"] == "ok" and ran["retrieve_ebr"] == "ok"
        resp = client.post("/v1/feed", json={"member_id": 5, "count": 0})
        assert resp.status_code == 422
