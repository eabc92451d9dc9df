"""The inference pool as KServe InferenceServices (``render_kserve``): what is rendered, the
FeedModel mapping, status, and every rendered InferenceService validated against KServe's
own CRD schema (vendored in ``data/kserve``, see its README)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from feedserve_operator import render_kserve as rk
from feedserve_operator.render import render_pipeline
from feedserve_operator.spec import Condition, FeedModelSpec, FeedPipelineSpec

ROOT = Path(__file__).resolve().parents[2]
KSERVE_CRD = Path(__file__).parent / "data" / "kserve" / "serving.kserve.io_inferenceservices.yaml"
EXAMPLE = ROOT / "examples" / "pipeline-kserve.yaml"
MODELS = ["retrieval_encoder", "post_index", "generative_ranker"]
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


# --- KServe's CRD schema, strictly ------------------------------------------------------------


def _strict(schema: Any) -> Any:
    """An openAPIV3Schema as a JSON schema that also rejects unknown fields (like ``kubectl
    --validate=strict``), except where the CRD preserves them."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-"):
            continue
        if key == "properties":
            out[key] = {name: _strict(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not"):
            out[key] = _strict(value)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [_strict(v) for v in value]
        else:
            out[key] = value
    closed = schema.get("type") == "object" and "properties" in schema
    open_ = "additionalProperties" in schema or schema.get("x-kubernetes-preserve-unknown-fields")
    if closed and not open_:
        out["additionalProperties"] = False
    return out


@cache
def _validator() -> jsonschema.Draft7Validator:
    crd = yaml.safe_load(KSERVE_CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    return jsonschema.Draft7Validator(_strict(version["schema"]["openAPIV3Schema"]))


def kserve_problems(obj: dict[str, Any]) -> list[str]:
    """What the API server (with KServe's CRD installed) would refuse in ``obj``."""
    problems = [
        f"{'.'.join(str(p) for p in e.absolute_path) or '(object)'}: {e.message}"
        for e in _validator().iter_errors(obj)
    ]
    if obj.get("apiVersion") != "serving.kserve.io/v1beta1" or obj.get("kind") != rk.KIND:
        problems.append(f"not a serving.kserve.io/v1beta1 InferenceService: {obj.get('kind')}")
    name = str(obj.get("metadata", {}).get("name", ""))
    if not DNS_1035.match(name) or len(name) > 63:  # KServe's webhook: a DNS-1035 label
        problems.append(f"metadata.name: {name!r} is not a DNS-1035 label")
    return problems


def test_the_schema_check_can_fail() -> None:
    (good,) = [o for o in kserve_pool() if o["metadata"]["name"] == "feed-post-index"]
    assert kserve_problems(good) == []
    unknown = json.loads(json.dumps(good))
    unknown["spec"]["predictor"]["model"]["modelFormatt"] = {"name": "triton"}
    assert any("modelFormatt" in p for p in kserve_problems(unknown))
    wrong = json.loads(json.dumps(good))
    wrong["spec"]["predictor"]["minReplicas"] = "one"
    assert any(p.startswith("spec.predictor.minReplicas") for p in kserve_problems(wrong))
    pruned = json.loads(json.dumps(good))
    pruned["spec"]["explainer"] = {"containers": []}  # removed from the vendored CRD
    assert any("explainer" in p for p in kserve_problems(pruned))
    assert kserve_problems({**good, "metadata": {"name": "Feed_1"}})


# --- rendering -------------------------------------------------------------------------------


def pipeline_spec(**kserve: Any) -> FeedPipelineSpec:
    return FeedPipelineSpec.model_validate(
        {"inference": {"runtime": "kserve", "kserve": kserve}, "autoscaling": {"policy": "hpa"}}
    )


def kserve_pool(**kserve: Any) -> list[dict[str, Any]]:
    children = render_pipeline("feed", "feeds", pipeline_spec(**kserve), uid="u-1")
    return [o for o in children if o["kind"] == rk.KIND]


VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "transformer": {"transformer": True},
    "standard-cpu": {"deploymentMode": "Standard", "scaleMetric": "cpu", "scaleTarget": 70},
    "knative-memory": {"scaleMetric": "memory", "scaleTarget": 80, "servingRuntime": "triton-2"},
    "s3-triton-protocol": {"storageUri": "s3://models/feed", "protocol": "triton"},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_rendered_inference_service_is_valid_for_kserve(variant: str) -> None:
    services = kserve_pool(**VARIANTS[variant])
    assert [s["metadata"]["name"] for s in services] == [
        "feed-retrieval-encoder", "feed-post-index", "feed-generative-ranker"
    ]  # fmt: skip
    for obj in services:
        assert kserve_problems(obj) == [], (variant, obj["metadata"]["name"])


def test_kserve_replaces_the_triton_deployment_and_keeps_the_rest() -> None:
    children = render_pipeline("feed", "feeds", pipeline_spec(), uid="u-1")
    kinds = [(o["kind"], o["metadata"]["name"]) for o in children]
    assert ("Deployment", "feed-inference") not in kinds
    assert ("Service", "feed-triton") not in kinds
    assert ("PodDisruptionBudget", "feed-inference") not in kinds
    hpas = [n for k, n in kinds if k == "HorizontalPodAutoscaler"]
    assert hpas == ["feed-featurizer"]  # KServe scales the models; the hpa policy the rest
    for kept in [("Deployment", "feed-featurizer"), ("Deployment", "feed-gateway"),
                 ("Service", "feed-gateway"), ("ConfigMap", "feed-workflow"),
                 ("ConfigMap", "feed-routing")]:  # fmt: skip
        assert kept in kinds

    def env(name: str, container: int = 0) -> dict[str, str]:
        (d,) = [o for o in children if o["kind"] == "Deployment" and o["metadata"]["name"] == name]
        items = d["spec"]["template"]["spec"]["containers"][container]["env"]
        return {e["name"]: e.get("value", "") for e in items}

    gateway = env("feed-gateway")
    urls = json.loads(gateway["FEEDSERVE_MODEL_URLS"])
    assert urls == {m: f"feed-{m.replace('_', '-')}-predictor.feeds.svc:80" for m in MODELS}
    assert gateway["FEEDSERVE_INFERENCE_PROTOCOL"] == "v2"
    assert "FEEDSERVE_ROUTING_DIR" not in gateway  # KServe splits canary traffic itself
    encoder = "feed-retrieval-encoder-predictor.feeds.svc:80"
    assert gateway["FEEDSERVE_TRITON_URL"] == encoder
    assert env("feed-featurizer")["FEEDSERVE_TRITON_URL"] == encoder  # posts are embedded there
    assert env("feed-featurizer", container=1)["FEEDSERVE_TRITON_URL"] == encoder


def test_predictor_is_triton_serving_one_model() -> None:
    spec = FeedPipelineSpec.model_validate(
        {"inference": {"runtime": "kserve", "gpusPerPod": 2, "image": "reg/triton:1",
                       "replicas": {"min": 0, "max": 5}, "kserve": {"storageUri": "gs://b/r"}},
         "redis": {"prefix": "p1"}}
    )  # fmt: skip
    (ranker,) = [o for o in render_pipeline("feed", "feeds", spec, uid="u-1")
                 if o["metadata"]["name"] == "feed-generative-ranker"]  # fmt: skip
    meta = ranker["metadata"]
    assert meta["labels"]["app.kubernetes.io/component"] == "inference"
    assert meta["labels"]["app.kubernetes.io/instance"] == "feed"
    assert meta["ownerReferences"][0]["uid"] == "u-1"
    pred = ranker["spec"]["predictor"]
    assert (pred["minReplicas"], pred["maxReplicas"]) == (0, 5)  # Knative may scale to zero
    model = pred["model"]
    assert model["modelFormat"] == {"name": "triton"} and model["protocolVersion"] == "v2"
    assert model["storageUri"] == "gs://b/r" and model["image"] == "reg/triton:1"
    assert "--load-model=generative_ranker" in model["args"]
    assert "--model-control-mode=explicit" in model["args"] and "--http-port=8080" in model["args"]
    assert not any(a.startswith("--load-model=retrieval") for a in model["args"])
    assert model["resources"]["limits"]["nvidia.com/gpu"] == 2
    env = {e["name"]: e.get("value") for e in model["env"]}
    assert env["FEEDSERVE_ARTIFACTS_DIR"] == "/mnt/models/artifacts"
    assert env["FEEDSERVE_DEVICE"] == "cuda" and env["FEEDSERVE_REDIS_PREFIX"] == "p1"
    assert "runtime" not in model  # KServe picks the runtime of the triton format
    assert model["securityContext"]["readOnlyRootFilesystem"] is True
    assert pred["securityContext"]["runAsNonRoot"] is True
    assert "transformer" not in ranker["spec"]
    cpu = FeedPipelineSpec.model_validate({"inference": {"runtime": "kserve", "gpusPerPod": 0}})
    for obj in render_pipeline("feed", "feeds", cpu):
        if obj["kind"] == rk.KIND:
            assert "nvidia.com/gpu" not in obj["spec"]["predictor"]["model"]["resources"]["limits"]
            assert "ownerReferences" not in obj["metadata"]


def test_autoscaling_maps_to_kserve_annotations_and_fields() -> None:
    knative = kserve_pool()[0]
    assert knative["metadata"]["annotations"] == {
        "serving.kserve.io/deploymentMode": "Knative",
        "autoscaling.knative.dev/scale-down-delay": "300s",  # scaleDownStabilizationSeconds
    }
    pred = knative["spec"]["predictor"]
    assert (pred["scaleMetric"], pred["scaleTarget"]) == ("concurrency", 8)
    memory = kserve_pool(scaleMetric="memory")[0]["metadata"]["annotations"]
    assert memory["autoscaling.knative.dev/class"] == "hpa.autoscaling.knative.dev"
    standard = kserve_pool(deploymentMode="Standard", scaleMetric="cpu", scaleTarget=60)[1]
    assert standard["metadata"]["annotations"] == {
        "serving.kserve.io/deploymentMode": "Standard",
        "serving.kserve.io/autoscalerClass": "hpa",
    }
    assert standard["spec"]["predictor"]["scaleMetric"] == "cpu"
    assert standard["spec"]["predictor"]["scaleTarget"] == 60


def test_standard_mode_needs_a_resource_metric() -> None:
    with pytest.raises(ValueError, match="scaleMetric cpu or memory"):
        pipeline_spec(deploymentMode="Standard")


def test_transformer_is_the_featurizer_in_front_of_the_encoder_only() -> None:
    services = {o["metadata"]["name"]: o for o in kserve_pool(transformer=True)}
    assert [n for n, o in services.items() if "transformer" in o["spec"]] == [
        "feed-retrieval-encoder"
    ]
    tr = services["feed-retrieval-encoder"]["spec"]["transformer"]
    (container,) = tr["containers"]
    assert container["command"] == ["python", "-m", "feedserve_featurizers.kserve_transformer"]
    # the transformer forwards to /v2/models/<model_name>/infer: Triton's model name
    assert "--model_name=retrieval_encoder" in container["args"]
    assert "--predictor_protocol=v2" in container["args"]
    assert container["image"] == FeedPipelineSpec().featurizers.image
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["FEEDSERVE_ARTIFACTS_DIR"] == "/models/artifacts"
    assert {v["name"] for v in tr["volumes"]} == {"models", "tmp"}


# --- FeedModels ------------------------------------------------------------------------------


def model(**fields: Any) -> FeedModelSpec:
    base = {"pipeline": "feed", "role": "generative-ranker", "artifact": "pvc://m", "version": 2}
    return FeedModelSpec.model_validate({**base, **fields})


def test_canary_weight_is_canary_traffic_percent() -> None:
    canary = model(rollout={"canaryVersion": 3, "canaryWeight": 20})
    assert rk.model_isvc(canary) == "feed-generative-ranker"
    assert rk.canary_patch(canary) == {
        "spec": {
            "predictor": {
                "canaryTrafficPercent": 20,
                "annotations": {"feedserve.io/model-version": "3"},
            }
        }
    }
    # promoted: the canary's revision takes all the traffic
    promoted = rk.canary_patch(model(version=3))["spec"]["predictor"]
    assert promoted == {"canaryTrafficPercent": None,
                        "annotations": {"feedserve.io/model-version": "3"}}  # fmt: skip
    same = rk.canary_patch(model(rollout={"canaryVersion": 2, "canaryWeight": 50}))
    assert same["spec"]["predictor"]["canaryTrafficPercent"] is None
    # applied as a merge patch, the InferenceService stays valid; removing the FeedModel
    # takes its fields out again
    isvc = kserve_pool()[2]
    patched = rk.merge_patch(isvc, rk.canary_patch(canary))
    assert patched["spec"]["predictor"]["canaryTrafficPercent"] == 20
    assert patched["spec"]["predictor"]["model"] == isvc["spec"]["predictor"]["model"]
    assert kserve_problems(patched) == []
    assert rk.needs_patch(canary, isvc) and not rk.needs_patch(canary, patched)
    released = rk.merge_patch(patched, rk.RELEASE_PATCH)
    assert released["spec"]["predictor"].pop("annotations") == {}  # an emptied map stays
    assert released == isvc


def test_pod_versions_follow_each_revision() -> None:
    def pod(name: str, version: str | None) -> dict[str, Any]:
        annotations = {} if version is None else {"feedserve.io/model-version": version}
        return {"metadata": {"name": name, "annotations": annotations}}

    spec = model(rollout={"canaryVersion": 3, "canaryWeight": 20})
    pods = [pod("prev-1", "2"), pod("latest-1", "3"), pod("before-the-feedmodel", None)]
    assert rk.pod_versions(pods, spec) == {"prev-1": [2], "latest-1": [3],
                                           "before-the-feedmodel": [2]}  # fmt: skip
    assert rk.predictor_selector(spec) == {
        "serving.kserve.io/inferenceservice": "feed-generative-ranker", "component": "predictor"
    }  # fmt: skip


def ready_isvc(status: str = "True", message: str = "") -> dict[str, Any]:
    condition = {"type": "Ready", "status": status, "message": message}
    return {"status": {"conditions": [{"type": "PredictorReady", "status": status}, condition]}}


def test_model_status_from_the_inference_service_and_its_pods() -> None:
    spec = model(rollout={"canaryVersion": 3, "canaryWeight": 20})
    expected = {"a": [2], "b": [3]}

    def status(isvc: Any, loaded: dict[str, list[int]], errors: Any = None) -> Any:
        return rk.model_status(spec, isvc, loaded, expected, errors or {}, 4, [], "t")

    ok = status(ready_isvc(), {"a": [2], "b": [3]})
    assert ok.ready and ok.loaded_versions == [2, 3]
    assert ok.served_weights == {"2": 80, "3": 20}
    assert {c.type: c.reason for c in ok.conditions}["Ready"] == "Loaded"
    waiting = status(ready_isvc("False", "RevisionMissing"), {"a": [2], "b": [3]})
    ready = {c.type: c for c in waiting.conditions}["Ready"]
    assert not waiting.ready and ready.reason == "InferenceServiceNotReady"
    assert "RevisionMissing" in ready.message
    behind = status(ready_isvc(), {"a": [2], "b": [2]})
    assert not behind.ready and "loading on b" in behind.conditions[0].message
    failed = status(ready_isvc(), {"a": [2]}, {"b": "boom"})
    assert not failed.ready and {c.type: c.status for c in failed.conditions}["Degraded"] == "True"
    assert not status(None, {}).ready


def test_pool_status_counts_ready_inference_services() -> None:
    wanted = ["feed-a", "feed-b", "feed-c"]
    live = {"feed-a": ready_isvc(), "feed-b": ready_isvc("False", "pulling image"), "feed-c": None}
    pool, waiting = rk.pool_status(wanted, live)
    assert (pool.desired, pool.ready) == (3, 1)
    assert waiting == {"feed-b": "pulling image", "feed-c": "not created yet"}
    assert rk.isvc_ready({"status": {}}) == (False, "no Ready condition yet")


def test_condition_model_accepts_what_model_status_emits() -> None:
    st = rk.model_status(model(), ready_isvc(), {"a": [2]}, {"a": [2]}, {}, 1, [], "t")
    for c in st.conditions:
        assert Condition.model_validate(c.model_dump(by_alias=True)) == c


# --- the example, rendered as users render it ------------------------------------------------


def test_feedserve_operator_render_prints_valid_inference_services() -> None:
    cmd = [sys.executable, "-m", "feedserve.cli", "operator", "render", "-f", str(EXAMPLE)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == rk.KIND}
    assert sorted(services) == ["feed-generative-ranker", "feed-post-index",
                                "feed-retrieval-encoder"]  # fmt: skip
    for obj in services.values():
        assert kserve_problems(obj) == [], obj["metadata"]["name"]
    # the example's FeedModel: the ranker's canary, 10% on version 8
    ranker = services["feed-generative-ranker"]["spec"]["predictor"]
    assert ranker["canaryTrafficPercent"] == 10
    assert ranker["annotations"] == {"feedserve.io/model-version": "8"}
    assert "canaryTrafficPercent" not in services["feed-post-index"]["spec"]["predictor"]
    assert "transformer" in services["feed-retrieval-encoder"]["spec"]
    assert not [
        d for d in docs if d["kind"] == "Deployment" and "inference" in d["metadata"]["name"]
    ]


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_renders_valid_inference_services(path: Path) -> None:
    """What the examples render for KServe (test_charts validates the Kubernetes kinds)."""
    from feedserve_operator.cli_operator import render_document

    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    for i, doc in enumerate(docs):
        for child in render_document(f"{path.name}#{i + 1}", doc, "default"):
            if child["apiVersion"].startswith("serving.kserve.io/"):
                assert kserve_problems(child) == [], f"{path.name}: {child['metadata']['name']}"
