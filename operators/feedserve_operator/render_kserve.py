"""The inference pool as KServe InferenceServices (``spec.inference.runtime: kserve``): pure.

One ``serving.kserve.io/v1beta1`` InferenceService per model in ``spec.inference.models``,
named ``<pipeline>-<model>`` (underscores become dashes), owned by the FeedPipeline and
labelled like the pool (component ``inference``; KServe copies the labels to its pods):

- predictor: ``modelFormat: triton``, protocol v2, ``storageUri`` the model repository
  (``inference.kserve.storageUri``; KServe mounts or downloads it at ``/mnt/models``, and the
  models find feedserve's artifacts under ``/mnt/models/artifacts``), the pool's Triton image
  (NGC's cannot load feedserve's Python 3.11 models) with explicit model control loading
  just this model, the pool's resources plus ``nvidia.com/gpu``, the restricted security
  context, and ``inference.kserve.servingRuntime`` when one is named (else KServe selects the
  runtime for the triton format; its arguments come first, ours are appended: the last
  occurrence of a Triton flag wins);
- scaling: ``minReplicas``/``maxReplicas`` from ``inference.replicas``, ``scaleMetric`` and
  ``scaleTarget`` from ``inference.kserve``; annotation ``serving.kserve.io/deploymentMode``.
  Knative mode: the Knative autoscaler (KPA on concurrency/rps; its HPA class for cpu/memory,
  ``autoscaling.knative.dev/class``) with ``scaleDownStabilizationSeconds`` as the scale-down
  delay. Standard mode: KServe's HorizontalPodAutoscaler (``serving.kserve.io/autoscalerClass:
  hpa``, cpu or memory). KServe owns the inference pool's size either way: the ``hpa`` policy
  keeps its featurizer HPA and the ``coupled`` policy sizes the featurizer pool only;
- with ``inference.kserve.transformer``, the retrieval encoder's InferenceService also gets the
  featurizer as its transformer (``python -m feedserve_featurizers.kserve_transformer``: a
  member or post id in, the embedding out), in the featurizer image with the model volume.

The gateway calls each model at its predictor's cluster-local address
(``<isvc>-predictor.<namespace>.svc:80``; with a transformer, the InferenceService's own
address is the transformer's), over ``inference.kserve.protocol``; the featurizers embed
posts with the retrieval encoder's predictor (Triton's protocol: Triton is behind it).

A FeedModel maps onto its model's InferenceService (``canary_patch``): its canary weight is
the predictor's ``canaryTrafficPercent`` (KServe splits traffic between the latest revision
and the previous one; Knative mode) and the version each revision serves is its predictor
annotation ``feedserve.io/model-version``, which KServe copies onto the revision's pods. The
operator loads that version, with the FeedModel's Triton settings, on every ready predictor
pod through Triton's model control API (``pod_versions``), as it does for Triton pods.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from feedserve_operator.reconcile import load_failed, with_transitions
from feedserve_operator.render import (
    CONTAINER_SECURITY,
    MODELS_MOUNT,
    POD_SECURITY,
    TMP_MOUNT,
    TMP_VOLUME,
    Manifest,
    _metadata,
    _models_volume,
    canary_weights,
    labels,
    resources,
    triton_env,
)
from feedserve_operator.spec import (
    ROLE_MODEL,
    Condition,
    FeedModelSpec,
    FeedModelStatus,
    FeedPipelineSpec,
    PoolStatus,
)

API_VERSION = "serving.kserve.io/v1beta1"
KIND = "InferenceService"
ISVC_LABEL = "serving.kserve.io/inferenceservice"
"""The label KServe puts on an InferenceService's pods (with ``component: predictor``)."""
COMPONENT_LABEL = "component"
DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"
AUTOSCALER_CLASS = "serving.kserve.io/autoscalerClass"
KNATIVE_CLASS = "autoscaling.knative.dev/class"
KNATIVE_HPA_CLASS = "hpa.autoscaling.knative.dev"
SCALE_DOWN_DELAY = "autoscaling.knative.dev/scale-down-delay"
MODEL_VERSION = "feedserve.io/model-version"
"""Predictor annotation: the model version the revision (its pods) serves."""
HTTP_PORT = 8080
"""KServe's serving port: Triton's HTTP endpoint in a predictor pod."""
MODEL_DIR = "/mnt/models"
ARTIFACTS_DIR = f"{MODEL_DIR}/artifacts"
ENCODER = "retrieval_encoder"
TRANSFORMER_MODULE = "feedserve_featurizers.kserve_transformer"


def isvc_name(pipeline: str, model: str) -> str:
    """The InferenceService of ``model`` in ``pipeline`` (a DNS label)."""
    return f"{pipeline}-{model.replace('_', '-')}"


def predictor_url(pipeline: str, namespace: str, model: str) -> str:
    """The cluster-local ``host:port`` of a model's predictor (port 80 in both deployment
    modes: Knative's route, or the Service of KServe's Deployment)."""
    return f"{isvc_name(pipeline, model)}-predictor.{namespace}.svc:80"


def model_urls(pipeline: str, namespace: str, spec: FeedPipelineSpec) -> dict[str, str]:
    """``{model: predictor URL}`` for every model of the pool (the gateway's endpoints)."""
    return {m: predictor_url(pipeline, namespace, m) for m in spec.inference.models}


def fallback_url(pipeline: str, namespace: str, spec: FeedPipelineSpec) -> str:
    """The endpoint of calls without a model of their own: the retrieval encoder's (what
    the featurizers embed posts with), else the first model's."""
    models = spec.inference.models
    return predictor_url(pipeline, namespace, ENCODER if ENCODER in models else models[0])


# --- the InferenceServices -------------------------------------------------------------------


def _annotations(spec: FeedPipelineSpec) -> dict[str, str]:
    k = spec.inference.kserve
    out: dict[str, str] = {DEPLOYMENT_MODE: k.deployment_mode}
    if k.deployment_mode == "Standard":
        out[AUTOSCALER_CLASS] = "hpa"
    else:
        if k.scale_metric in ("cpu", "memory"):  # the KPA scales on concurrency and rps only
            out[KNATIVE_CLASS] = KNATIVE_HPA_CLASS
        out[SCALE_DOWN_DELAY] = f"{spec.autoscaling.scale_down_stabilization_seconds}s"
    return out


def _scaling(spec: FeedPipelineSpec, lo: int, hi: int) -> dict[str, Any]:
    k = spec.inference.kserve
    return {
        "minReplicas": lo,
        "maxReplicas": hi,
        "scaleMetric": k.scale_metric,
        "scaleTarget": k.scale_target,
    }


def predictor(spec: FeedPipelineSpec, model: str) -> dict[str, Any]:
    """The predictor of ``model``'s InferenceService: Triton serving just that model."""
    pool, k = spec.inference, spec.inference.kserve
    gpus = {"nvidia.com/gpu": pool.gpus_per_pod} if pool.gpus_per_pod > 0 else {}
    container: dict[str, Any] = {
        "modelFormat": {"name": "triton"},
        "protocolVersion": "v2",
        "storageUri": k.storage_uri,
        "image": pool.image,
        # after the runtime's (tritonserver --model-store=/mnt/models --http-port=8080 ...)
        "args": [
            "--model-control-mode=explicit",
            f"--load-model={model}",
            f"--http-port={HTTP_PORT}",
            "--exit-timeout-secs=30",
            "--log-verbose=0",
        ],
        "env": triton_env(spec, ARTIFACTS_DIR),
        "resources": resources(pool.resources, gpus),
        "securityContext": dict(CONTAINER_SECURITY),
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}, dict(TMP_MOUNT)],
    }
    if k.serving_runtime:
        container["runtime"] = k.serving_runtime
    return {
        **_scaling(spec, pool.replicas.min, pool.replicas.max),
        "automountServiceAccountToken": False,
        "securityContext": dict(POD_SECURITY),
        "terminationGracePeriodSeconds": 60,
        "model": container,
        "volumes": [
            # the Python backend exchanges tensors with its stubs through shared memory
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
            dict(TMP_VOLUME),
        ],
    }


def transformer(spec: FeedPipelineSpec) -> dict[str, Any]:
    """The featurizer as the encoder's KServe transformer (KServe appends the predictor's
    host and its HTTP port to the arguments)."""
    fz = spec.featurizers
    env = [
        {
            "name": "FEEDSERVE_REDIS_URL",
            "valueFrom": {"secretKeyRef": {"name": spec.redis.url_secret, "key": "url"}},
        },
        {"name": "FEEDSERVE_REDIS_PREFIX", "value": spec.redis.prefix},
        {"name": "FEEDSERVE_ARTIFACTS_DIR", "value": f"{MODELS_MOUNT['mountPath']}/artifacts"},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
        {"name": "TRANSFORMERS_OFFLINE", "value": "1"},
        {"name": "TOKENIZERS_PARALLELISM", "value": "false"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    container = {
        "name": "kserve-container",
        "image": fz.image,
        "command": ["python", "-m", TRANSFORMER_MODULE],
        "args": [f"--model_name={ENCODER}", "--predictor_protocol=v2", "--enable_grpc=false"],
        "env": env,
        "resources": resources(fz.resources),
        "securityContext": dict(CONTAINER_SECURITY),
        "volumeMounts": [dict(MODELS_MOUNT), dict(TMP_MOUNT)],
    }
    return {
        **_scaling(spec, fz.replicas.min, fz.replicas.max),
        "automountServiceAccountToken": False,
        "securityContext": dict(POD_SECURITY),
        "containers": [container],
        "volumes": [_models_volume(spec), dict(TMP_VOLUME)],
    }


def inference_service(
    name: str, namespace: str, spec: FeedPipelineSpec, model: str, owner: dict[str, Any] | None
) -> Manifest:
    meta = _metadata(isvc_name(name, model), namespace, labels(name, "inference"), owner)
    meta["annotations"] = _annotations(spec)
    body: dict[str, Any] = {"predictor": predictor(spec, model)}
    if spec.inference.kserve.transformer and model == ENCODER:
        body["transformer"] = transformer(spec)
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": meta, "spec": body}


def inference_services(
    name: str, namespace: str, spec: FeedPipelineSpec, owner: dict[str, Any] | None
) -> list[Manifest]:
    """One InferenceService per model of the pool, in the spec's order."""
    return [inference_service(name, namespace, spec, m, owner) for m in spec.inference.models]


# --- status -----------------------------------------------------------------------------------


def isvc_ready(obj: Mapping[str, Any] | None) -> tuple[bool, str]:
    """Whether an InferenceService's ``Ready`` condition is True, and why not."""
    if obj is None:
        return False, "not created yet"
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            if c.get("status") == "True":
                return True, ""
            why = c.get("message") or c.get("reason") or f"Ready={c.get('status')}"
            return False, str(why)
    return False, "no Ready condition yet"


def pool_status(
    wanted: Sequence[str], live: Mapping[str, Mapping[str, Any] | None]
) -> tuple[PoolStatus, dict[str, str]]:
    """The inference pool in KServe mode: InferenceServices desired and Ready (``live``:
    name -> the live object or None), and why each one that is not Ready is not."""
    waiting = {}
    for n in wanted:
        ok, why = isvc_ready(live.get(n))
        if not ok:
            waiting[n] = why
    return PoolStatus(desired=len(wanted), ready=len(wanted) - len(waiting)), waiting


# --- FeedModels ------------------------------------------------------------------------------


def model_isvc(spec: FeedModelSpec) -> str:
    """The InferenceService serving a FeedModel's role."""
    return isvc_name(spec.pipeline, ROLE_MODEL[spec.role])


def serving_version(spec: FeedModelSpec) -> int:
    """The version of the latest revision: the canary while there is one, else the stable."""
    canary = spec.rollout.canary_version
    return canary if canary is not None else spec.version


def canary_patch(spec: FeedModelSpec) -> dict[str, Any]:
    """The merge patch of the model's InferenceService for a FeedModel: the latest revision
    serves ``serving_version``, and with a canary it gets ``canaryWeight`` percent of the
    traffic (the previous revision, serving the stable version, the rest); without one,
    ``canaryTrafficPercent`` is removed and the latest revision takes all of it."""
    canary = spec.rollout.canary_version
    percent = spec.rollout.canary_weight if canary not in (None, spec.version) else None
    return {
        "spec": {
            "predictor": {
                "canaryTrafficPercent": percent,
                "annotations": {MODEL_VERSION: str(serving_version(spec))},
            }
        }
    }


RELEASE_PATCH: dict[str, Any] = {
    "spec": {"predictor": {"canaryTrafficPercent": None, "annotations": {MODEL_VERSION: None}}}
}
"""A deleted FeedModel: the model goes back to the repository's version policy."""


def needs_patch(spec: FeedModelSpec, live: Mapping[str, Any]) -> bool:
    """True when the InferenceService does not carry the FeedModel's version and split."""
    pred = (live.get("spec") or {}).get("predictor") or {}
    want = canary_patch(spec)["spec"]["predictor"]
    return bool(
        pred.get("canaryTrafficPercent") != want["canaryTrafficPercent"]
        or (pred.get("annotations") or {}).get(MODEL_VERSION) != want["annotations"][MODEL_VERSION]
    )


def merge_patch(target: Any, patch: Any) -> Any:
    """``target`` with a JSON merge patch (RFC 7386) applied, as the API server applies it."""
    if not isinstance(patch, Mapping):
        return patch
    out = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def with_models(
    manifests: Sequence[Manifest], models: Sequence[tuple[str, FeedModelSpec]]
) -> list[Manifest]:
    """Rendered manifests with each FeedModel's ``canary_patch`` applied to its model's
    InferenceService (``models``: namespace and spec), as the operator would once both
    exist (``feedserve operator render`` of a pipeline with its FeedModels)."""
    patches = {(ns, model_isvc(m)): canary_patch(m) for ns, m in models}
    out = []
    for obj in manifests:
        meta = obj.get("metadata") or {}
        patch = patches.get((str(meta.get("namespace")), str(meta.get("name"))))
        out.append(merge_patch(obj, patch) if obj.get("kind") == KIND and patch else obj)
    return out


def predictor_selector(spec: FeedModelSpec) -> dict[str, str]:
    """The labels of the model's predictor pods (KServe's)."""
    return {ISVC_LABEL: model_isvc(spec), COMPONENT_LABEL: "predictor"}


def pod_versions(pods: Sequence[Mapping[str, Any]], spec: FeedModelSpec) -> dict[str, list[int]]:
    """``{pod: [version]}``: what each predictor pod must serve, by its revision's
    annotation (a pod of a revision from before the FeedModel: the FeedModel's stable)."""
    out = {}
    for pod in pods:
        meta = pod.get("metadata") or {}
        raw = str((meta.get("annotations") or {}).get(MODEL_VERSION) or "")
        out[str(meta.get("name"))] = [int(raw) if raw.isdigit() else spec.version]
    return out


def model_status(
    spec: FeedModelSpec,
    isvc: Mapping[str, Any] | None,
    loaded: Mapping[str, Sequence[int]],
    expected: Mapping[str, Sequence[int]],
    errors: Mapping[str, str],
    generation: int,
    previous: Sequence[Condition],
    now: str,
) -> FeedModelStatus:
    """A FeedModel of a KServe pipeline: ready when its InferenceService is Ready and every
    ready predictor pod serves its revision's version (``loaded``/``expected``: per pod)."""
    isvc_ok, why = isvc_ready(isvc)
    behind = sorted(p for p, v in loaded.items() if sorted(v) != sorted(expected.get(p, [])))
    ready = isvc_ok and bool(loaded) and not errors and not behind
    if errors:
        state = load_failed(errors)
    elif not isvc_ok:
        state = {
            "Ready": ("False", "InferenceServiceNotReady", f"{model_isvc(spec)}: {why}"),
            "Progressing": ("True", "WaitingForKServe", f"{model_isvc(spec)}: {why}"),
            "Degraded": ("False", "Healthy", ""),
        }
    elif not loaded or behind:
        message = f"loading on {', '.join(behind)}" if behind else "no ready predictor pod"
        state = {
            "Ready": ("False", "Loading", message),
            "Progressing": ("True", "Loading", message),
            "Degraded": ("False", "Healthy", ""),
        }
    else:
        state = {
            "Ready": ("True", "Loaded", f"{model_isvc(spec)} ready on {len(loaded)} pod(s)"),
            "Progressing": ("False", "Stable", ""),
            "Degraded": ("False", "Healthy", ""),
        }
    served = sorted({v for versions in loaded.values() for v in versions})
    return FeedModelStatus(
        observed_generation=generation,
        loaded_versions=served,
        served_weights=canary_weights(spec),
        ready=ready,
        conditions=with_transitions(state, generation, previous, now),
    )
