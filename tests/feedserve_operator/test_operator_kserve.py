"""The operator with ``inference.runtime: kserve`` end to end against the mock Kubernetes API
(kmock's emulator, with KServe's InferenceService resource declared as KServe's CRD would):
kopf runs the real handlers; the test plays KServe (Ready conditions, predictor pods) and
watches the InferenceServices, the pipeline's status and a FeedModel's canary."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
import kmock
import pytest

from feedserve.triton_client import AsyncTritonClient

if TYPE_CHECKING:
    from tests.feedserve_operator.conftest import RunOperator

NS = "kfeeds"
FP = "feedserve.io/v1alpha1/feedpipelines"
FM = "feedserve.io/v1alpha1/feedmodels"
ISVC = "serving.kserve.io/v1beta1/inferenceservices"
DEPLOYMENTS = "apps/v1/deployments"
HPAS = "autoscaling/v2/horizontalpodautoscalers"
VERBS = ["list", "watch", "get", "patch", "create", "update", "delete"]
MODELS = ["retrieval_encoder", "post_index", "generative_ranker"]
ISVCS = {"feed-retrieval-encoder", "feed-post-index", "feed-generative-ranker"}


@pytest.fixture()
def kserve_cluster(cluster: Any) -> Any:
    """The mock cluster with KServe installed (its InferenceService resource)."""

    async def declare() -> None:
        cluster.emulator.resources[ISVC] = {
            "kind": "InferenceService", "namespaced": True, "verbs": VERBS,
            "subresources": ["status"],
        }  # fmt: skip

    cluster.call(declare)
    return cluster


def pipeline(**inference: Any) -> dict[str, Any]:
    return {
        "apiVersion": "feedserve.io/v1alpha1",
        "kind": "FeedPipeline",
        "metadata": {"name": "feed", "namespace": NS},
        "spec": {
            "inference": {"runtime": "kserve", "gpusPerPod": 1, "models": list(MODELS),
                          "replicas": {"min": 1, "max": 3}, **inference},
            "featurizers": {"replicas": {"min": 1, "max": 4}},
            "gateway": {"replicas": 1},
            "autoscaling": {"policy": "hpa"},
        },
    }  # fmt: skip


def children(cluster: Any, resource: str) -> set[str]:
    return set(cluster.names(resource, NS))


def set_status(cluster: Any, resource: str, name: str, status: dict[str, Any]) -> None:
    """What KServe (or the Deployment controller) would write into an object's status."""
    path = cluster._path(resource, NS, name) + "/status"
    with httpx.Client(base_url=cluster.url, timeout=10) as client:
        resp = client.patch(path, json={"status": status},
                            headers={"Content-Type": "application/merge-patch+json"})  # fmt: skip
        resp.raise_for_status()


def ready(status: str, message: str = "") -> dict[str, Any]:
    return {"conditions": [{"type": "PredictorReady", "status": status},
                           {"type": "Ready", "status": status, "message": message}]}  # fmt: skip


def condition(obj: dict[str, Any] | None, ctype: str) -> dict[str, Any]:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return dict(c)
    return {}


def test_pipeline_inference_pool_as_inference_services(
    kserve_cluster: Any, poll: Callable[..., Any], run_operator: RunOperator
) -> None:
    cluster = kserve_cluster
    with run_operator(cluster, NS):
        cluster.put(FP, pipeline())
        poll(lambda: children(cluster, ISVC) == ISVCS, 15, "one InferenceService per model")
        for name in ISVCS:
            isvc = cluster.get(ISVC, NS, name)
            ref = isvc["metadata"]["ownerReferences"][0]
            assert ref["kind"] == "FeedPipeline" and ref["name"] == "feed" and ref["uid"]
            model = isvc["spec"]["predictor"]["model"]
            assert model["modelFormat"] == {"name": "triton"}
            assert f"--load-model={name.removeprefix('feed-').replace('-', '_')}" in model["args"]
            assert model["resources"]["limits"]["nvidia.com/gpu"] in (1, "1")
        deployments = poll(lambda: len(children(cluster, DEPLOYMENTS)) >= 2
                           and children(cluster, DEPLOYMENTS), 15, "Deployments")  # fmt: skip
        assert deployments == {"feed-featurizer", "feed-gateway"}  # no Triton Deployment
        poll(lambda: children(cluster, HPAS) == {"feed-featurizer"}, 15, "featurizer HPA only")
        gateway = cluster.get(DEPLOYMENTS, NS, "feed-gateway")
        env = {e["name"]: e.get("value") for e in
               gateway["spec"]["template"]["spec"]["containers"][0]["env"]}  # fmt: skip
        assert "feed-generative-ranker-predictor.kfeeds.svc:80" in env["FEEDSERVE_MODEL_URLS"]

        # status: the InferenceServices' Ready conditions, each one's reason in the message
        def status() -> dict[str, Any]:
            return dict((cluster.get(FP, NS, "feed") or {}).get("status") or {})

        poll(lambda: status().get("inference") == {"desired": 3, "ready": 0}, 15, "status")
        assert "no Ready condition yet" in condition(cluster.get(FP, NS, "feed"), "Ready")[
            "message"]  # fmt: skip
        set_status(cluster, ISVC, "feed-retrieval-encoder", ready("True"))
        set_status(cluster, ISVC, "feed-post-index", ready("True"))
        set_status(cluster, ISVC, "feed-generative-ranker", ready("False", "RevisionMissing"))
        poll(lambda: status().get("inference") == {"desired": 3, "ready": 2}, 15, "2 ready")
        fp = poll(
            lambda: (
                "RevisionMissing"
                in condition(cluster.get(FP, NS, "feed"), "Ready").get("message", "")
                and cluster.get(FP, NS, "feed")
            ),
            15,
            "why not ready",
        )
        assert "feed-generative-ranker: RevisionMissing" in condition(fp, "Ready")["message"]
        # KServe reports the ranker ready, the Deployments their pods: the pipeline is Ready
        set_status(cluster, ISVC, "feed-generative-ranker", ready("True"))
        for name in deployments:
            n = cluster.get(DEPLOYMENTS, NS, name)["spec"]["replicas"]
            set_status(cluster, DEPLOYMENTS, name, {"replicas": n, "readyReplicas": n})
        fp = poll(lambda: condition(cluster.get(FP, NS, "feed"), "Ready").get("status") == "True"
                  and cluster.get(FP, NS, "feed"), 15, "pipeline Ready")  # fmt: skip
        assert fp["status"]["inference"] == {"desired": 3, "ready": 3}

        # a spec change is patched into the InferenceServices; a removed model's one goes
        changed = copy.deepcopy(cluster.get(FP, NS, "feed"))
        changed["spec"]["inference"]["gpusPerPod"] = 2
        changed["spec"]["inference"]["kserve"] = {"scaleTarget": 16}
        changed["spec"]["inference"]["models"] = ["retrieval_encoder", "generative_ranker"]
        cluster.put(FP, changed)

        def patched() -> bool:
            pred = (cluster.get(ISVC, NS, "feed-generative-ranker") or {})["spec"]["predictor"]
            limits = pred["model"]["resources"]["limits"]
            return pred["scaleTarget"] == 16 and limits["nvidia.com/gpu"] in (2, "2")

        poll(patched, 15, "InferenceService patched: 2 GPUs, scaleTarget 16")
        poll(lambda: "feed-post-index" not in children(cluster, ISVC), 15, "removed model")
        # the patch kept what KServe wrote
        assert condition(cluster.get(ISVC, NS, "feed-generative-ranker"), "Ready")["status"]

        # drift: an InferenceService deleted by hand comes back
        cluster.delete(ISVC, NS, "feed-retrieval-encoder")
        poll(lambda: "feed-retrieval-encoder" in children(cluster, ISVC), 15, "restored")

        # deleting the pipeline deletes its InferenceServices
        cluster.delete(FP, NS, "feed")
        poll(lambda: not children(cluster, ISVC), 15, "InferenceServices deleted")
        poll(lambda: cluster.get(FP, NS, "feed") is None, 15, "FeedPipeline gone")


def triton_state(url: str) -> tuple[list[int], int]:
    """The ready versions of the model and its max batch size."""

    async def read() -> tuple[list[int], int]:
        client = AsyncTritonClient(url, timeout_s=60)
        try:
            config = await client.model_config("generative_ranker")
            return await client.ready_versions("generative_ranker"), int(config["max_batch_size"])
        finally:
            await client.close()

    return asyncio.run(read())


def predictor_pod(url: str, version: str) -> dict[str, Any]:
    """A Ready predictor pod of the ranker's InferenceService (KServe's labels, the revision's
    annotations) whose Triton is the local tritonserver."""
    host, port = url.split(":")
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "feed-generative-ranker-predictor-00001-deployment-x",
            "namespace": NS,
            "labels": {"serving.kserve.io/inferenceservice": "feed-generative-ranker",
                       "component": "predictor", "app.kubernetes.io/instance": "feed",
                       "app.kubernetes.io/component": "inference"},
            "annotations": {"feedserve.io/model-version": version},
        },
        "spec": {"containers": [{"name": "kserve-container", "ports": [
            {"name": "http", "containerPort": int(port)}]}]},
        "status": {"podIP": host, "conditions": [{"type": "Ready", "status": "True"}]},
    }  # fmt: skip


def test_feedmodel_canary_is_the_inference_service_traffic_split(
    kserve_cluster: Any, triton: str, poll: Callable[..., Any], run_operator: RunOperator
) -> None:
    cluster = kserve_cluster
    assert triton_state(triton) == ([3], 8)  # the repository's policy: the latest
    with run_operator(cluster, NS):
        cluster.put(FP, pipeline(models=["generative_ranker"]))
        poll(lambda: "feed-generative-ranker" in children(cluster, ISVC), 15, "InferenceService")
        set_status(cluster, ISVC, "feed-generative-ranker", ready("True"))
        # a pod of the revision from before the FeedModel, pinned to version 2
        cluster.put("v1/pods", predictor_pod(triton, "2"))
        model = {
            "apiVersion": "feedserve.io/v1alpha1",
            "kind": "FeedModel",
            "metadata": {"name": "ranker", "namespace": NS},
            "spec": {"pipeline": "feed", "role": "generative-ranker", "artifact": "pvc://m",
                     "version": 2, "triton": {"maxBatchSize": 4}},
        }  # fmt: skip
        cluster.put(FM, model)

        def status() -> dict[str, Any]:
            return dict((cluster.get(FM, NS, "ranker") or {}).get("status") or {})

        def predictor() -> dict[str, Any]:
            return dict(cluster.get(ISVC, NS, "feed-generative-ranker")["spec"]["predictor"])

        poll(lambda: status().get("ready"), 60, "FeedModel ready on version 2")
        assert triton_state(triton) == ([2], 4)  # the version and the FeedModel's settings
        assert predictor()["annotations"] == {"feedserve.io/model-version": "2"}
        assert "canaryTrafficPercent" not in predictor()

        # a canary: 20% of the traffic to a new revision serving version 3
        canary = copy.deepcopy(cluster.get(FM, NS, "ranker"))
        canary["spec"]["rollout"] = {"canaryVersion": 3, "canaryWeight": 20}
        cluster.put(FM, canary)
        poll(lambda: predictor().get("canaryTrafficPercent") == 20, 15, "canaryTrafficPercent")
        assert predictor()["annotations"] == {"feedserve.io/model-version": "3"}
        # KServe rolls out the new revision: its pods carry the new annotation
        cluster.put("v1/pods", predictor_pod(triton, "3"))
        poll(lambda: status().get("loadedVersions") == [3] and status().get("ready"), 60,
             "the new revision's pod serves version 3")  # fmt: skip
        assert triton_state(triton) == ([3], 4)
        assert status()["servedWeights"] == {"2": 80, "3": 20}
        # while KServe has the InferenceService not Ready, neither is the FeedModel
        set_status(cluster, ISVC, "feed-generative-ranker", ready("False", "RevisionFailed"))
        poll(lambda: not status().get("ready"), 15, "FeedModel not ready with its isvc")
        assert condition({"status": status()}, "Ready")["reason"] == "InferenceServiceNotReady"
        set_status(cluster, ISVC, "feed-generative-ranker", ready("True"))

        # promoted: the latest revision takes all the traffic
        promoted = copy.deepcopy(cluster.get(FM, NS, "ranker"))
        promoted["spec"]["version"] = 3
        promoted["spec"]["rollout"] = {"canaryWeight": 0, "canaryVersion": None}
        cluster.put(FM, promoted)
        poll(lambda: "canaryTrafficPercent" not in predictor(), 15, "canary traffic removed")
        poll(lambda: status().get("servedWeights") == {"3": 100} and status().get("ready"), 30,
             "promoted")  # fmt: skip
        # the pipeline's own resync keeps the FeedModel's fields
        cluster.delete(DEPLOYMENTS, NS, "feed-gateway")
        poll(lambda: "feed-gateway" in children(cluster, DEPLOYMENTS), 15, "gateway restored")
        assert predictor()["annotations"] == {"feedserve.io/model-version": "3"}

        # deleted: the InferenceService and the pod go back to the repository's config
        cluster.delete(FM, NS, "ranker")
        poll(lambda: triton_state(triton)[1] == 8, 30, "repository config restored")
        poll(lambda: not (predictor().get("annotations") or {}), 15, "annotation removed")
        poll(lambda: cluster.get(FM, NS, "ranker") is None, 15, "FeedModel gone")


def test_without_kserve_installed_the_pipeline_says_so(
    cluster: Any, poll: Callable[..., Any], run_operator: RunOperator
) -> None:
    """A cluster without KServe (its API answers 404): the pipeline is Degraded, naming why."""

    async def uninstall() -> None:
        cluster.emulator[kmock.resource(ISVC)] << 404

    cluster.call(uninstall)
    with run_operator(cluster, NS):
        cluster.put(FP, pipeline())

        def degraded_condition() -> dict[str, Any] | None:
            found = condition(cluster.get(FP, NS, "feed"), "Degraded")
            return found if found.get("status") == "True" else None

        degraded = poll(degraded_condition, 15, "Degraded")
        assert degraded["reason"] == "ReconcileFailed"
        assert "is KServe installed?" in degraded["message"]
        # the rest of the pipeline was not held back by it
        assert {"feed-featurizer"} <= children(cluster, DEPLOYMENTS)
