"""The typed spec of feedserve's custom resources (group ``feedserve.io``, ``v1alpha1``).

One model per resource, the only source of truth: the CRD schemas are generated from it
(``crds.py``; a test fails if the committed YAML differs), the operator parses every object
through it, and ``feedserve operator render`` uses it offline. Field names are the
Kubernetes camelCase ones; in Python they are snake_case (pydantic aliases).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from feedserve.workflow.spec import WorkflowSpec

GROUP = "feedserve.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

QUANTITY = r"^([0-9]+(\.[0-9]+)?)(m|Ki|Mi|Gi|Ti|k|M|G|T)?$"
IMAGE = r"^[a-z0-9]([a-z0-9._/:@-]*[a-z0-9])?$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class K8sModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class ResourceList(K8sModel):
    cpu: str = Field(default="1", pattern=QUANTITY, description="CPU, e.g. 500m or 2")
    memory: str = Field(default="2Gi", pattern=QUANTITY, description="memory, e.g. 2Gi")


class Resources(K8sModel):
    requests: ResourceList = Field(default_factory=ResourceList)
    limits: ResourceList | None = Field(default=None, description="default: the requests")


class Replicas(K8sModel):
    """The bounds the autoscaling policy keeps a pool within."""

    min: int = Field(default=1, ge=0, le=1000, description="fewest replicas")
    max: int = Field(default=4, ge=1, le=1000, description="most replicas")

    @model_validator(mode="after")
    def _ordered(self) -> Replicas:
        if self.min > self.max:
            raise ValueError("replicas.min must be <= replicas.max")
        return self


class FeaturizerPool(K8sModel):
    """The CPU pool: Celery (or DALI) featurizer workers."""

    backend: Literal["celery", "dali"] = Field(default="celery", description="featurizer backend")
    image: str = Field(default="feedserve/featurizer:0.1.0", pattern=IMAGE)
    replicas: Replicas = Field(default_factory=lambda: Replicas(min=1, max=8))
    concurrency: int = Field(default=4, ge=1, le=64, description="tasks per worker process")
    resources: Resources = Field(default_factory=Resources)


class ModelRepository(K8sModel):
    claim_name: str = Field(
        default="feedserve-models",
        pattern=DNS_LABEL,
        description="PersistentVolumeClaim holding the Triton model repository",
    )
    read_only: bool = True


STORAGE_URI = r"^(pvc|s3|gs|hdfs|webhdfs|https?|oci|hf)://[^\s]+$"


class KServeSpec(K8sModel):
    """How the pool runs as KServe InferenceServices (one per model, Triton as the predictor)."""

    deployment_mode: Literal["Knative", "Standard"] = Field(
        default="Knative",
        description="KServe deployment mode (KServe >= 0.16 names): Knative (revisions, "
        "canary traffic splits, the Knative autoscaler) or Standard (Deployments and "
        "KServe's HPA: scaleMetric cpu or memory; no canary traffic split)",
    )
    storage_uri: str = Field(
        default="pvc://feedserve-models",
        pattern=STORAGE_URI,
        max_length=1024,
        description="the Triton model repository (feedserve's artifacts under artifacts/), "
        "which KServe mounts or downloads at /mnt/models",
    )
    serving_runtime: str = Field(
        default="",
        max_length=63,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$",
        description="the ServingRuntime or ClusterServingRuntime to use; empty: the one KServe "
        "selects for the triton model format (kserve-tritonserver)",
    )
    scale_metric: Literal["concurrency", "rps", "cpu", "memory"] = Field(
        default="concurrency", description="what KServe scales each model's predictor on"
    )
    scale_target: int = Field(
        default=8,
        ge=1,
        le=100_000,
        description="target of scaleMetric per predictor pod (in-flight requests, requests/s, "
        "or percent of the CPU/memory request)",
    )
    protocol: Literal["v2", "triton"] = Field(
        default="v2",
        description="how the gateway calls the predictors: v2 (the Open Inference Protocol, JSON "
        "tensors) or triton (Triton's binary-tensor extension; needs Triton behind the endpoint)",
    )
    transformer: bool = Field(
        default=False,
        description="run the featurizer as a KServe transformer in front of retrieval_encoder "
        "(member or post id in, embedding out; featurizer image with the kserve extra)",
    )

    @model_validator(mode="after")
    def _standard_scales_on_resources(self) -> KServeSpec:
        if self.deployment_mode == "Standard" and self.scale_metric not in ("cpu", "memory"):
            raise ValueError("deploymentMode Standard scales on scaleMetric cpu or memory")
        return self


class InferencePool(K8sModel):
    """The GPU pool: Triton Inference Server serving the pipeline's models."""

    runtime: Literal["triton", "kserve"] = Field(
        default="triton",
        description="triton: the operator runs Triton (Deployment + Service); kserve: one KServe "
        "InferenceService per model (needs KServe in the cluster)",
    )
    kserve: KServeSpec = Field(default_factory=KServeSpec)
    image: str = Field(
        default="feedserve/triton:0.1.0",
        pattern=IMAGE,
        description="Triton with feedserve's models and Python 3.11 backend (ops/docker)",
    )
    gpus_per_pod: int = Field(default=1, ge=0, le=8, description="nvidia.com/gpu per pod")
    replicas: Replicas = Field(default_factory=lambda: Replicas(min=1, max=4))
    models: list[str] = Field(
        default_factory=lambda: ["retrieval_encoder", "post_index", "generative_ranker"],
        min_length=1,
        max_length=32,
        description="Triton models loaded at start (FeedModels add versions and canaries)",
    )
    model_repository: ModelRepository = Field(default_factory=ModelRepository)
    resources: Resources = Field(
        default_factory=lambda: Resources(requests=ResourceList(cpu="4", memory="16Gi"))
    )


class GatewaySpec(K8sModel):
    image: str = Field(default="feedserve/gateway:0.1.0", pattern=IMAGE)
    replicas: int = Field(default=2, ge=1, le=100)
    port: int = Field(default=8000, ge=1, le=65535)
    resources: Resources = Field(
        default_factory=lambda: Resources(requests=ResourceList(cpu="1", memory="1Gi"))
    )


class RedisSpec(K8sModel):
    url_secret: str = Field(
        default="feedserve-redis",
        pattern=DNS_LABEL,
        description="Secret whose key `url` holds the Redis URL (broker, store, streams)",
    )
    prefix: str = Field(default="fs", min_length=1, max_length=32, pattern=r"^[a-z0-9_-]+$")


class AutoscalingSpec(K8sModel):
    policy: Literal["hpa", "coupled"] = Field(
        default="coupled",
        description="hpa: one HorizontalPodAutoscaler per pool; coupled: both pools sized "
        "together from the latency objective, queue depths and per-pod throughput",
    )
    latency_objective_ms: int = Field(default=300, ge=10, le=60_000, description="p99 target")
    interval_seconds: int = Field(default=15, ge=5, le=600)
    scale_up_cooldown_seconds: int = Field(default=30, ge=0, le=3600)
    scale_down_stabilization_seconds: int = Field(default=300, ge=0, le=3600)
    featurizer_target_cpu_percent: int = Field(default=70, ge=10, le=100, description="hpa")
    triton_target_queue_ms: int = Field(
        default=50, ge=1, le=10_000, description="hpa: Triton queue-time target per pod"
    )


class FeedPipelineSpec(K8sModel):
    featurizers: FeaturizerPool = Field(default_factory=FeaturizerPool)
    inference: InferencePool = Field(default_factory=InferencePool)
    gateway: GatewaySpec = Field(default_factory=GatewaySpec)
    redis: RedisSpec = Field(default_factory=RedisSpec)
    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec)
    workflow: WorkflowSpec | None = Field(
        default=None, description="the feed workflow; default: the packaged feed.yaml"
    )


class Condition(K8sModel):
    type: Literal["Ready", "Progressing", "Degraded"]
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(default="", max_length=128)
    message: str = Field(default="", max_length=2048)
    last_transition_time: str = ""
    observed_generation: int = 0


class PoolStatus(K8sModel):
    desired: int = 0
    ready: int = 0


class FeedPipelineStatus(K8sModel):
    observed_generation: int = 0
    policy: str = ""
    featurizers: PoolStatus = Field(default_factory=PoolStatus)
    inference: PoolStatus = Field(default_factory=PoolStatus)
    gateway: PoolStatus = Field(default_factory=PoolStatus)
    conditions: list[Condition] = Field(default_factory=list)


class TritonSettings(K8sModel):
    instances: int = Field(default=1, ge=1, le=16, description="model instances per GPU")
    max_batch_size: int = Field(default=32, ge=0, le=4096)
    max_queue_delay_microseconds: int = Field(default=2000, ge=0, le=1_000_000)
    preferred_batch_sizes: list[int] = Field(default_factory=list, max_length=16)


class Rollout(K8sModel):
    canary_version: int | None = Field(default=None, ge=1, description="version under test")
    canary_weight: int = Field(
        default=0, ge=0, le=100, description="percent of requests the canary serves"
    )

    @model_validator(mode="after")
    def _canary(self) -> Rollout:
        if self.canary_weight > 0 and self.canary_version is None:
            raise ValueError("rollout.canaryWeight > 0 needs rollout.canaryVersion")
        return self


class FeedModelSpec(K8sModel):
    pipeline: str = Field(pattern=DNS_LABEL, max_length=63, description="FeedPipeline name")
    role: Literal["retrieval-encoder", "post-index", "generative-ranker"]
    artifact: str = Field(
        min_length=1, max_length=1024, description="where the exported version lives (URI)"
    )
    version: int = Field(ge=1, description="the Triton model version to serve")
    triton: TritonSettings = Field(default_factory=TritonSettings)
    rollout: Rollout = Field(default_factory=Rollout)


class FeedModelStatus(K8sModel):
    observed_generation: int = 0
    loaded_versions: list[int] = Field(default_factory=list)
    served_weights: dict[str, int] = Field(default_factory=dict)
    ready: bool = False
    conditions: list[Condition] = Field(default_factory=list)


ROLE_MODEL = {
    "retrieval-encoder": "retrieval_encoder",
    "post-index": "post_index",
    "generative-ranker": "generative_ranker",
}
"""The Triton model each FeedModel role serves."""
