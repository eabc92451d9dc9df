"""The Kubernetes objects a FeedPipeline or FeedModel stands for (pure: manifests as dicts).

``render_pipeline`` returns every child of a FeedPipeline, in a fixed order:

- ConfigMap ``<name>-workflow``: the workflow YAML (the spec's, else the packaged default),
  mounted at ``/etc/feedserve/workflow.yaml`` in gateway, featurizer and offline-job pods
  (``FEEDSERVE_WORKFLOW``); its SHA-256 is a pod-template annotation, so editing the
  workflow rolls those pods;
- ConfigMap ``<name>-routing``: percent of requests per model version, one key per model
  (written by FeedModels; the gateway reads it from a volume);
- Deployment ``<name>-featurizer`` (component ``featurizer``): two containers per pod, the
  Celery worker and the event consumer (``python -m feedserve_featurizers.consumer``). The
  consumer is a *second container* rather than its own Deployment: consumers share one Redis
  consumer group (any number is safe, stale deliveries are re-claimed), the nearline work
  grows with the same traffic as the featurizer work, and one Deployment per pool keeps the
  operator's status and autoscaling to exactly three Deployments;
- Deployment ``<name>-inference`` (component ``inference``): tritonserver, explicit model
  control with one ``--load-model`` per model, the model repository PVC mounted at
  ``/models``, ``nvidia.com/gpu`` limits when ``gpusPerPod > 0``; Service ``<name>-triton``
  (http 8000, grpc 8001, metrics 8002) that the gateway and featurizers reach it by.
  With ``inference.runtime: kserve`` instead: one KServe InferenceService per model
  (``render_kserve``; KServe scales them, so no inference PodDisruptionBudget or HPA here),
  and the gateway is given each model's predictor endpoint;
- Deployment and Service ``<name>-gateway`` (component ``gateway``);
- a PodDisruptionBudget per pool with ``maxUnavailable: 1`` (not ``minAvailable: 1``: a
  one-replica pool - the dev default - would otherwise block every node drain; this way a
  drain proceeds one pod at a time);
- the workflow's offline Jobs/CronJobs (``feedserve.workflow.jobs.offline_jobs``);
- with ``autoscaling.policy: hpa``, an autoscaling/v2 HorizontalPodAutoscaler for the
  featurizer pool (CPU utilisation) and the inference pool (Pods metric
  ``nv_inference_queue_duration_us``, average value ``tritonTargetQueueMs`` x 1000; a metrics
  adapter must expose it per pod as the average queue time per request). The gateway has a
  fixed replica count and no HPA. With ``coupled``, no HPAs: the operator sets replicas.

Replicas come from ``replicas`` (component -> count, what the autoscaler last set), else the
pool's minimum (gateway: its ``replicas``). Every pod runs under the "restricted" Pod Security
Standard (non-root uid 1000, read-only root filesystem with an emptyDir at ``/tmp``, no
capabilities, RuntimeDefault seccomp, no privilege escalation).

``render_model`` returns the ConfigMap ``<pipeline>-model-<name>`` holding a FeedModel's
Triton settings (``config.pbtxt``: name, version policy, instance group, batching) and its
canary weights (``weights.json``), owned by the FeedModel.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from typing import Any

import yaml

from feedserve.workflow.jobs import offline_jobs
from feedserve.workflow.spec import DEFAULT_WORKFLOW, Workflow, WorkflowSpec, check
from feedserve_operator.spec import (
    API_VERSION,
    ROLE_MODEL,
    FeedModelSpec,
    FeedPipelineSpec,
    Resources,
)

NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "feedserve-operator"
PIPELINE_LABEL = "feedserve.io/pipeline"
WORKFLOW_HASH = "feedserve.io/workflow-sha256"

WORKFLOW_DIR = "/etc/feedserve"
WORKFLOW_FILE = f"{WORKFLOW_DIR}/workflow.yaml"
MODEL_REPO_DIR = "/models"
ARTIFACTS_DIR = f"{MODEL_REPO_DIR}/artifacts"
"""The model-repository volume also holds ``feedserve build``'s artifacts (bucket tables,
encoder and tokenizer, post index, ranker), read by every pod under this path."""
MODELS_MOUNT = {"name": "models", "mountPath": MODEL_REPO_DIR, "readOnly": True}
TRITON_HTTP, TRITON_GRPC, TRITON_METRICS = 8000, 8001, 8002
TRITON_QUEUE_METRIC = "nv_inference_queue_duration_us"
RUN_AS = 1000

Manifest = dict[str, Any]


# --- helpers ---------------------------------------------------------------------------------


def child_key(obj: Mapping[str, Any]) -> tuple[str, str, str]:
    """(``apiVersion/kind``, namespace, name) of a manifest."""
    meta = obj.get("metadata", {})
    return (
        f"{obj.get('apiVersion', '')}/{obj.get('kind', '')}",
        str(meta.get("namespace", "")),
        str(meta.get("name", "")),
    )


def labels(instance: str, component: str) -> dict[str, str]:
    return {
        NAME_LABEL: "feedserve",
        INSTANCE_LABEL: instance,
        COMPONENT_LABEL: component,
        MANAGED_BY_LABEL: MANAGED_BY,
    }


def selector(instance: str, component: str) -> dict[str, str]:
    """The immutable Deployment/Service selector (no managed-by: it may change)."""
    return {NAME_LABEL: "feedserve", INSTANCE_LABEL: instance, COMPONENT_LABEL: component}


def owner_reference(kind: str, name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(
    name: str, namespace: str, lbls: Mapping[str, str], owner: dict[str, Any] | None
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(lbls)}
    if owner is not None:
        meta["ownerReferences"] = [dict(owner)]
    return meta


def resources(spec: Resources, extra_limits: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Requests from the spec; limits from the spec, defaulting to the requests."""
    requests = {"cpu": spec.requests.cpu, "memory": spec.requests.memory}
    lim = spec.limits or spec.requests
    limits: dict[str, Any] = {"cpu": lim.cpu, "memory": lim.memory, **(extra_limits or {})}
    return {"requests": requests, "limits": limits}


CONTAINER_SECURITY: dict[str, Any] = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
POD_SECURITY: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": RUN_AS,
    "runAsGroup": RUN_AS,
    "fsGroup": RUN_AS,
    "seccompProfile": {"type": "RuntimeDefault"},
}
TMP_VOLUME = {"name": "tmp", "emptyDir": {}}
TMP_MOUNT = {"name": "tmp", "mountPath": "/tmp"}
WORKFLOW_MOUNT = {"name": "workflow", "mountPath": WORKFLOW_DIR, "readOnly": True}
ROUTING_DIR = "/etc/feedserve-routing"
"""Where the gateway sees the ``<pipeline>-routing`` ConfigMap: one file per Triton model
with the percent of requests per version (written by FeedModels' canary rollouts)."""


def harden(pod: dict[str, Any]) -> dict[str, Any]:
    """``pod`` (a pod spec) under the restricted profile, with a writable ``/tmp``."""
    pod = dict(pod)
    pod["securityContext"] = {**POD_SECURITY, **pod.get("securityContext", {})}
    pod.setdefault("automountServiceAccountToken", False)
    containers = []
    for c in pod.get("containers", []):
        c = dict(c)
        c["securityContext"] = {**CONTAINER_SECURITY, **c.get("securityContext", {})}
        mounts = list(c.get("volumeMounts", []))
        if not any(m["mountPath"] == "/tmp" for m in mounts):
            mounts.append(dict(TMP_MOUNT))
        c["volumeMounts"] = mounts
        containers.append(c)
    pod["containers"] = containers
    volumes = list(pod.get("volumes", []))
    if not any(v["name"] == "tmp" for v in volumes):
        volumes.append(dict(TMP_VOLUME))
    pod["volumes"] = volumes
    return pod


# --- the workflow ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _default_workflow_text() -> str:
    return DEFAULT_WORKFLOW.read_text()


def workflow_text(spec: FeedPipelineSpec) -> str:
    """The workflow YAML the pipeline's pods read: the spec's, else the packaged default."""
    if spec.workflow is None:
        return _default_workflow_text()
    return yaml.safe_dump(
        spec.workflow.model_dump(mode="json", exclude_defaults=True), sort_keys=False
    )


def checked_workflow(spec: FeedPipelineSpec) -> Workflow:
    """The pipeline's workflow, checked (raises ``WorkflowError``, a ``ValueError``)."""
    if spec.workflow is not None:
        return check(spec.workflow, source="spec.workflow")
    return check(
        WorkflowSpec.model_validate(yaml.safe_load(_default_workflow_text())),
        source=str(DEFAULT_WORKFLOW),
    )


# --- FeedPipeline ----------------------------------------------------------------------------


def names(pipeline: str) -> dict[str, str]:
    """The child names of a pipeline, by role."""
    return {
        "workflow": f"{pipeline}-workflow",
        "routing": f"{pipeline}-routing",
        "featurizer": f"{pipeline}-featurizer",
        "inference": f"{pipeline}-inference",
        "triton": f"{pipeline}-triton",
        "gateway": f"{pipeline}-gateway",
    }


def triton_host(pipeline: str, namespace: str) -> str:
    return f"{names(pipeline)['triton']}.{namespace}.svc:{TRITON_HTTP}"


def inference_url(name: str, namespace: str, spec: FeedPipelineSpec) -> str:
    """Where the pipeline's pods reach Triton: the operator's Service, or with the ``kserve``
    runtime the retrieval encoder's predictor (featurizers embed with it; the gateway is
    given every model's endpoint as well)."""
    if spec.inference.runtime == "kserve":
        from feedserve_operator import render_kserve

        return render_kserve.fallback_url(name, namespace, spec)
    return triton_host(name, namespace)


def _env(name: str, namespace: str, spec: FeedPipelineSpec) -> list[dict[str, Any]]:
    return [
        {
            "name": "FEEDSERVE_REDIS_URL",
            "valueFrom": {"secretKeyRef": {"name": spec.redis.url_secret, "key": "url"}},
        },
        {"name": "FEEDSERVE_REDIS_PREFIX", "value": spec.redis.prefix},
        {"name": "FEEDSERVE_TRITON_URL", "value": inference_url(name, namespace, spec)},
        {"name": "FEEDSERVE_WORKFLOW", "value": WORKFLOW_FILE},
        {"name": "FEEDSERVE_ARTIFACTS_DIR", "value": ARTIFACTS_DIR},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
        {"name": "TRANSFORMERS_OFFLINE", "value": "1"},
        {"name": "TOKENIZERS_PARALLELISM", "value": "false"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]


def _deployment(
    name: str,
    namespace: str,
    component: str,
    replicas: int,
    pod: dict[str, Any],
    owner: dict[str, Any] | None,
    annotations: Mapping[str, str] | None = None,
    pod_labels: Mapping[str, str] | None = None,
) -> Manifest:
    template_meta: dict[str, Any] = {"labels": {**labels(name, component), **(pod_labels or {})}}
    if annotations:
        template_meta["annotations"] = dict(annotations)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(names(name)[component], namespace, labels(name, component), owner),
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": selector(name, component)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {"metadata": template_meta, "spec": harden(pod)},
        },
    }


def _service(
    svc_name: str,
    name: str,
    namespace: str,
    component: str,
    ports: list[tuple[str, int]],
    owner: dict[str, Any] | None,
) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(svc_name, namespace, labels(name, component), owner),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(name, component),
            "ports": [{"name": p, "port": n, "targetPort": p, "protocol": "TCP"} for p, n in ports],
        },
    }


def _pdb(name: str, namespace: str, component: str, owner: dict[str, Any] | None) -> Manifest:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(names(name)[component], namespace, labels(name, component), owner),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(name, component)}},
    }


def _models_volume(spec: FeedPipelineSpec) -> dict[str, Any]:
    repo = spec.inference.model_repository
    claim = {"claimName": repo.claim_name, "readOnly": repo.read_only}
    return {"name": "models", "persistentVolumeClaim": claim}


def _workflow_volume(name: str) -> dict[str, Any]:
    return {"name": "workflow", "configMap": {"name": names(name)["workflow"]}}


def featurizer_deployment(
    name: str,
    namespace: str,
    spec: FeedPipelineSpec,
    replicas: int,
    owner: dict[str, Any] | None,
    workflow_hash: str,
) -> Manifest:
    pool = spec.featurizers
    env = [
        *_env(name, namespace, spec),
        {"name": "FEEDSERVE_WORKER_CONCURRENCY", "value": str(pool.concurrency)},
        {"name": "FEEDSERVE_FEATURIZER_BACKEND", "value": pool.backend},
    ]
    worker = {
        "name": "featurizer",
        "image": pool.image,
        "command": [
            "python",
            "-m",
            "celery",
            "-A",
            "feedserve_featurizers.celery_app",
            "worker",  # the app's own pool (feedserve_featurizers.pool)
            f"--concurrency={pool.concurrency}",
            "--loglevel=INFO",
            "--hostname=featurizer@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        "env": env,
        "resources": resources(pool.resources),
        "volumeMounts": [dict(WORKFLOW_MOUNT), dict(MODELS_MOUNT)],
    }
    consumer = {
        "name": "event-consumer",
        "image": pool.image,
        "command": ["python", "-m", "feedserve_featurizers.consumer"],
        "env": env,
        # fixed and small: the consumer batches stream reads; the worker does the heavy work
        "resources": {
            "requests": {"cpu": "250m", "memory": "512Mi"},
            "limits": {"cpu": "1", "memory": "1Gi"},
        },
        "volumeMounts": [dict(WORKFLOW_MOUNT), dict(MODELS_MOUNT)],
    }
    pod = {
        "terminationGracePeriodSeconds": 60,
        "containers": [worker, consumer],
        "volumes": [_workflow_volume(name), _models_volume(spec)],
    }
    return _deployment(
        name, namespace, "featurizer", replicas, pod, owner,
        annotations={WORKFLOW_HASH: workflow_hash},
        pod_labels={"feedserve.io/featurizer-backend": pool.backend},
    )  # fmt: skip


def triton_env(spec: FeedPipelineSpec, artifacts_dir: str) -> list[dict[str, Any]]:
    """The environment of tritonserver (the models' ``ModelSettings``)."""
    return [
        {
            "name": "FEEDSERVE_REDIS_URL",
            "valueFrom": {"secretKeyRef": {"name": spec.redis.url_secret, "key": "url"}},
        },
        {"name": "FEEDSERVE_REDIS_PREFIX", "value": spec.redis.prefix},
        {"name": "FEEDSERVE_DEVICE", "value": "cuda" if spec.inference.gpus_per_pod > 0 else "cpu"},
        {"name": "FEEDSERVE_ARTIFACTS_DIR", "value": artifacts_dir},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
        {"name": "TRANSFORMERS_OFFLINE", "value": "1"},
        {"name": "OMP_WAIT_POLICY", "value": "PASSIVE"},
    ]


def triton_deployment(
    name: str, namespace: str, spec: FeedPipelineSpec, replicas: int, owner: dict[str, Any] | None
) -> Manifest:
    pool = spec.inference
    gpus = {"nvidia.com/gpu": pool.gpus_per_pod} if pool.gpus_per_pod > 0 else {}
    args = [
        "tritonserver",
        f"--model-repository={MODEL_REPO_DIR}",
        "--model-control-mode=explicit",
        *[f"--load-model={m}" for m in pool.models],
        f"--http-port={TRITON_HTTP}",
        f"--grpc-port={TRITON_GRPC}",
        f"--metrics-port={TRITON_METRICS}",
        "--exit-timeout-secs=30",
        "--log-verbose=0",
    ]
    container = {
        "name": "tritonserver",
        "image": pool.image,
        "command": args,
        "env": triton_env(spec, ARTIFACTS_DIR),
        "ports": [
            {"name": "http", "containerPort": TRITON_HTTP, "protocol": "TCP"},
            {"name": "grpc", "containerPort": TRITON_GRPC, "protocol": "TCP"},
            {"name": "metrics", "containerPort": TRITON_METRICS, "protocol": "TCP"},
        ],
        "resources": resources(pool.resources, gpus),
        "startupProbe": {
            "httpGet": {"path": "/v2/health/live", "port": TRITON_HTTP},
            "periodSeconds": 10,
            "failureThreshold": 60,  # model loading may take minutes
        },
        "readinessProbe": {
            "httpGet": {"path": "/v2/health/ready", "port": TRITON_HTTP},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live", "port": TRITON_HTTP},
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "volumeMounts": [
            {
                "name": "models",
                "mountPath": MODEL_REPO_DIR,
                "readOnly": pool.model_repository.read_only,
            },
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
    }
    pod = {
        "terminationGracePeriodSeconds": 60,
        "containers": [container],
        "volumes": [
            _models_volume(spec),
            # the Python backend exchanges tensors with its stubs through shared memory
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
        ],
    }  # fmt: skip
    return _deployment(name, namespace, "inference", replicas, pod, owner)


def _gateway_inference_env(
    name: str, namespace: str, spec: FeedPipelineSpec
) -> list[dict[str, Any]]:
    """Triton: the FeedModels' version weights (routing ConfigMap). KServe: every model's
    predictor endpoint and the protocol (KServe itself splits a canary's traffic)."""
    if spec.inference.runtime != "kserve":
        return [{"name": "FEEDSERVE_ROUTING_DIR", "value": ROUTING_DIR}]
    from feedserve_operator import render_kserve

    urls = render_kserve.model_urls(name, namespace, spec)
    return [
        {"name": "FEEDSERVE_INFERENCE_PROTOCOL", "value": spec.inference.kserve.protocol},
        {"name": "FEEDSERVE_MODEL_URLS", "value": json.dumps(urls, sort_keys=True)},
    ]


def gateway_deployment(
    name: str,
    namespace: str,
    spec: FeedPipelineSpec,
    replicas: int,
    owner: dict[str, Any] | None,
    workflow_hash: str,
) -> Manifest:
    gw = spec.gateway
    container = {
        "name": "gateway",
        "image": gw.image,
        "command": [
            "python",
            "-m",
            "uvicorn",
            "feedserve.gateway.app:create_app",
            "--factory",
            "--host=0.0.0.0",
            f"--port={gw.port}",
            "--log-level=warning",
            "--timeout-graceful-shutdown=10",
        ],
        "env": [
            *_env(name, namespace, spec),
            {"name": "FEEDSERVE_PORT", "value": str(gw.port)},
            *_gateway_inference_env(name, namespace, spec),
        ],
        "ports": [{"name": "http", "containerPort": gw.port, "protocol": "TCP"}],
        "resources": resources(gw.resources),
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "volumeMounts": [
            dict(WORKFLOW_MOUNT),
            dict(MODELS_MOUNT),
            {"name": "routing", "mountPath": ROUTING_DIR, "readOnly": True},
        ],
    }
    pod = {
        "terminationGracePeriodSeconds": 30,
        "containers": [container],
        "volumes": [
            _workflow_volume(name),
            _models_volume(spec),
            {"name": "routing", "configMap": {"name": names(name)["routing"], "optional": True}},
        ],
    }
    return _deployment(
        name, namespace, "gateway", replicas, pod, owner,
        annotations={WORKFLOW_HASH: workflow_hash},
    )  # fmt: skip


def _hpa(
    name: str,
    namespace: str,
    component: str,
    lo: int,
    hi: int,
    metric: dict[str, Any],
    spec: FeedPipelineSpec,
    owner: dict[str, Any] | None,
) -> Manifest:
    auto = spec.autoscaling
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(names(name)[component], namespace, labels(name, component), owner),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": names(name)[component],
            },
            "minReplicas": max(1, lo),  # an HPA cannot scale to zero
            "maxReplicas": max(1, hi),
            "metrics": [metric],
            "behavior": {
                "scaleUp": {"stabilizationWindowSeconds": auto.scale_up_cooldown_seconds},
                "scaleDown": {"stabilizationWindowSeconds": auto.scale_down_stabilization_seconds},
            },
        },
    }


def hpas(
    name: str, namespace: str, spec: FeedPipelineSpec, owner: dict[str, Any] | None
) -> list[Manifest]:
    """The ``hpa`` policy's autoscalers (none for ``coupled``)."""
    if spec.autoscaling.policy != "hpa":
        return []
    auto = spec.autoscaling
    cpu = {
        "type": "Resource",
        "resource": {
            "name": "cpu",
            "target": {
                "type": "Utilization",
                "averageUtilization": auto.featurizer_target_cpu_percent,
            },
        },
    }
    queue = {
        "type": "Pods",
        "pods": {
            "metric": {"name": TRITON_QUEUE_METRIC},
            "target": {
                "type": "AverageValue",
                "averageValue": str(auto.triton_target_queue_ms * 1000),
            },
        },
    }
    f, i = spec.featurizers.replicas, spec.inference.replicas
    featurizer = _hpa(name, namespace, "featurizer", f.min, f.max, cpu, spec, owner)
    if spec.inference.runtime == "kserve":  # KServe scales its InferenceServices
        return [featurizer]
    return [featurizer, _hpa(name, namespace, "inference", i.min, i.max, queue, spec, owner)]


def _jobs(
    name: str,
    namespace: str,
    spec: FeedPipelineSpec,
    owner: dict[str, Any] | None,
    wf: Workflow,
) -> list[Manifest]:
    jobs = offline_jobs(
        wf,
        pipeline=name,
        namespace=namespace,
        image=spec.featurizers.image,
        workflow_config_map=names(name)["workflow"],
    )
    out = []
    for job in jobs:
        job["metadata"]["labels"][MANAGED_BY_LABEL] = MANAGED_BY
        if owner is not None:
            job["metadata"]["ownerReferences"] = [dict(owner)]
        job_spec = job["spec"]["jobTemplate"]["spec"] if job["kind"] == "CronJob" else job["spec"]
        if job["kind"] == "Job":
            # the operator keeps a one-off Job (it would create it again, and re-run it, once
            # a TTL removed it); it goes with the FeedPipeline
            job_spec.pop("ttlSecondsAfterFinished", None)
        template = job_spec["template"]
        template["metadata"]["labels"][MANAGED_BY_LABEL] = MANAGED_BY
        pod = template["spec"]
        for c in pod["containers"]:
            env = [e for e in _env(name, namespace, spec) if e["name"] != "FEEDSERVE_WORKFLOW"]
            c["env"] = env + c.get("env", [])
            c["resources"] = resources(spec.featurizers.resources)
            c["volumeMounts"] = [*c.get("volumeMounts", []), dict(MODELS_MOUNT)]
        pod["volumes"] = [*pod.get("volumes", []), _models_volume(spec)]
        template["spec"] = harden(pod)
        out.append(job)
    return out


def _inference_pool(
    name: str, namespace: str, spec: FeedPipelineSpec, replicas: int, owner: dict[str, Any] | None
) -> list[Manifest]:
    """Triton's Deployment and Service, or (runtime ``kserve``) the KServe InferenceServices."""
    if spec.inference.runtime == "kserve":
        from feedserve_operator import render_kserve

        return render_kserve.inference_services(name, namespace, spec, owner)
    ports = [("http", TRITON_HTTP), ("grpc", TRITON_GRPC), ("metrics", TRITON_METRICS)]
    return [
        triton_deployment(name, namespace, spec, replicas, owner),
        _service(names(name)["triton"], name, namespace, "inference", ports, owner),
    ]


def render_pipeline(
    name: str,
    namespace: str,
    spec: FeedPipelineSpec,
    uid: str = "",
    replicas: Mapping[str, int] | None = None,
) -> list[Manifest]:
    """Every child of the FeedPipeline ``name`` (see the module docstring), in a fixed order.

    ``replicas``: component (``featurizer``, ``inference``, ``gateway``) -> count; a missing
    component gets the pool's minimum (gateway: ``spec.gateway.replicas``). Raises
    ``WorkflowError`` (a ``ValueError``) when the workflow does not check."""
    owner = owner_reference("FeedPipeline", name, uid) if uid else None
    count = {
        "featurizer": spec.featurizers.replicas.min,
        "inference": spec.inference.replicas.min,
        "gateway": spec.gateway.replicas,
        **(replicas or {}),
    }
    wf = checked_workflow(spec)
    kserve = spec.inference.runtime == "kserve"  # KServe sizes the inference pool: no PDB
    text = workflow_text(spec)
    digest = hashlib.sha256(text.encode()).hexdigest()
    n = names(name)
    config_map: Manifest = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(n["workflow"], namespace, labels(name, "workflow"), owner),
        "data": {"workflow.yaml": text},
    }
    routing: Manifest = {  # its data: one key per model, written by the FeedModels
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(n["routing"], namespace, labels(name, "routing"), owner),
    }
    out: list[Manifest] = [
        config_map,
        routing,
        featurizer_deployment(name, namespace, spec, count["featurizer"], owner, digest),
        *_inference_pool(name, namespace, spec, count["inference"], owner),
        gateway_deployment(name, namespace, spec, count["gateway"], owner, digest),
        _service(n["gateway"], name, namespace, "gateway", [("http", spec.gateway.port)], owner),
        _pdb(name, namespace, "featurizer", owner),
        *([] if kserve else [_pdb(name, namespace, "inference", owner)]),
        _pdb(name, namespace, "gateway", owner),
        *hpas(name, namespace, spec, owner),
        *_jobs(name, namespace, spec, owner, wf),
    ]  # fmt: skip
    return [_plain(obj) for obj in out]


def _plain(obj: Manifest) -> Manifest:
    """A copy sharing no sub-object with any other (so YAML output has no anchors)."""
    copied: Manifest = json.loads(json.dumps(obj))
    return copied


# --- FeedModel -------------------------------------------------------------------------------


def model_versions(spec: FeedModelSpec) -> list[int]:
    """The versions Triton serves: the stable one and the canary, if any."""
    canary = spec.rollout.canary_version
    return sorted({spec.version} | ({canary} if canary is not None else set()))


def canary_weights(spec: FeedModelSpec) -> dict[str, int]:
    """Percent of requests per served version."""
    canary = spec.rollout.canary_version
    if canary is None or canary == spec.version:
        return {str(spec.version): 100}
    return {str(spec.version): 100 - spec.rollout.canary_weight,
            str(canary): spec.rollout.canary_weight}  # fmt: skip


def triton_config(spec: FeedModelSpec) -> str:
    """The ``config.pbtxt`` settings of the role's model (Triton protobuf text format): the
    operator's overlay on the repository's config (inputs and outputs stay there)."""
    t = spec.triton
    versions = ", ".join(str(v) for v in model_versions(spec))
    lines = [
        f'name: "{ROLE_MODEL[spec.role]}"',
        f"max_batch_size: {t.max_batch_size}",
        f"version_policy: {{ specific: {{ versions: [ {versions} ] }} }}",
        f"instance_group [ {{ count: {t.instances} }} ]",
    ]
    if t.max_batch_size > 0:  # dynamic batching needs a batching model
        lines.append("dynamic_batching {")
        if t.preferred_batch_sizes:
            sizes = ", ".join(str(s) for s in t.preferred_batch_sizes)
            lines.append(f"  preferred_batch_size: [ {sizes} ]")
        lines.append(f"  max_queue_delay_microseconds: {t.max_queue_delay_microseconds}")
        lines.append("}")
    return "\n".join(lines) + "\n"


def render_model(name: str, namespace: str, spec: FeedModelSpec, uid: str = "") -> list[Manifest]:
    """The ConfigMap ``<pipeline>-model-<name>`` with the FeedModel's Triton config and
    canary weights, owned by the FeedModel (labels: instance = the FeedModel, plus
    ``feedserve.io/pipeline``)."""
    owner = owner_reference("FeedModel", name, uid) if uid else None
    lbls = {**labels(name, "model-config"), PIPELINE_LABEL: spec.pipeline}
    data = {
        "model": ROLE_MODEL[spec.role],
        "config.pbtxt": triton_config(spec),
        "weights.json": json.dumps(canary_weights(spec), sort_keys=True),
    }
    config_map: Manifest = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(f"{spec.pipeline}-model-{name}", namespace, lbls, owner),
        "data": data,
    }
    return [_plain(config_map)]
