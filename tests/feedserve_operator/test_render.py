"""render_pipeline / render_model: the children of the custom resources, as pure data."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from feedserve.workflow.spec import DEFAULT_WORKFLOW, WorkflowError
from feedserve_operator.render import (
    child_key,
    render_model,
    render_pipeline,
    triton_config,
)
from feedserve_operator.spec import FeedModelSpec, FeedPipelineSpec

COMMON = {
    "app.kubernetes.io/name": "feedserve",
    "app.kubernetes.io/instance": "feed",
    "app.kubernetes.io/managed-by": "feedserve-operator",
}


def spec(**fields: Any) -> FeedPipelineSpec:
    return FeedPipelineSpec.model_validate(fields)


def by_kind(objs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def deployment(objs: list[dict[str, Any]], component: str) -> dict[str, Any]:
    (d,) = [o for o in objs if o["kind"] == "Deployment"
            and o["metadata"]["labels"]["app.kubernetes.io/component"] == component]  # fmt: skip
    return d


def pod(d: dict[str, Any]) -> dict[str, Any]:
    return dict(d["spec"]["template"]["spec"])


def env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.fixture(scope="module")
def children() -> list[dict[str, Any]]:
    return render_pipeline("feed", "ns", spec(), uid="uid-1")


def test_children_and_labels(children: list[dict[str, Any]]) -> None:
    kinds = [(o["kind"], o["metadata"]["name"]) for o in children]
    assert kinds[:10] == [
        ("ConfigMap", "feed-workflow"), ("ConfigMap", "feed-routing"),
        ("Deployment", "feed-featurizer"),
        ("Deployment", "feed-inference"), ("Service", "feed-triton"),
        ("Deployment", "feed-gateway"), ("Service", "feed-gateway"),
        ("PodDisruptionBudget", "feed-featurizer"), ("PodDisruptionBudget", "feed-inference"),
        ("PodDisruptionBudget", "feed-gateway"),
    ]  # fmt: skip
    assert len({child_key(o) for o in children}) == len(children)
    for o in children:
        meta = o["metadata"]
        assert meta["namespace"] == "ns"
        assert COMMON.items() <= meta["labels"].items(), meta["name"]
        assert meta["labels"]["app.kubernetes.io/component"]
        assert meta["ownerReferences"] == [{
            "apiVersion": "feedserve.io/v1alpha1", "kind": "FeedPipeline", "name": "feed",
            "uid": "uid-1", "controller": True, "blockOwnerDeletion": True}]  # fmt: skip
    assert not by_kind(children, "HorizontalPodAutoscaler")  # coupled is the default
    assert child_key(children[2]) == ("apps/v1/Deployment", "ns", "feed-featurizer")


def test_no_owner_references_without_uid() -> None:
    for o in render_pipeline("feed", "ns", spec()):
        assert "ownerReferences" not in o["metadata"]


def test_triton_deployment_and_service(children: list[dict[str, Any]]) -> None:
    d = deployment(children, "inference")
    p = pod(d)
    (c,) = p["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["resources"]["requests"] == {"cpu": "4", "memory": "16Gi"}
    assert c["resources"]["limits"]["cpu"] == "4"  # limits default to the requests
    assert "--model-control-mode=explicit" in c["command"]
    loads = [a for a in c["command"] if a.startswith("--load-model=")]
    assert loads == ["--load-model=retrieval_encoder", "--load-model=post_index",
                     "--load-model=generative_ranker"]  # fmt: skip
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8000}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8000}
    assert {x["name"]: x["containerPort"] for x in c["ports"]} == {
        "http": 8000, "grpc": 8001, "metrics": 8002}  # fmt: skip
    vols = {v["name"]: v for v in p["volumes"]}
    assert vols["models"]["persistentVolumeClaim"] == {"claimName": "feedserve-models",
                                                       "readOnly": True}  # fmt: skip
    mount = next(m for m in c["volumeMounts"] if m["name"] == "models")
    assert mount["readOnly"] is True and mount["mountPath"] == "/models"
    svc = by_kind(children, "Service")["feed-triton"]
    assert {x["name"]: x["port"] for x in svc["spec"]["ports"]} == {
        "http": 8000, "grpc": 8001, "metrics": 8002}  # fmt: skip
    assert svc["spec"]["selector"] == d["spec"]["selector"]["matchLabels"]
    assert d["spec"]["replicas"] == 1


def test_cpu_only_triton_has_no_gpu_limit() -> None:
    objs = render_pipeline(
        "feed", "ns", spec(inference={"gpusPerPod": 0, "models": ["post_index"]})
    )
    c = pod(deployment(objs, "inference"))["containers"][0]
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    assert [a for a in c["command"] if a.startswith("--load")] == ["--load-model=post_index"]
    objs = render_pipeline("feed", "ns", spec(inference={"gpusPerPod": 4}))
    c = pod(deployment(objs, "inference"))["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 4


def test_featurizer_and_gateway(children: list[dict[str, Any]]) -> None:
    f = pod(deployment(children, "featurizer"))
    worker, consumer = f["containers"]
    assert worker["command"][:6] == ["python", "-m", "celery", "-A",
                                     "feedserve_featurizers.celery_app", "worker"]  # fmt: skip
    assert "--concurrency=4" in worker["command"]
    assert consumer["command"] == ["python", "-m", "feedserve_featurizers.consumer"]
    g = deployment(children, "gateway")
    (gc,) = pod(g)["containers"]
    assert "feedserve.gateway.app:create_app" in gc["command"] and "--factory" in gc["command"]
    assert gc["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gc["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert g["spec"]["replicas"] == 2
    svc = by_kind(children, "Service")["feed-gateway"]
    assert svc["spec"]["ports"][0]["port"] == 8000
    for c in (worker, consumer, gc):
        e = env(c)
        assert e["FEEDSERVE_REDIS_URL"] == {
            "secretKeyRef": {"name": "feedserve-redis", "key": "url"}
        }
        assert e["FEEDSERVE_REDIS_PREFIX"] == "fs"
        assert e["FEEDSERVE_TRITON_URL"] == "feed-triton.ns.svc:8000"
        assert e["FEEDSERVE_WORKFLOW"] == "/etc/feedserve/workflow.yaml"
        assert any(m["name"] == "workflow" and m["mountPath"] == "/etc/feedserve"
                   for m in c["volumeMounts"])  # fmt: skip
    assert worker["resources"] == {"requests": {"cpu": "1", "memory": "2Gi"},
                                   "limits": {"cpu": "1", "memory": "2Gi"}}  # fmt: skip


def test_workflow_config_map(children: list[dict[str, Any]]) -> None:
    cm = by_kind(children, "ConfigMap")["feed-workflow"]
    assert cm["data"]["workflow.yaml"] == DEFAULT_WORKFLOW.read_text()
    for component in ("featurizer", "gateway"):
        p = pod(deployment(children, component))
        assert {"name": "workflow", "configMap": {"name": "feed-workflow"}} in p["volumes"]
    # the spec's own workflow replaces the default, and rolls the pods (hash annotation)
    wf = yaml.safe_load(DEFAULT_WORKFLOW.read_text())
    wf["deadline_ms"] = 500
    objs = render_pipeline("feed", "ns", spec(workflow=wf))
    text = by_kind(objs, "ConfigMap")["feed-workflow"]["data"]["workflow.yaml"]
    assert yaml.safe_load(text)["deadline_ms"] == 500
    before = deployment(children, "gateway")["spec"]["template"]["metadata"]["annotations"]
    after = deployment(objs, "gateway")["spec"]["template"]["metadata"]["annotations"]
    assert before != after


def test_offline_jobs_and_cronjob(children: list[dict[str, Any]]) -> None:
    (job,) = by_kind(children, "Job").values()  # embed_posts: offline+nearline, on demand
    assert job["metadata"]["labels"]["feedserve.io/workflow-step"] == "embed_posts"
    assert COMMON.items() <= job["metadata"]["labels"].items()
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    wf = yaml.safe_load(DEFAULT_WORKFLOW.read_text())
    for step in wf["steps"]:
        if step["name"] == "embed_member":
            step["mode"] = "offline+nearline"
            step["on_miss"] = "compute"
    objs = render_pipeline("feed", "ns", spec(workflow=wf))
    (cron,) = by_kind(objs, "CronJob").values()
    assert cron["spec"]["schedule"] == "0 3 * * *"
    p = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    c = p["containers"][0]
    assert c["args"][:4] == ["feedserve", "run", "offline", "embed_member"]
    assert env(c)["FEEDSERVE_REDIS_URL"]["secretKeyRef"]["name"] == "feedserve-redis"
    assert env(c)["FEEDSERVE_WORKFLOW"] == "/etc/feedserve/workflow.yaml"
    assert p["securityContext"]["runAsNonRoot"] is True


def test_invalid_workflow_raises() -> None:
    wf = yaml.safe_load(DEFAULT_WORKFLOW.read_text())
    wf["steps"][0]["op"] = "no_such_op"
    with pytest.raises(WorkflowError, match="no_such_op"):
        render_pipeline("feed", "ns", spec(workflow=wf))


def test_restricted_security(children: list[dict[str, Any]]) -> None:
    pods = [pod(d) for d in by_kind(children, "Deployment").values()]
    pods += [j["spec"]["template"]["spec"] for j in by_kind(children, "Job").values()]
    for p in pods:
        assert p["securityContext"]["runAsNonRoot"] is True
        assert p["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert {"name": "tmp", "emptyDir": {}} in p["volumes"]
        for c in p["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
            assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
            assert c["resources"]["requests"] and c["resources"]["limits"]


def test_pdbs(children: list[dict[str, Any]]) -> None:
    pdbs = by_kind(children, "PodDisruptionBudget")
    assert set(pdbs) == {"feed-featurizer", "feed-inference", "feed-gateway"}
    for name, pdb in pdbs.items():
        assert pdb["spec"]["maxUnavailable"] == 1
        target = by_kind(children, "Deployment")[name]
        assert pdb["spec"]["selector"] == target["spec"]["selector"]


def test_hpas_only_for_policy_hpa() -> None:
    s = spec(autoscaling={"policy": "hpa", "featurizerTargetCpuPercent": 60,
                          "tritonTargetQueueMs": 20, "scaleDownStabilizationSeconds": 120},
             featurizers={"replicas": {"min": 0, "max": 6}})  # fmt: skip
    hpas = by_kind(render_pipeline("feed", "ns", s), "HorizontalPodAutoscaler")
    assert set(hpas) == {"feed-featurizer", "feed-inference"}  # the gateway is fixed
    f = hpas["feed-featurizer"]["spec"]
    assert f["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                   "name": "feed-featurizer"}  # fmt: skip
    assert (f["minReplicas"], f["maxReplicas"]) == (1, 6)
    assert f["metrics"] == [{"type": "Resource", "resource": {"name": "cpu", "target": {
        "type": "Utilization", "averageUtilization": 60}}}]  # fmt: skip
    assert f["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 120
    i = hpas["feed-inference"]["spec"]
    assert i["metrics"] == [{"type": "Pods", "pods": {
        "metric": {"name": "nv_inference_queue_duration_us"},
        "target": {"type": "AverageValue", "averageValue": "20000"}}}]  # fmt: skip
    assert (i["minReplicas"], i["maxReplicas"]) == (1, 4)
    coupled = render_pipeline("feed", "ns", spec(autoscaling={"policy": "coupled"}))
    assert not by_kind(coupled, "HorizontalPodAutoscaler")


def test_replicas_from_argument_and_resources() -> None:
    s = spec(featurizers={"replicas": {"min": 2, "max": 6},
                          "resources": {"requests": {"cpu": "500m", "memory": "1Gi"},
                                        "limits": {"cpu": "2", "memory": "3Gi"}}})  # fmt: skip
    objs = render_pipeline("feed", "ns", s, replicas={"featurizer": 5, "inference": 3})
    assert deployment(objs, "featurizer")["spec"]["replicas"] == 5
    assert deployment(objs, "inference")["spec"]["replicas"] == 3
    assert deployment(objs, "gateway")["spec"]["replicas"] == 2
    worker = pod(deployment(objs, "featurizer"))["containers"][0]
    assert worker["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"},
                                   "limits": {"cpu": "2", "memory": "3Gi"}}  # fmt: skip
    assert deployment(render_pipeline("feed", "ns", s), "featurizer")["spec"]["replicas"] == 2


def test_deterministic_and_yaml_clean() -> None:
    s = spec(autoscaling={"policy": "hpa"})
    a = render_pipeline("feed", "ns", s, uid="u")
    b = render_pipeline("feed", "ns", s, uid="u")
    assert json.dumps(a) == json.dumps(b)
    text = yaml.safe_dump_all(a)
    assert "&id" not in text and "*id" not in text  # no shared sub-objects -> no anchors


def model_spec(**fields: Any) -> FeedModelSpec:
    base = {"pipeline": "feed", "role": "generative-ranker", "artifact": "pvc://m", "version": 2}
    return FeedModelSpec.model_validate({**base, **fields})


def test_render_model() -> None:
    s = model_spec(triton={"instances": 2, "maxBatchSize": 16, "maxQueueDelayMicroseconds": 500,
                           "preferredBatchSizes": [4, 8]},
                   rollout={"canaryVersion": 3, "canaryWeight": 25})  # fmt: skip
    (cm,) = render_model("ranker", "ns", s, uid="m-1")
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == "feed-model-ranker"
    assert cm["metadata"]["ownerReferences"][0] == {
        "apiVersion": "feedserve.io/v1alpha1", "kind": "FeedModel", "name": "ranker",
        "uid": "m-1", "controller": True, "blockOwnerDeletion": True}  # fmt: skip
    labels = cm["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "feedserve-operator"
    assert labels["feedserve.io/pipeline"] == "feed"
    config = cm["data"]["config.pbtxt"]
    assert 'name: "generative_ranker"' in config
    assert "version_policy: { specific: { versions: [ 2, 3 ] } }" in config
    assert "instance_group [ { count: 2 } ]" in config
    assert "max_batch_size: 16" in config
    assert "preferred_batch_size: [ 4, 8 ]" in config
    assert "max_queue_delay_microseconds: 500" in config
    assert json.loads(cm["data"]["weights.json"]) == {"2": 75, "3": 25}
    (plain,) = render_model("ranker", "ns", model_spec())
    assert "ownerReferences" not in plain["metadata"]
    assert json.loads(plain["data"]["weights.json"]) == {"2": 100}
    assert "versions: [ 2 ]" in plain["data"]["config.pbtxt"]


def test_model_config_parses_as_triton_protobuf_text() -> None:
    pb = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    text_format = pytest.importorskip("google.protobuf.text_format")
    s = model_spec(triton={"preferredBatchSizes": [8]}, rollout={"canaryVersion": 3})
    cfg = text_format.Parse(triton_config(s), pb.ModelConfig())
    assert cfg.name == "generative_ranker"
    assert list(cfg.version_policy.specific.versions) == [2, 3]
    assert cfg.dynamic_batching.preferred_batch_size == [8]
    assert cfg.instance_group[0].count == 1
