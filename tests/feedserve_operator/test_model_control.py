"""Triton model control for FeedModels: endpoints, config overlay, reload decisions, status."""

from __future__ import annotations

from typing import Any

from feedserve_operator import model_control as mc
from feedserve_operator.spec import FeedModelSpec


def spec(**extra: Any) -> FeedModelSpec:
    return FeedModelSpec.model_validate(
        {"pipeline": "feed", "role": "generative-ranker", "artifact": "s3://m/ranker",
         "version": 2, **extra}
    )  # fmt: skip


def pod(name: str, ip: str | None, ready: bool, port: int | None = None, **meta: Any) -> Any:
    ports = [{"name": "grpc", "containerPort": 1}] + (
        [{"name": "http", "containerPort": port}] if port else []
    )
    return {
        "metadata": {"name": name, **meta},
        "spec": {"containers": [{"name": "triton", "ports": ports}]},
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": str(ready)}]},
    }


def test_endpoints_are_the_ready_pods_http_ports() -> None:
    pods = [
        pod("b", "10.0.0.2", True, 9000),
        pod("a", "10.0.0.1", True),
        pod("pending", None, False),
        pod("starting", "10.0.0.3", False),
        pod("leaving", "10.0.0.4", True, deletionTimestamp="2026-01-01T00:00:00Z"),
    ]
    assert mc.triton_endpoints(pods) == {"a": "10.0.0.1:8000", "b": "10.0.0.2:9000"}


CONFIG = {
    "name": "generative_ranker",
    "backend": "python",
    "max_batch_size": 32,
    "version_policy": {"latest": {"num_versions": 1}},
    "dynamic_batching": {"max_queue_delay_microseconds": "2000", "preserve_ordering": False},
    "instance_group": [{"name": "g", "kind": "KIND_CPU", "count": 1}],
    "input": [{"name": "x"}],
}


def test_overlay_sets_versions_batching_instances_and_keeps_the_rest() -> None:
    s = spec(rollout={"canaryVersion": 3, "canaryWeight": 10},
             triton={"instances": 2, "maxBatchSize": 16, "maxQueueDelayMicroseconds": 500,
                     "preferredBatchSizes": [8]})  # fmt: skip
    out = mc.overlay(CONFIG, s)
    assert out["version_policy"] == {"specific": {"versions": [2, 3]}}
    assert out["max_batch_size"] == 16
    assert out["dynamic_batching"] == {
        "max_queue_delay_microseconds": 500,
        "preserve_ordering": False,
        "preferred_batch_size": [8],
    }
    assert out["instance_group"] == [{"name": "g", "kind": "KIND_CPU", "count": 2}]
    assert out["input"] == CONFIG["input"] and out["backend"] == "python"
    assert mc.original(out) == CONFIG and mc.original(CONFIG) is None
    # a second overlay starts from the repository's config, not from the first overlay
    again = mc.overlay(out, spec())
    assert mc.original(again) == CONFIG and again["max_batch_size"] == 32
    assert CONFIG["version_policy"] == {"latest": {"num_versions": 1}}  # not modified
    auto = {**CONFIG, "dynamic_batching": {"preferred_batch_size": ["32", "4"]}}
    # preferred sizes Triton filled in that no longer fit are dropped
    assert mc.overlay(auto, spec(triton={"maxBatchSize": 8}))["dynamic_batching"][
        "preferred_batch_size"
    ] == [4]
    unbatched = mc.overlay({**CONFIG, "max_batch_size": 0}, s)
    assert unbatched["max_batch_size"] == 0  # a model without batching stays so


def test_needs_load_only_when_versions_or_settings_differ() -> None:
    s = spec()
    assert mc.needs_load(CONFIG, s, [1])  # wrong version
    loaded = mc.overlay(CONFIG, s)
    # Triton answers numbers as strings in places: not a difference
    loaded["dynamic_batching"]["max_queue_delay_microseconds"] = "2000"
    assert not mc.needs_load(loaded, s, [2])
    assert mc.needs_load(loaded, spec(triton={"instances": 3}), [2])
    assert mc.needs_load(loaded, spec(rollout={"canaryVersion": 3, "canaryWeight": 5}), [2])


def test_status_ready_progressing_degraded() -> None:
    s = spec(rollout={"canaryVersion": 3, "canaryWeight": 25})
    waiting = mc.model_status(s, {}, {}, 4, [], "t0")
    cond = {c.type: c for c in waiting.conditions}
    assert not waiting.ready and cond["Ready"].reason == "NoTritonPods"
    assert cond["Progressing"].status == "True"
    assert waiting.served_weights == {"2": 75, "3": 25}

    partial = mc.model_status(s, {"p1": [2, 3], "p2": [2]}, {}, 4, waiting.conditions, "t1")
    assert not partial.ready and partial.loaded_versions == [2]
    assert {c.type: c for c in partial.conditions}["Ready"].reason == "Loading"

    ok = mc.model_status(s, {"p1": [2, 3], "p2": [1, 2, 3]}, {}, 4, partial.conditions, "t2")
    cond = {c.type: c for c in ok.conditions}
    assert ok.ready and ok.loaded_versions == [2, 3] and cond["Ready"].status == "True"
    assert cond["Ready"].last_transition_time == "t2"
    assert cond["Degraded"].last_transition_time == "t0"  # unchanged since the first status

    failed = mc.model_status(s, {"p1": [2, 3]}, {"p2": "boom"}, 5, ok.conditions, "t3")
    cond = {c.type: c for c in failed.conditions}
    assert (
        not failed.ready
        and cond["Degraded"].status == "True"
        and "boom" in cond["Degraded"].message
    )
    assert all(c.observed_generation == 5 for c in failed.conditions)


def test_status_patch_removes_weights_of_versions_no_longer_served() -> None:
    new = mc.model_status(spec(), {"p": [2]}, {}, 1, [], "t")
    patch = mc.status_patch({"servedWeights": {"1": 90, "2": 10}}, new)
    assert patch["servedWeights"] == {"1": None, "2": 100} and patch["ready"] is True
