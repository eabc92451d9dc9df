"""The operator end to end against a mock Kubernetes API (kmock's emulator): kopf runs the
real handlers; the test creates, changes, breaks and deletes custom resources and watches the
children and the status."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import kopf
import pytest
from kopf.testing import KopfRunner

from feedserve_operator.handlers import Operator, OperatorSettings, register
from feedserve_operator.kube import KubeApi

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
def operator(cluster: Any) -> Iterator[Any]:
    """kopf with feedserve's handlers in a fresh registry, against the mock cluster."""
    registry = kopf.OperatorRegistry()
    op = Operator(None, OperatorSettings(resync_s=0.5, retry_s=0.2))
    register(registry, op)

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=cluster.url, insecure=True)

    op._api = KubeApi(cluster.url, verify=False)
    settings = kopf.OperatorSettings()
    settings.scanning.disabled = True
    settings.watching.server_timeout = 10
    args = ["run", "--standalone", "--namespace", NS, "--verbose"]
    with KopfRunner(args, registry=registry, settings=settings, timeout=60) as runner:
        yield runner
    assert runner.exception is None, runner.output
    assert runner.exit_code == 0, runner.output


def children(cluster: Any, resource: str) -> set[str]:
    return set(cluster.names(resource, NS))


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
    assert not children(cluster, DEPLOYMENTS)
