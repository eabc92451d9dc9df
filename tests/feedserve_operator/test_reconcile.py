"""Pure reconcile logic: plans, kept replicas, pool status and conditions."""

from __future__ import annotations

from typing import Any

from feedserve_operator import reconcile as rc
from feedserve_operator.spec import Condition, FeedPipelineSpec, PoolStatus


def obj(kind: str, name: str, **fields: Any) -> dict[str, Any]:
    return {"kind": kind, "metadata": {"name": name, "namespace": "ns", "labels": {"a": "b"}},
            **fields}  # fmt: skip


def test_subset_ignores_what_the_server_adds_but_not_changed_values() -> None:
    desired = {"spec": {"replicas": 2, "template": {"containers": [{"name": "c", "image": "x"}]}}}
    live: dict[str, Any] = {"spec": {"replicas": 2, "paused": False,
                     "template": {"containers": [{"name": "c", "image": "x", "tty": False}]}},
            "status": {"readyReplicas": 1}}  # fmt: skip
    assert rc.is_subset(desired, live)
    live["spec"]["replicas"] = 3
    assert not rc.is_subset(desired, live)
    live["spec"]["replicas"] = 2
    live["spec"]["template"]["containers"].append({"name": "extra"})
    assert not rc.is_subset(desired, live)  # lists compare whole


def test_plan_creates_patches_deletes_and_leaves_the_rest() -> None:
    a, b, c = obj("Deployment", "a", spec={"x": 1}), obj("Service", "b"), obj("ConfigMap", "c")
    live_a = {**a, "metadata": {**a["metadata"], "uid": "u", "resourceVersion": "7"}}
    stale_hpa = obj("HorizontalPodAutoscaler", "old")
    plan = rc.plan(
        [a, b, c],
        {rc.key(a): live_a, rc.key(b): {**b, "data": 1}, rc.key(c): None},
        owned=[live_a, stale_hpa],
    )
    assert [rc.key(o) for o in plan.create] == [rc.key(c)]
    assert plan.patch == [] and plan.unchanged == 2
    assert plan.delete == [("HorizontalPodAutoscaler", "ns", "old")]
    drifted = {**a, "spec": {"x": 2}}
    again = rc.plan([a], {rc.key(a): drifted})
    assert [rc.key(o) for o in again.patch] == [rc.key(a)] and again.changes == 1
    relabelled = {**a, "metadata": {**a["metadata"], "labels": {}}}
    assert rc.plan([a], {rc.key(a): relabelled}).patch  # labels count, server fields do not


def test_kept_replicas_keep_the_autoscalers_choice_within_bounds() -> None:
    spec = FeedPipelineSpec.model_validate(
        {"featurizers": {"replicas": {"min": 2, "max": 6}},
         "inference": {"replicas": {"min": 1, "max": 3}}, "gateway": {"replicas": 2}}
    )  # fmt: skip

    def dep(component: str, replicas: int) -> dict[str, Any]:
        return {"metadata": {"labels": {rc.COMPONENT_LABEL: component}},
                "spec": {"replicas": replicas}}  # fmt: skip

    assert rc.kept_replicas(spec, []) == {"featurizer": 2, "inference": 1, "gateway": 2}
    live = [dep("featurizer", 5), dep("inference", 9), dep("gateway", 7)]
    assert rc.kept_replicas(spec, live) == {"featurizer": 5, "inference": 3, "gateway": 2}


def test_pool_status_and_conditions() -> None:
    live = [
        {"metadata": {"labels": {rc.COMPONENT_LABEL: "featurizer"}}, "spec": {"replicas": 2},
         "status": {"readyReplicas": 2}},
        {"metadata": {"labels": {rc.COMPONENT_LABEL: "inference"}}, "spec": {"replicas": 1}},
        {"metadata": {"labels": {rc.COMPONENT_LABEL: "gateway"}}, "spec": {"replicas": 2},
         "status": {"readyReplicas": 2}},
    ]  # fmt: skip
    pools = rc.pool_status(live)
    assert pools["inference"] == PoolStatus(desired=1, ready=0)
    conds = {c.type: c for c in rc.conditions(pools, 3, [], "t1")}
    assert conds["Ready"].status == "False" and conds["Ready"].reason == "PoolsNotReady"
    assert "inference" in conds["Ready"].message
    assert conds["Progressing"].status == "True" and conds["Degraded"].status == "False"
    assert all(
        c.observed_generation == 3 and c.last_transition_time == "t1" for c in conds.values()
    )

    ready = {p: PoolStatus(desired=s.desired, ready=s.desired) for p, s in pools.items()}
    later = {c.type: c for c in rc.conditions(ready, 3, list(conds.values()), "t2")}
    assert later["Ready"].status == "True" and later["Ready"].last_transition_time == "t2"
    assert later["Degraded"].last_transition_time == "t1"  # unchanged status keeps its time
    failed = {c.type: c for c in rc.conditions(ready, 4, list(later.values()), "t3", "boom")}
    assert failed["Degraded"].status == "True" and failed["Degraded"].message == "boom"
    assert failed["Ready"].status == "False" and failed["Ready"].reason == "ReconcileFailed"


def test_conditions_from_invalid_previous_are_ignored() -> None:
    prev = [Condition(type="Ready", status="True", reason="x", last_transition_time="t0")]
    out = rc.conditions({"gateway": PoolStatus(desired=1, ready=1)}, 1, prev, "t1")
    assert {c.type: c.last_transition_time for c in out}["Ready"] == "t0"
