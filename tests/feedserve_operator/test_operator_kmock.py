"""The operator end to end against a mock Kubernetes API (kmock's emulator): kopf runs the
real handlers; the test creates, changes, breaks and deletes custom resources and watches the
children and the status."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from feedserve.launcher import (
    ManagedProcess,
)
from feedserve.triton_client import AsyncTritonClient
from feedserve.workflow.spec import DEFAULT_WORKFLOW
from feedserve_operator.autoscale import Observation
from feedserve_operator.handlers import Operator
from feedserve_operator.spec import FeedPipelineSpec

if TYPE_CHECKING:
    from tests.feedserve_operator.conftest import RunOperator

NS = "feeds"
FP = "feedserve.io/v1alpha1/feedpipelines"
FM = "feedserve.io/v1alpha1/feedmodels"
DEPLOYMENTS = "apps/v1/deployments"
HPAS = "autoscaling/v2/horizontalpodautoscalers"


def pipeline(name: str = "feed", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "feedserve.io/v1alpha1",
        "kind": "FeedPipeline",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "inference": {"gpusPerPod": 1, "replicas": {"min": 1, "max": 3}},
            "featurizers": {"replicas": {"min": 2, "max": 6}},
            "autoscaling": {"policy": "coupled"},
            **spec,
        },
    }


@pytest.fixture()
def operator(cluster: Any, run_operator: RunOperator) -> Iterator[Operator]:
    with run_operator(cluster, NS) as op:
        yield op


def children(cluster: Any, resource: str) -> set[str]:
    return set(cluster.names(resource, NS))


def event_reasons(cluster: Any) -> set[str]:
    names = cluster.names("v1/events", NS)
    return {(cluster.get("v1/events", NS, n) or {}).get("reason", "") for n in names}


def condition(obj: dict[str, Any] | None, ctype: str) -> dict[str, Any] | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return dict(c)
    return None


def test_pipeline_lifecycle(cluster: Any, operator: Any, poll: Callable[..., Any]) -> None:
    cluster.put(FP, pipeline())
    # create -> the children exist with owner references and the expected specs
    deps = poll(lambda: len(children(cluster, DEPLOYMENTS)) >= 3 and children(cluster, DEPLOYMENTS),
                15, "three Deployments")  # fmt: skip
    by_component = {}
    for name in deps:
        d = cluster.get(DEPLOYMENTS, NS, name)
        by_component[d["metadata"]["labels"]["app.kubernetes.io/component"]] = d
        refs = d["metadata"]["ownerReferences"]
        assert refs[0]["kind"] == "FeedPipeline" and refs[0]["name"] == "feed" and refs[0]["uid"]
    assert {"featurizer", "inference", "gateway"} <= set(by_component)
    assert by_component["featurizer"]["spec"]["replicas"] == 2
    triton = by_component["inference"]["spec"]["template"]["spec"]["containers"][0]
    assert triton["resources"]["limits"]["nvidia.com/gpu"] in (1, "1")
    assert not children(cluster, HPAS)  # coupled policy: the operator sizes the pools

    # status: observedGeneration and conditions (pods never become ready in a mock cluster)
    def with_ready() -> dict[str, Any] | None:
        obj = cluster.get(FP, NS, "feed")
        return obj if condition(obj, "Ready") else None

    fp = poll(with_ready, 15, "status conditions")
    assert fp["status"]["observedGeneration"] == 1 and fp["status"]["policy"] == "coupled"
    assert condition(fp, "Ready")["status"] == "False"  # type: ignore[index]
    assert condition(fp, "Degraded")["status"] == "False"  # type: ignore[index]

    poll(lambda: "Reconciled" in event_reasons(cluster), 15, "a Reconciled event")

    # change the spec -> children patched; the policy switch adds HPAs
    changed = copy.deepcopy(cluster.get(FP, NS, "feed"))
    changed["spec"]["autoscaling"]["policy"] = "hpa"
    changed["spec"]["inference"]["gpusPerPod"] = 2
    cluster.put(FP, changed)
    poll(lambda: len(children(cluster, HPAS)) >= 2, 15, "HPAs for the hpa policy")
    inference = next(n for n in deps if "inference" in cluster.get(DEPLOYMENTS, NS, n)[
        "metadata"]["labels"]["app.kubernetes.io/component"])  # fmt: skip

    def two_gpus() -> bool:
        d = cluster.get(DEPLOYMENTS, NS, inference)
        limits = d["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        return limits.get("nvidia.com/gpu") in (2, "2")

    poll(two_gpus, 15, "Triton Deployment patched to 2 GPUs")

    # drift: a child deleted by hand is restored by the resync timer
    gateway = next(n for n in deps if "gateway" in n)
    cluster.delete(DEPLOYMENTS, NS, gateway)
    poll(lambda: gateway in children(cluster, DEPLOYMENTS), 15, "deleted Deployment restored")
    poll(lambda: "DriftCorrected" in event_reasons(cluster), 15, "a DriftCorrected event")

    # back to coupled: the HPAs are removed again
    back = copy.deepcopy(cluster.get(FP, NS, "feed"))
    back["spec"]["autoscaling"]["policy"] = "coupled"
    cluster.put(FP, back)
    poll(lambda: not children(cluster, HPAS), 15, "HPAs deleted")
    fp = cluster.get(FP, NS, "feed")
    assert fp is not None and fp["metadata"]["generation"] == 3

    # delete -> every child is cleaned up and the resource goes
    cluster.delete(FP, NS, "feed")
    poll(lambda: not children(cluster, DEPLOYMENTS), 15, "children deleted")
    poll(lambda: cluster.get(FP, NS, "feed") is None, 15, "FeedPipeline gone (finalizer removed)")


def test_invalid_spec_is_reported_not_retried(
    cluster: Any, operator: Any, poll: Callable[..., Any]
) -> None:
    bad = pipeline("broken", inference={"gpusPerPod": 9, "replicas": {"min": 5, "max": 2}})
    cluster.put(FP, bad)
    fp = poll(lambda: condition(cluster.get(FP, NS, "broken"), "Degraded") and
              cluster.get(FP, NS, "broken"), 15, "Degraded condition")  # fmt: skip
    degraded = condition(fp, "Degraded")
    assert degraded is not None and degraded["status"] == "True"
    assert degraded["reason"] == "InvalidSpec" and "gpusPerPod" in degraded["message"]
    poll(lambda: "InvalidSpec" in event_reasons(cluster), 15, "a Warning event")

    # a workflow that does not check out (unknown op) is a bad spec too, named by its field
    wf = yaml.safe_load(DEFAULT_WORKFLOW.read_text())
    wf["steps"][0]["op"] = "no_such_op"
    cluster.put(FP, pipeline("badflow", workflow=wf))

    def flow_degraded() -> dict[str, Any] | None:
        return condition(cluster.get(FP, NS, "badflow"), "Degraded")

    degraded = poll(flow_degraded, 15, "Degraded for a bad workflow")
    assert degraded["reason"] == "InvalidSpec" and "spec.workflow" in degraded["message"]
    assert "no_such_op" in degraded["message"]
    assert not children(cluster, DEPLOYMENTS)


class Overloaded:
    """Metrics of a pipeline far over its latency objective."""

    def __init__(self) -> None:
        self.calls = 0

    async def observe(
        self,
        name: str,
        namespace: str,
        spec: FeedPipelineSpec,
        deployments: list[dict[str, Any]],
        now_s: float,
    ) -> Observation | None:
        self.calls += 1
        replicas = {
            d["metadata"]["labels"]["app.kubernetes.io/component"]: d["spec"]["replicas"]
            for d in deployments
        }
        return Observation(
            time_s=now_s, p99_ms=2000.0, request_rate=400.0, featurizer_queue_depth=500.0,
            featurizer_cpu=1.0, triton_queue_ms=800.0, triton_throughput_per_pod=100.0,
            featurizer_throughput_per_pod=80.0,
            featurizer_replicas=replicas.get("featurizer", 0),
            featurizer_ready=replicas.get("featurizer", 0),
            inference_replicas=replicas.get("inference", 0),
            inference_ready=replicas.get("inference", 0),
        )  # fmt: skip


def test_coupled_policy_scales_both_pools_within_bounds(
    cluster: Any, poll: Callable[..., Any], run_operator: RunOperator
) -> None:
    metrics = Overloaded()
    with run_operator(cluster, NS, metrics=metrics):
        cluster.put(FP, pipeline(autoscaling={"policy": "coupled", "intervalSeconds": 5}))

        def replicas() -> dict[str, int] | None:
            out = {}
            for name in children(cluster, DEPLOYMENTS):
                d = cluster.get(DEPLOYMENTS, NS, name) or {}
                out[d["metadata"]["labels"]["app.kubernetes.io/component"]] = d["spec"]["replicas"]
            scaled = out.get("featurizer", 0) > 2 and out.get("inference", 0) > 1
            return out if scaled else None

        scaled = poll(replicas, 20, "both pools scaled up")
        assert scaled["featurizer"] == 6 and scaled["inference"] == 3  # the spec's max
        assert scaled["gateway"] == 2
        poll(lambda: "Scaled" in event_reasons(cluster), 15, "a Scaled event")
        # the drift timer keeps what the autoscaler set
        gateway = next(n for n in children(cluster, DEPLOYMENTS) if n.endswith("gateway"))
        cluster.delete(DEPLOYMENTS, NS, gateway)
        poll(lambda: gateway in children(cluster, DEPLOYMENTS), 15, "gateway restored")
        assert replicas() == scaled

        # the hpa policy hands the pools to HorizontalPodAutoscalers: no more observing
        hpa = copy.deepcopy(cluster.get(FP, NS, "feed"))
        hpa["spec"]["autoscaling"]["policy"] = "hpa"
        cluster.put(FP, hpa)
        poll(lambda: len(children(cluster, HPAS)) == 2, 15, "HPAs")
        calls = metrics.calls
        poll(lambda: cluster.get(FP, NS, "feed")["status"]["policy"] == "hpa", 15, "status")
        assert metrics.calls <= calls + 1


def triton_versions(url: str) -> list[int]:
    async def read() -> list[int]:
        client = AsyncTritonClient(url, timeout_s=60)
        try:
            return await client.ready_versions("generative_ranker")
        finally:
            await client.close()

    return asyncio.run(read())


def triton_pod(url: str) -> dict[str, Any]:
    """A Ready Triton pod of pipeline ``feed`` whose http port is the local tritonserver."""
    host, port = url.split(":")
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "feed-inference-0",
            "namespace": NS,
            "labels": {
                "app.kubernetes.io/instance": "feed",
                "app.kubernetes.io/component": "inference",
            },
        },
        "spec": {"containers": [{"name": "triton", "ports": [
            {"name": "http", "containerPort": int(port)}]}]},
        "status": {"podIP": host, "conditions": [{"type": "Ready", "status": "True"}]},
    }  # fmt: skip


def test_feedmodel_loads_versions_into_triton_with_canary_weights(
    cluster: Any, operator: Any, triton: str, poll: Callable[..., Any]
) -> None:
    assert triton_versions(triton) == [3]  # the repository's policy: the latest
    cluster.put(FP, pipeline())
    cluster.put("v1/pods", triton_pod(triton))
    # named like its pipeline: the pipeline's reconcile must not take its ConfigMap for its own
    model = {
        "apiVersion": "feedserve.io/v1alpha1",
        "kind": "FeedModel",
        "metadata": {"name": "feed", "namespace": NS},
        "spec": {"pipeline": "feed", "role": "generative-ranker", "artifact": "pvc://models",
                 "version": 2, "rollout": {"canaryVersion": 3, "canaryWeight": 20},
                 "triton": {"maxBatchSize": 4}},
    }  # fmt: skip
    cluster.put(FM, model)

    def status() -> dict[str, Any]:
        return dict((cluster.get(FM, NS, "feed") or {}).get("status") or {})

    poll(lambda: status().get("ready"), 60, "FeedModel ready")
    st = status()
    assert st["loadedVersions"] == [2, 3] and st["servedWeights"] == {"2": 80, "3": 20}
    assert condition({"status": st}, "Ready")["reason"] == "Loaded"  # type: ignore[index]
    assert triton_versions(triton) == [2, 3]
    cm = cluster.get("v1/configmaps", NS, "feed-model-feed")
    assert cm is not None and '"3": 20' in cm["data"]["weights.json"]
    assert cm["metadata"]["ownerReferences"][0]["kind"] == "FeedModel"
    # the gateway's traffic split, published once both versions are loaded
    routing = cluster.get("v1/configmaps", NS, "feed-routing")
    assert json.loads(routing["data"]["generative_ranker"]) == {"2": 80, "3": 20}
    # a pipeline resync (restoring a deleted child) leaves the FeedModel's ConfigMap alone
    cluster.delete(DEPLOYMENTS, NS, "feed-gateway")
    poll(lambda: "feed-gateway" in children(cluster, DEPLOYMENTS), 15, "gateway restored")
    assert cluster.get("v1/configmaps", NS, "feed-model-feed") is not None

    # the canary is promoted: only version 3 is served
    promoted = copy.deepcopy(cluster.get(FM, NS, "feed"))
    promoted["spec"]["version"] = 3
    promoted["spec"]["rollout"] = {"canaryWeight": 0, "canaryVersion": None}
    cluster.put(FM, promoted)
    poll(lambda: status().get("loadedVersions") == [3] and status().get("ready"), 60, "promoted")
    assert triton_versions(triton) == [3] and status()["servedWeights"] == {"3": 100}
    routing = cluster.get("v1/configmaps", NS, "feed-routing")
    assert json.loads(routing["data"]["generative_ranker"]) == {"3": 100}

    # drift: someone loads the model with other settings by hand; the model timer restores
    # the FeedModel's
    async def reload() -> None:
        client = AsyncTritonClient(triton, timeout_s=60)
        try:
            config = await client.model_config("generative_ranker")
            await client.load_with_config("generative_ranker", {**config, "max_batch_size": 6})
            assert int((await client.model_config("generative_ranker"))["max_batch_size"]) == 6
        finally:
            await client.close()

    asyncio.run(reload())

    def batch_size() -> int:
        async def read() -> int:
            client = AsyncTritonClient(triton, timeout_s=60)
            try:
                return int((await client.model_config("generative_ranker"))["max_batch_size"])
            finally:
                await client.close()

        return asyncio.run(read())

    poll(lambda: batch_size() == 4, 30, "FeedModel settings restored on the pod")

    # delete: the model goes back to the repository's own config
    cluster.delete(FM, NS, "feed")
    poll(lambda: batch_size() == 8, 30, "repository config restored")
    routing = cluster.get("v1/configmaps", NS, "feed-routing")
    assert "generative_ranker" not in (routing.get("data") or {})
    poll(lambda: cluster.get(FM, NS, "feed") is None, 15, "FeedModel gone")


def test_feedserve_operator_run_process(
    cluster: Any, tmp_path: Path, poll: Callable[..., Any]
) -> None:
    """The entry point as users start it: ``feedserve operator run`` in a process of its own
    (here against the mock API server, as against ``kubectl proxy``)."""
    cmd = [sys.executable, "-m", "feedserve.cli", "operator", "run", "--server", cluster.url,
           "--namespace", NS]  # fmt: skip
    env = {**os.environ, "FEEDSERVE_OPERATOR_RESYNC_S": "1"}
    proc = ManagedProcess("operator", cmd, env, tmp_path / "operator.log")
    proc.start()
    try:
        cluster.put(FP, pipeline())
        ready = poll(lambda: condition(cluster.get(FP, NS, "feed"), "Ready") or not proc.alive(),
                     30, "the operator process reconciles")  # fmt: skip
        assert proc.alive(), proc.log_tail()
        assert ready["reason"] == "PoolsNotReady"
        pools = {"feed-featurizer", "feed-inference", "feed-gateway"}
        assert pools <= children(cluster, DEPLOYMENTS)
    finally:
        proc.stop()
    assert proc.proc is not None and proc.proc.returncode == 0, proc.log_tail()
