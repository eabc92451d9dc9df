"""The Helm charts, rendered with the real Helm engine (helm-python-sdk) for the default values
and several value sets; every object validated against the Kubernetes OpenAPI schema
(kubernetes-validate, strict) or, for FeedPipelines, against the generated CRD schema."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from helm_python import chart

from feedserve_operator import crds
from feedserve_operator.cli_operator import render_document
from feedserve_operator.render import render_pipeline
from feedserve_operator.spec import FeedPipelineSpec

ROOT = Path(__file__).resolve().parents[2]
APP, CRDS = ROOT / "charts" / "feedserve", ROOT / "charts" / "feedserve-crds"
KUBE_VERSIONS = ("1.30.0", "1.37.0")
NS = "feeds"

VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "cluster-wide": {"operator": {"watchAllNamespaces": True, "prometheusUrl": "http://prom:9090"}},
    "namespaces": {"operator": {"watchNamespaces": ["team-a", "team-b"]},
                   "pipeline": {"create": False}},
    "external-redis": {"redis": {"bundled": False, "url": "rediss://redis.example:6380/0"}},
    "existing-secret": {"redis": {"bundled": False, "existingSecret": "my-redis"},
                        "serviceAccount": {"create": False, "name": "ops-sa"}},
    "monitoring": {"monitoring": {"serviceMonitor": {"enabled": True,
                                                     "labels": {"release": "prom"}},
                                  "podMonitor": {"enabled": True}},
                   "networkPolicy": {"enabled": False}},
    "hpa-big": {"redis": {"exporter": {"enabled": False}},
                "pipeline": {"name": "prod", "spec": {"autoscaling": {"policy": "hpa"},
                             "inference": {"gpusPerPod": 2, "replicas": {"min": 2, "max": 16}},
                             "redis": {"prefix": "prod"}}}},
    "kserve": {"kserve": {"enabled": True},
               "pipeline": {"spec": {"inference": {"kserve": {"transformer": True}}}}},
}  # fmt: skip


def render(path: Path, values: dict[str, Any]) -> list[dict[str, Any]]:
    out = chart.Chart.load(str(path)).render(values=values, name="rel", namespace=NS)
    objs = []
    for template, text in sorted(out.items()):
        if template.endswith("NOTES.txt"):
            continue
        objs += [doc for doc in yaml.safe_load_all(text) if doc]
    return objs


@pytest.fixture(scope="module", params=list(VALUE_SETS))
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(APP, VALUE_SETS[request.param])


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def k8s_validate(obj: dict[str, Any]) -> None:
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


def test_every_object_is_valid(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, objs = rendered
    assert by_kind(objs, "Deployment"), name
    for obj in objs:
        where = f"{name}: {obj['kind']} {obj['metadata']['name']}"
        if obj["apiVersion"] == "feedserve.io/v1alpha1":
            assert crds.validate(obj["kind"], obj) == [], where
        elif obj["apiVersion"] == "monitoring.coreos.com/v1":
            # prometheus-operator's CRDs are not in kubernetes-validate: check the shape
            assert obj["spec"]["selector"], where
            assert obj["spec"].get("endpoints") or obj["spec"].get("podMetricsEndpoints"), where
        else:
            k8s_validate(obj)


def pod_specs(objs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for o in objs:
        if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield o["metadata"]["name"], o["spec"]["template"]["spec"]
        elif o["kind"] == "CronJob":
            yield o["metadata"]["name"], o["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def assert_restricted(name: str, pod: dict[str, Any], probes: bool = True) -> None:
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["seccompProfile"]["type"] == "RuntimeDefault", name
    assert int(psc.get("runAsUser", 1)) != 0, name
    for c in pod["containers"] + pod.get("initContainers", []):
        sc = c["securityContext"]
        where = f"{name}/{c['name']}"
        assert sc["allowPrivilegeEscalation"] is False, where
        assert sc["readOnlyRootFilesystem"] is True, where
        assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add"), where
        assert sc.get("privileged") is not True, where
        res = c["resources"]
        assert res["requests"]["cpu"] and res["requests"]["memory"], where
        assert res["limits"]["cpu"] and res["limits"]["memory"], where
        if probes:
            assert c.get("readinessProbe") and c.get("livenessProbe"), where
    assert not pod.get("hostNetwork") and not pod.get("hostPID"), name


def test_restricted_pod_security_resources_and_probes(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    name, objs = rendered
    specs = list(pod_specs(objs))
    assert specs
    for pod_name, pod in specs:
        assert_restricted(f"{name}: {pod_name}", pod)


def test_the_operators_children_are_valid_and_restricted() -> None:
    """What the operator creates from the chart's FeedPipeline passes the same checks."""
    for values in VALUE_SETS.values():
        for fp in by_kind(render(APP, values), "FeedPipeline"):
            spec = FeedPipelineSpec.model_validate(fp["spec"])
            children = render_pipeline(fp["metadata"]["name"], NS, spec, uid="u")
            for obj in children:
                if obj["apiVersion"].startswith("serving.kserve.io/"):
                    continue  # KServe's kinds: against KServe's CRD in test_render_kserve.py
                k8s_validate(obj)
            for pod_name, pod in pod_specs(children):
                # offline Jobs run to completion: no probes
                assert_restricted(pod_name, pod, probes="-" not in pod_name.removeprefix("feed"))


RULE_FIELDS = ("apiGroups", "resources", "verbs")


def test_rbac_is_least_privilege(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, objs = rendered
    values = VALUE_SETS[name]
    cluster_wide = values.get("operator", {}).get("watchAllNamespaces", False)
    roles = by_kind(objs, "ClusterRole" if cluster_wide else "Role")
    assert roles and not by_kind(objs, "Role" if cluster_wide else "ClusterRole"), name
    for role in roles:
        for rule in role["rules"]:
            for field in RULE_FIELDS:
                assert "*" not in rule.get(field, []), (name, rule)
            assert not set(rule["verbs"]) & {"escalate", "bind", "impersonate"}, rule
            assert "secrets" not in rule["resources"], rule  # the operator never reads them
    for binding in by_kind(objs, "RoleBinding") + by_kind(objs, "ClusterRoleBinding"):
        assert binding["roleRef"]["name"] not in ("cluster-admin", "admin", "edit"), binding
        assert binding["roleRef"]["name"].endswith("-operator")
    watched = values.get("operator", {}).get("watchNamespaces") or [NS]
    if not cluster_wide:
        assert sorted(r["metadata"]["namespace"] for r in roles) == sorted(watched)
    op = next(d for d in by_kind(objs, "Deployment") if d["metadata"]["name"].endswith("operator"))
    args = op["spec"]["template"]["spec"]["containers"][0]["args"]
    if cluster_wide:
        assert "--all-namespaces" in args
    else:
        assert [a.split("=", 1)[1] for a in args if a.startswith("--namespace=")] == watched


def test_redis_wiring() -> None:
    objs = render(APP, {})
    secret = next(s for s in by_kind(objs, "Secret") if s["metadata"]["name"] == "feedserve-redis")
    assert secret["stringData"]["url"] == f"redis://rel-feedserve-redis.{NS}.svc:6379/0"
    assert {s["metadata"]["name"] for s in by_kind(objs, "Service")} == {"rel-feedserve-redis"}
    fp = by_kind(objs, "FeedPipeline")[0]
    assert fp["spec"]["redis"]["urlSecret"] == "feedserve-redis"
    external = render(APP, VALUE_SETS["external-redis"])
    assert not [d for d in by_kind(external, "Deployment") if "redis" in d["metadata"]["name"]]
    assert by_kind(external, "Secret")[0]["stringData"]["url"] == "rediss://redis.example:6380/0"
    existing = render(APP, VALUE_SETS["existing-secret"])
    assert not by_kind(existing, "Secret") and not by_kind(existing, "ServiceAccount")
    assert by_kind(existing, "FeedPipeline")[0]["spec"]["redis"]["urlSecret"] == "my-redis"
    prod = render(APP, VALUE_SETS["hpa-big"])
    assert by_kind(prod, "FeedPipeline")[0]["spec"]["redis"]["prefix"] == "prod"
    exporter = render(APP, {"pipeline": {"spec": {"redis": {"prefix": "dev"}}}})
    redis = next(
        d for d in by_kind(exporter, "Deployment") if d["metadata"]["name"].endswith("redis")
    )
    env = {e["name"]: e["value"] for c in redis["spec"]["template"]["spec"]["containers"]
           for e in c.get("env", [])}  # fmt: skip
    assert env["REDIS_EXPORTER_CHECK_SINGLE_KEYS"] == "db0=dev.featurizer"


def test_network_policies_select_the_operators_pods() -> None:
    objs = render(APP, {})
    policies = {p["metadata"]["name"]: p for p in by_kind(objs, "NetworkPolicy")}
    triton = policies["rel-feedserve-triton"]["spec"]
    fp = by_kind(objs, "FeedPipeline")[0]
    children = render_pipeline("feed", NS, FeedPipelineSpec.model_validate(fp["spec"]), uid="u")
    inference = next(d for d in children if d["metadata"]["name"] == "feed-inference")
    pod_labels = inference["spec"]["template"]["metadata"]["labels"]
    assert triton["podSelector"]["matchLabels"].items() <= pod_labels.items()
    allowed = triton["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    for client in ("feed-gateway", "feed-featurizer"):  # the pods that call Triton are let in
        labels = next(d for d in children if d["metadata"]["name"] == client)["spec"]["template"][
            "metadata"]["labels"]  # fmt: skip
        assert allowed.items() <= labels.items()
    ports = {p["port"] for rule in triton["ingress"] for p in rule["ports"]}
    assert ports == {8000, 8001, 8002}
    assert "rel-feedserve-redis" in policies
    assert not by_kind(render(APP, VALUE_SETS["monitoring"]), "NetworkPolicy")


def test_kserve_mode() -> None:
    """The kserve value: the FeedPipeline's runtime, the operator's InferenceService rights,
    no Triton NetworkPolicy, and the prerequisite in the NOTES (KServe is not bundled)."""
    objs = render(APP, VALUE_SETS["kserve"])
    fp = by_kind(objs, "FeedPipeline")[0]
    assert fp["spec"]["inference"]["runtime"] == "kserve"
    (role,) = by_kind(objs, "Role")
    rules = [r for r in role["rules"] if r["apiGroups"] == ["serving.kserve.io"]]
    assert rules == [{"apiGroups": ["serving.kserve.io"], "resources": ["inferenceservices"],
                      "verbs": ["get", "list", "watch", "create", "patch", "delete"]}]  # fmt: skip
    policies = {p["metadata"]["name"] for p in by_kind(objs, "NetworkPolicy")}
    assert policies == {"rel-feedserve-redis"}
    assert not any(o["kind"].startswith("CustomResourceDefinition") for o in objs)
    children = render_pipeline("feed", NS, FeedPipelineSpec.model_validate(fp["spec"]), uid="u")
    assert sorted(o["metadata"]["name"] for o in children if o["kind"] == "InferenceService") == [
        "feed-generative-ranker", "feed-post-index", "feed-retrieval-encoder"]  # fmt: skip
    rendered = chart.Chart.load(str(APP)).render(values=VALUE_SETS["kserve"], name="rel",
                                                 namespace=NS)  # fmt: skip
    notes = rendered["feedserve/templates/NOTES.txt"]
    assert "kubectl get crd inferenceservices.serving.kserve.io" in notes
    # a runtime the values name wins; without the value, nothing about KServe
    triton = {
        "kserve": {"enabled": True},
        "pipeline": {"spec": {"inference": {"runtime": "triton"}}},
    }
    assert (
        by_kind(render(APP, triton), "FeedPipeline")[0]["spec"]["inference"]["runtime"] == "triton"
    )
    plain = render(APP, {})
    assert "runtime" not in by_kind(plain, "FeedPipeline")[0]["spec"]["inference"]
    assert not [
        r for r in by_kind(plain, "Role")[0]["rules"] if "serving.kserve.io" in r["apiGroups"]
    ]


BAD_VALUES = [
    ({"operator": {"resyncSeconds": 1}}, "/operator/resyncSeconds"),
    ({"operator": {"image": {"pullPolicy": "Sometimes"}}}, "/operator/image/pullPolicy"),
    ({"operator": {"watchNamespaces": ["Not_A_Namespace"]}}, "/operator/watchNamespaces/0"),
    ({"operator": {"prometheusUrl": "prom:9090"}}, "/operator/prometheusUrl"),
    ({"redis": {"url": "http://redis"}}, "/redis/url"),
    ({"redis": {"resources": {"requests": {"cpu": "lots", "memory": "1Gi"}}}}, "/redis/resources"),
    ({"typo": True}, "additional properties 'typo'"),
    ({"pipeline": {"spec": {"inference": {"gpusPerPod": 9}}}},
     "/pipeline/spec/inference/gpusPerPod"),
    ({"pipeline": {"spec": {"autoscaling": {"policy": "magic"}}}},
     "/pipeline/spec/autoscaling/policy"),
    ({"pipeline": {"spec": {"gatewy": {}}}}, "additional properties 'gatewy'"),
    ({"monitoring": {"serviceMonitor": {"interval": "soon"}}},
     "/monitoring/serviceMonitor/interval"),
    ({"kserve": {"enabled": "yes"}}, "/kserve/enabled"),
    ({"pipeline": {"spec": {"inference": {"runtime": "seldon"}}}},
     "/pipeline/spec/inference/runtime"),
]  # fmt: skip


@pytest.mark.parametrize(("values", "where"), BAD_VALUES)
def test_values_schema_rejects_bad_values(values: dict[str, Any], where: str) -> None:
    with pytest.raises(Exception, match=re.escape(where)) as info:
        chart.Chart.load(str(APP)).validate_schema(values)
    assert where in str(info.value)


def test_failing_combinations_say_what_to_set() -> None:
    with pytest.raises(Exception, match=r"redis\.url or redis\.existingSecret"):
        render(APP, {"redis": {"bundled": False}})


def test_values_schema_pipeline_spec_is_generated_from_the_crd() -> None:
    doc = json.loads(crds.VALUES_SCHEMA.read_text())
    crd = crds.crd_for("FeedPipeline")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    generated = crds.values_schema(crd["properties"]["spec"])
    committed = dict(doc["properties"]["pipeline"]["properties"]["spec"])
    committed.pop("description")
    generated.pop("description", None)
    assert committed == generated, "regenerate: python -m feedserve_operator.crds --write"


def test_every_value_is_documented() -> None:
    """Each value in values.yaml has a `# --` comment above it or above an enclosing key."""
    lines = (APP / "values.yaml").read_text().splitlines()
    undocumented = []
    stack: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped == "{}":
            continue
        indent = len(line) - len(line.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#") and "# --" not in lines[j]:
            j -= 1
        documented = (j >= 0 and "# --" in lines[j]) or any(d for _, d in stack)
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        is_block = stripped.endswith(":") and len(nxt) - len(nxt.lstrip()) > indent
        if not documented and not is_block:
            undocumented.append(stripped)
        stack.append((indent, documented))
    assert not undocumented, undocumented


@pytest.mark.parametrize("path", [APP, CRDS], ids=["feedserve", "feedserve-crds"])
def test_helm_lint_is_clean(path: Path) -> None:
    result = chart.lint(str(path), {}, strict=True, kube_version="v1.30.0")
    assert not result["errors"], result
    severe = [m for m in result["messages"] if m["severity"] > 1]
    assert not severe, severe


def test_crd_chart_installs_the_generated_crds() -> None:
    objs = render(CRDS, {})
    assert sorted(o["metadata"]["name"] for o in objs) == sorted(
        crds.KINDS[k].crd_name for k in crds.KINDS
    )
    for obj in objs:
        assert obj == crds.crd_for(obj["spec"]["names"]["kind"])
        assert obj["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        k8s_validate(obj)


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_are_valid_custom_resources(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for i, doc in enumerate(docs):
        assert crds.validate(doc["kind"], doc) == [], f"{path.name} document {i + 1}"
        for child in render_document(f"{path.name}#{i + 1}", doc, "default"):
            if child["apiVersion"].startswith("serving.kserve.io/"):
                continue  # KServe's kinds: against KServe's CRD in test_render_kserve.py
            k8s_validate(child)


BAD_PIPELINES = [
    ({"inference": {"gpusPerPod": 9}}, "inference.gpusPerPod"),
    ({"autoscaling": {"policy": "magic"}}, "autoscaling.policy"),
    ({"featurizers": {"replicas": {"min": -1}}}, "featurizers.replicas.min"),
    ({"gateway": {"port": 70000}}, "gateway.port"),
    ({"featurizers": {"image": "Not An Image"}}, "featurizers.image"),
]


@pytest.mark.parametrize(("spec", "field"), BAD_PIPELINES)
def test_helm_rendered_crd_schema_rejects_bad_pipelines(spec: dict[str, Any], field: str) -> None:
    """What the API server would refuse, checked against the CRD as Helm installs it (the
    OpenAPI schema through a JSON-schema validator; CEL rules through ``crds.validate``)."""
    crd = next(o for o in render(CRDS, {}) if o["spec"]["names"]["kind"] == "FeedPipeline")
    schema = crds.values_schema(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    validator = jsonschema.Draft7Validator(schema)
    good = {"apiVersion": "feedserve.io/v1alpha1", "kind": "FeedPipeline",
            "metadata": {"name": "feed"}, "spec": {}}  # fmt: skip
    assert not list(validator.iter_errors(good))
    bad = {**good, "spec": spec}
    paths = [".".join(str(p) for p in e.absolute_path) for e in validator.iter_errors(bad)]
    assert f"spec.{field}" in paths, paths
    assert any(field in problem for problem in crds.validate("FeedPipeline", bad))


def test_helm_rendered_crd_keeps_the_cel_rules() -> None:
    crd = next(o for o in render(CRDS, {}) if o["spec"]["names"]["kind"] == "FeedPipeline")
    rules = crds.emitted_rules(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    assert any("self.min <= self.max" in r for r in rules), rules
    bad = {"apiVersion": "feedserve.io/v1alpha1", "kind": "FeedPipeline", "metadata": {"name": "f"},
           "spec": {"inference": {"replicas": {"min": 5, "max": 2}}}}  # fmt: skip
    assert any("replicas" in p for p in crds.validate("FeedPipeline", bad))
