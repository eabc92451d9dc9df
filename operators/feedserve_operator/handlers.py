"""kopf handlers for FeedPipeline and FeedModel: thin. Each parses the object through the
spec model, asks ``render``/``reconcile``/``model_control``/``autoscale`` (pure) what to do,
and does it through ``kube`` (the Kubernetes API), ``metrics`` (Prometheus) and
``feedserve.triton_client`` (Triton's model control API).

- a spec the model rejects: ``kopf.PermanentError`` (not retried), condition
  ``Degraded=True/InvalidSpec`` and a Warning event naming the field;
- the API server away, overloaded or in conflict: ``kopf.TemporaryError`` (retried);
- drift (a child edited or deleted by hand, a new Triton pod without the FeedModel's
  versions) is corrected by periodic timers;
- ``coupled`` pipelines are resized by a timer: metrics → ``autoscale.coupled`` → replicas;
- with ``inference.runtime: kserve`` the inference pool is KServe InferenceServices
  (``render_kserve``): KServe sizes them, the pipeline's status reads their Ready conditions,
  and a FeedModel sets its model's version and canary traffic on its InferenceService.

``register(registry, op)`` adds the handlers to a registry: ``main`` registers them in kopf's
default one for ``kopf run``; tests use a fresh registry each.
"""

from __future__ import annotations

import datetime
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import httpx
import kopf
from pydantic import BaseModel, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from feedserve.triton_client import AsyncTritonClient, TritonError
from feedserve.workflow.spec import WorkflowError
from feedserve_operator import model_control as mc
from feedserve_operator import reconcile as rc
from feedserve_operator import render_kserve as rk
from feedserve_operator.autoscale import Observation, PolicyState, coupled
from feedserve_operator.kube import CHILD_KINDS, KubeApi, KubeError
from feedserve_operator.metrics import Prometheus, observation, queries
from feedserve_operator.reconcile import COMPONENT_LABEL, INSTANCE_LABEL
from feedserve_operator.render import canary_weights, names, render_model, render_pipeline
from feedserve_operator.spec import (
    GROUP,
    ROLE_MODEL,
    VERSION,
    Condition,
    FeedModelSpec,
    FeedModelStatus,
    FeedPipelineSpec,
    FeedPipelineStatus,
)

log = logging.getLogger(__name__)


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FEEDSERVE_OPERATOR_", extra="ignore")

    resync_s: float = 30.0
    """How often every FeedPipeline is re-checked for drift (and its status refreshed)."""
    retry_s: float = 10.0
    """Delay before a transient failure is retried."""
    autoscale_tick_s: float = 5.0
    """How often ``coupled`` pipelines are considered; each runs its policy every
    ``spec.autoscaling.intervalSeconds``."""
    model_resync_s: float = 30.0
    """How often each FeedModel's versions are checked on every ready Triton pod."""
    prometheus_url: str = ""
    """Prometheus the ``coupled`` policy reads its signals from; empty: coupled pipelines
    keep their replicas (and say so in an event)."""
    triton_timeout_s: float = 120.0
    """Per call to a Triton pod's model control API (loading a large model takes a while)."""


class MetricsSource(Protocol):
    async def observe(
        self,
        name: str,
        namespace: str,
        spec: FeedPipelineSpec,
        deployments: list[dict[str, Any]],
        now_s: float,
    ) -> Observation | None: ...


class PrometheusMetrics:
    """The ``coupled`` policy's signals from Prometheus (see ``metrics``)."""

    def __init__(self, url: str) -> None:
        self.prometheus = Prometheus(url)

    async def observe(
        self,
        name: str,
        namespace: str,
        spec: FeedPipelineSpec,
        deployments: list[dict[str, Any]],
        now_s: float,
    ) -> Observation | None:
        from feedserve_featurizers.celery_app import queue_name

        promql = queries(name, namespace, queue_name(spec.redis.prefix))
        return observation(await self.prometheus.values(promql), spec, deployments, now_s)


class Operator:
    """The handlers' shared state: one API client per operator process, the autoscaling
    policy's memory per pipeline."""

    def __init__(
        self,
        api: KubeApi | None,
        settings: OperatorSettings,
        metrics: MetricsSource | None = None,
    ) -> None:
        self._api = api
        self.settings = settings
        self.metrics = metrics or (
            PrometheusMetrics(settings.prometheus_url) if settings.prometheus_url else None
        )
        self.policy_states: dict[tuple[str, str], PolicyState] = {}
        self.last_scaled: dict[tuple[str, str], float] = {}

    @property
    def api(self) -> KubeApi:
        if self._api is None:
            self._api = KubeApi.in_cluster()
        return self._api


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()


def _labels(name: str) -> dict[str, str]:
    return {rc.INSTANCE_LABEL: name, rc.MANAGED_BY[0]: rc.MANAGED_BY[1]}


def _problems(exc: ValidationError) -> str:
    return "; ".join(f"spec.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())


def _previous(status: Mapping[str, Any]) -> list[Condition]:
    out = []
    for raw in status.get("conditions") or []:
        try:
            out.append(Condition.model_validate(raw))
        except ValidationError:
            continue
    return out


def _failure(exc: KubeError, retry_s: float) -> kopf.TemporaryError | kopf.PermanentError:
    """What a failed API call becomes: retried later if transient, reported otherwise."""
    if exc.transient:
        return kopf.TemporaryError(str(exc), delay=retry_s)
    return kopf.PermanentError(str(exc))


async def apply(
    api: KubeApi, namespace: str, desired: list[dict[str, Any]], owner_uid: str | None
) -> rc.Plan:
    """Create and patch until the live objects match ``desired``; with ``owner_uid``, also
    delete children of that owner that are no longer desired (a removed HPA, Job, …). Jobs
    cannot be changed once created: a changed Job is deleted and created again."""
    live = {rc.key(d): await api.get(d["kind"], namespace, d["metadata"]["name"]) for d in desired}
    owned: list[Any] = []
    if owner_uid:
        instances = {d["metadata"]["labels"][rc.INSTANCE_LABEL] for d in desired}
        for kind in CHILD_KINDS:
            for instance in instances:
                listed = await api.list(kind, namespace, _labels(instance))
                owned += rc.owned_by(listed, owner_uid)
    plan = rc.plan(desired, live, owned)
    for obj in plan.create:
        await api.create(obj)
    for obj in plan.patch:
        if obj["kind"] == "Job":
            await api.delete("Job", namespace, obj["metadata"]["name"])
            await api.create(obj)
        else:
            await api.merge_patch(obj["kind"], namespace, obj["metadata"]["name"], obj)
    for kind, _, child in plan.delete:
        await api.delete(kind, namespace, child)
    return plan


async def sync_pipeline(
    op: Operator, name: str, namespace: str, spec: FeedPipelineSpec, uid: str
) -> rc.Plan:
    deployments = await op.api.list("Deployment", namespace, _labels(name))
    replicas = rc.kept_replicas(spec, rc.owned_by(deployments, uid) if uid else deployments)
    desired = render_pipeline(name, namespace, spec, uid=uid, replicas=replicas)
    return await apply(op.api, namespace, desired, uid or None)


async def pipeline_status(
    op: Operator,
    name: str,
    namespace: str,
    spec: FeedPipelineSpec | None,
    generation: int,
    previous: list[Condition],
    error: str = "",
) -> dict[str, Any]:
    pools = rc.pool_status(await op.api.list("Deployment", namespace, _labels(name)))
    waiting: dict[str, str] = {}
    if spec is not None and spec.inference.runtime == "kserve":
        # the inference pool is KServe's: its InferenceServices' Ready conditions
        live = {
            str(o["metadata"]["name"]): o
            for o in await op.api.list("InferenceService", namespace, _labels(name))
        }
        wanted = [rk.isvc_name(name, m) for m in spec.inference.models]
        pools["inference"], waiting = rk.pool_status(wanted, live)
    status = FeedPipelineStatus(
        observed_generation=generation,
        policy=spec.autoscaling.policy if spec else "",
        featurizers=pools["featurizer"],
        inference=pools["inference"],
        gateway=pools["gateway"],
        conditions=rc.conditions(pools, generation, previous, _now(), error, waiting),
    )
    return status.model_dump(by_alias=True, mode="json")


def _reject(message: str, body: Any, patch: Any, generation: int) -> kopf.PermanentError:
    """Report an invalid spec in the status and as a Warning event; not retried."""
    patch.status["observedGeneration"] = generation
    patch.status["conditions"] = [
        c.model_dump(by_alias=True)
        for c in rc.with_transitions(
            {
                "Ready": ("False", "InvalidSpec", message),
                "Progressing": ("False", "InvalidSpec", ""),
                "Degraded": ("True", "InvalidSpec", message),
            },
            generation,
            [],
            _now(),
        )
    ]
    kopf.warn(body, reason="InvalidSpec", message=message)
    return kopf.PermanentError(f"invalid spec: {message}")


def _parse(kind: type[BaseModel], raw: Mapping[str, Any], body: Any, patch: Any, gen: int) -> Any:
    """The parsed spec, or a permanent failure that says which field is wrong."""
    try:
        return kind.model_validate(dict(raw))
    except ValidationError as exc:
        raise _reject(_problems(exc), body, patch, gen) from None


async def reconcile_pipeline(
    op: Operator, name: str, namespace: str, spec: Mapping[str, Any], meta: Mapping[str, Any],
    status: Mapping[str, Any], body: Any, patch: Any, events: bool,
) -> None:  # fmt: skip
    generation = int(meta.get("generation") or 0)
    parsed: FeedPipelineSpec = _parse(FeedPipelineSpec, spec, body, patch, generation)
    previous = _previous(status)
    try:
        plan = await sync_pipeline(op, name, namespace, parsed, str(meta.get("uid") or ""))
        patch.status.update(
            await pipeline_status(op, name, namespace, parsed, generation, previous)
        )
    except WorkflowError as exc:  # the embedded workflow does not check out
        raise _reject(f"spec.workflow: {exc}", body, patch, generation) from None
    except KubeError as exc:
        failure = _failure(exc, op.settings.retry_s)
        if isinstance(failure, kopf.TemporaryError):
            raise failure from exc
        kopf.warn(body, reason="ApplyFailed", message=str(exc))
        patch.status.update(
            await pipeline_status(op, name, namespace, parsed, generation, previous, str(exc))
        )
        raise failure from exc
    counts = f"{len(plan.create)} created, {len(plan.patch)} patched, {len(plan.delete)} deleted"
    if plan.changes and events:
        kopf.info(body, reason="Reconciled", message=counts)
    elif plan.changes:
        kopf.warn(body, reason="DriftCorrected", message=counts)


async def autoscale_pipeline(
    op: Operator, name: str, namespace: str, spec: Mapping[str, Any], body: Any
) -> dict[str, int]:
    """One ``coupled`` policy step for a pipeline when its interval is due; returns the
    replicas it set (``{}``: nothing changed)."""
    try:
        parsed = FeedPipelineSpec.model_validate(dict(spec))
    except ValidationError:
        return {}  # reported by the reconcile handlers
    if parsed.autoscaling.policy != "coupled":
        return {}
    key, now = (namespace, name), time.monotonic()
    if now - op.last_scaled.get(key, -1e18) < parsed.autoscaling.interval_seconds:
        return {}
    op.last_scaled[key] = now
    if op.metrics is None:
        kopf.warn(body, reason="NoMetrics", message="coupled policy without FEEDSERVE_OPERATOR_"
                  "PROMETHEUS_URL: replicas stay as they are")  # fmt: skip
        op.last_scaled[key] = now + 3600  # say it once an hour
        return {}
    deployments = await op.api.list("Deployment", namespace, _labels(name))
    try:
        obs = await op.metrics.observe(name, namespace, parsed, deployments, now)
    except httpx.HTTPError as exc:
        message = f"metrics unavailable: {exc!r}"
        raise kopf.TemporaryError(message, delay=op.settings.retry_s) from exc
    if obs is None:
        return {}
    decision = coupled(
        obs, op.policy_states.setdefault(key, PolicyState()), rc.policy_config(parsed)
    )
    changes = rc.scale_patches(decision, rc.pool_replicas(deployments))
    if parsed.inference.runtime == "kserve":
        changes.pop("inference", None)  # KServe sizes its InferenceServices
    names = {pool: d["metadata"]["name"] for pool, d in rc.by_pool(deployments).items()}
    for pool, replicas in changes.items():
        await op.api.merge_patch(
            "Deployment", namespace, names[pool], {"spec": {"replicas": replicas}}
        )
    if changes:
        kopf.info(body, reason="Scaled", message=f"{changes}: {decision.reason}")
    return changes


async def load_versions(
    op: Operator,
    spec: FeedModelSpec,
    endpoints: Mapping[str, str],
    versions: Mapping[str, list[int]] | None = None,
) -> tuple[dict[str, list[int]], dict[str, str]]:
    """Load the FeedModel's versions (per pod: ``versions``; default: stable and canary) with
    its settings on each Triton endpoint; returns the ready versions per pod and the pods
    that failed."""
    model = ROLE_MODEL[spec.role]
    loaded: dict[str, list[int]] = {}
    errors: dict[str, str] = {}
    for pod, url in endpoints.items():
        wanted = None if versions is None else versions.get(pod)
        client = AsyncTritonClient(url, timeout_s=op.settings.triton_timeout_s)
        try:
            ready = await client.ready_versions(model)
            config = await client.model_config(model)
            if mc.needs_load(config, spec, ready, wanted):
                await client.load_with_config(model, mc.overlay(config, spec, wanted))
                ready = await client.ready_versions(model)
            loaded[pod] = ready
        except TritonError as exc:
            errors[pod] = str(exc)
        finally:
            await client.close()
    return loaded, errors


async def sync_model_versions(
    op: Operator, namespace: str, spec: FeedModelSpec
) -> tuple[dict[str, list[int]], dict[str, str]]:
    """Load the FeedModel's versions with its settings on every ready Triton pod of its
    pipeline; returns the ready versions per pod and the pods that failed."""
    pods = await op.api.list(
        "Pod", namespace, {INSTANCE_LABEL: spec.pipeline, COMPONENT_LABEL: "inference"}
    )
    return await load_versions(op, spec, mc.triton_endpoints(pods))


async def sync_kserve_model(
    op: Operator,
    namespace: str,
    spec: FeedModelSpec,
    generation: int,
    previous: list[Condition],
) -> tuple[FeedModelStatus, dict[str, list[int]], dict[str, str]]:
    """A FeedModel of a KServe pipeline: its version and canary traffic on its model's
    InferenceService, then that version, with its settings, on each ready predictor pod of
    the pod's revision; the status from the InferenceService's Ready condition and the pods."""
    name = rk.model_isvc(spec)
    isvc = await op.api.get("InferenceService", namespace, name)
    if isvc is None:
        raise kopf.TemporaryError(f"InferenceService {name} does not exist (yet)",
                                  delay=op.settings.retry_s)  # fmt: skip
    if rk.needs_patch(spec, isvc):
        isvc = await op.api.merge_patch("InferenceService", namespace, name, rk.canary_patch(spec))
    pods = await op.api.list("Pod", namespace, rk.predictor_selector(spec))
    expected = rk.pod_versions(pods, spec)
    endpoints = mc.triton_endpoints(pods, default_port=rk.HTTP_PORT)
    loaded, errors = await load_versions(op, spec, endpoints, expected)
    new = rk.model_status(spec, isvc, loaded, expected, errors, generation, previous, _now())
    return new, loaded, errors


def _runtime(pipeline: Mapping[str, Any]) -> str:
    """The inference runtime of a live FeedPipeline (``triton`` unless it says otherwise)."""
    inference = (pipeline.get("spec") or {}).get("inference") or {}
    return str(inference.get("runtime") or "triton")


async def publish_weights(
    op: Operator, namespace: str, spec: FeedModelSpec, weights: dict[str, int] | None
) -> None:
    """Write (``None``: remove) the model's version weights in the pipeline's routing
    ConfigMap, which the gateway pods read."""
    routing = names(spec.pipeline)["routing"]
    current = await op.api.get("ConfigMap", namespace, routing)
    if current is None and weights is None:
        return  # the pipeline has gone first: nothing routes to the model any more
    if current is None:
        raise kopf.TemporaryError(f"ConfigMap {routing} not there (yet)", delay=op.settings.retry_s)
    model = ROLE_MODEL[spec.role]
    value = None if weights is None else json.dumps(weights, sort_keys=True)
    if (current.get("data") or {}).get(model) != value:
        await op.api.merge_patch("ConfigMap", namespace, routing, {"data": {model: value}})


async def restore_model(
    op: Operator, namespace: str, spec: FeedModelSpec, kserve: bool = False
) -> None:
    """A deleted FeedModel: its model goes back to the repository's own config (KServe: and
    its InferenceService loses the FeedModel's version and canary traffic)."""
    if kserve:
        name = rk.model_isvc(spec)
        if await op.api.get("InferenceService", namespace, name) is not None:
            await op.api.merge_patch("InferenceService", namespace, name, rk.RELEASE_PATCH)
        pods = await op.api.list("Pod", namespace, rk.predictor_selector(spec))
        endpoints = mc.triton_endpoints(pods, default_port=rk.HTTP_PORT)
    else:
        pods = await op.api.list(
            "Pod", namespace, {INSTANCE_LABEL: spec.pipeline, COMPONENT_LABEL: "inference"}
        )
        endpoints = mc.triton_endpoints(pods)
    for pod, url in endpoints.items():
        client = AsyncTritonClient(url, timeout_s=op.settings.triton_timeout_s)
        try:
            repository_config = mc.original(await client.model_config(ROLE_MODEL[spec.role]))
            if repository_config is not None:
                await client.load_with_config(ROLE_MODEL[spec.role], repository_config)
        except TritonError as exc:
            log.warning("restoring %s on %s: %s", spec.role, pod, exc)
        finally:
            await client.close()


async def reconcile_model(
    op: Operator, name: str, namespace: str, spec: Mapping[str, Any], meta: Mapping[str, Any],
    status: Mapping[str, Any], body: Any, patch: Any, events: bool,
) -> None:  # fmt: skip
    generation = int(meta.get("generation") or 0)
    parsed: FeedModelSpec = _parse(FeedModelSpec, spec, body, patch, generation)
    try:
        pipeline = await op.api.get("FeedPipeline", namespace, parsed.pipeline)
        if pipeline is None:
            raise kopf.TemporaryError(
                f"FeedPipeline {parsed.pipeline!r} does not exist (yet)", delay=op.settings.retry_s
            )
        desired = render_model(name, namespace, parsed, uid=str(meta.get("uid") or ""))
        await apply(op.api, namespace, desired, None)
        if _runtime(pipeline) == "kserve":  # KServe splits the traffic between revisions
            new, loaded, errors = await sync_kserve_model(
                op, namespace, parsed, generation, _previous(status)
            )
        else:
            loaded, errors = await sync_model_versions(op, namespace, parsed)
            new = mc.model_status(parsed, loaded, errors, generation, _previous(status), _now())
            # the gateway splits traffic once every version of the split is loaded everywhere
            if new.ready:
                await publish_weights(op, namespace, parsed, canary_weights(parsed))
    except KubeError as exc:
        raise _failure(exc, op.settings.retry_s) from exc
    patch.status.update(mc.status_patch(status, new))
    was_ready = bool(status.get("ready"))
    if errors:
        kopf.warn(
            body, reason="LoadFailed", message="; ".join(f"{p}: {e}" for p, e in errors.items())
        )
    elif events or new.ready != was_ready:
        kopf.info(body, reason="Loaded" if new.ready else "Progressing",
                  message=f"versions {new.loaded_versions} on {len(loaded)} pod(s), "
                  f"weights {new.served_weights}")  # fmt: skip


Reconcile = Callable[
    [Operator, str, str, Mapping[str, Any], Mapping[str, Any], Mapping[str, Any], Any, Any, bool],
    Awaitable[None],
]


def _reconcilers(
    registry: kopf.OperatorRegistry,
    resource: tuple[str, str, str],
    kind: str,
    op: Operator,
    reconcile: Reconcile,
    resync_s: float,
) -> None:
    """A resource's reconcile on create/update/resume (with events), and again by a drift
    timer that starts one interval late (a new object is the creation handler's)."""

    @kopf.on.resume(*resource, registry=registry, id=f"{kind}_changed")
    @kopf.on.create(*resource, registry=registry, id=f"{kind}_changed")
    @kopf.on.update(*resource, registry=registry, id=f"{kind}_changed")
    async def changed(
        *, name: str, namespace: str | None, spec: kopf.Spec, meta: kopf.Meta,
        status: kopf.Status, body: kopf.Body, patch: kopf.Patch, **_: Any,
    ) -> None:  # fmt: skip
        await reconcile(op, name, namespace or "", spec, meta, status, body, patch, True)

    @kopf.timer(
        *resource, interval=resync_s, initial_delay=resync_s, registry=registry, id=f"{kind}_drift"
    )
    async def drift(
        *, name: str, namespace: str | None, spec: kopf.Spec, meta: kopf.Meta,
        status: kopf.Status, body: kopf.Body, patch: kopf.Patch, **_: Any,
    ) -> None:  # fmt: skip
        await reconcile(op, name, namespace or "", spec, meta, status, body, patch, False)


def register(registry: kopf.OperatorRegistry, op: Operator) -> None:
    """Add every handler to ``registry``."""
    pipelines = (GROUP, VERSION, "feedpipelines")
    models = (GROUP, VERSION, "feedmodels")
    _reconcilers(registry, pipelines, "pipeline", op, reconcile_pipeline, op.settings.resync_s)
    _reconcilers(registry, models, "model", op, reconcile_model, op.settings.model_resync_s)

    @kopf.timer(*pipelines, interval=op.settings.autoscale_tick_s, registry=registry)
    async def pipeline_autoscale(
        *, name: str, namespace: str | None, spec: kopf.Spec, body: kopf.Body, **_: Any
    ) -> None:
        try:
            await autoscale_pipeline(op, name, namespace or "", spec, body)
        except KubeError as exc:
            raise _failure(exc, op.settings.retry_s) from exc

    @kopf.on.delete(*pipelines, registry=registry)
    async def pipeline_deleted(
        *, name: str, namespace: str | None, meta: kopf.Meta, **_: Any
    ) -> None:
        """Owner references make the garbage collector do this too; deleting here frees the
        children at once, and wherever no garbage collector runs."""
        ns, uid = namespace or "", str(meta.get("uid") or "")
        op.policy_states.pop((ns, name), None)
        op.last_scaled.pop((ns, name), None)
        try:
            for kind in CHILD_KINDS:
                for obj in rc.owned_by(await op.api.list(kind, ns, _labels(name)), uid):
                    await op.api.delete(kind, ns, obj["metadata"]["name"])
        except KubeError as exc:
            raise _failure(exc, op.settings.retry_s) from exc

    @kopf.on.delete(*models, registry=registry)
    async def model_deleted(*, namespace: str | None, spec: kopf.Spec, **_: Any) -> None:
        try:
            parsed = FeedModelSpec.model_validate(dict(spec))
        except ValidationError:
            return  # never loaded
        try:
            pipeline = await op.api.get("FeedPipeline", namespace or "", parsed.pipeline)
            kserve = pipeline is not None and _runtime(pipeline) == "kserve"
            if not kserve:
                await publish_weights(op, namespace or "", parsed, None)
            await restore_model(op, namespace or "", parsed, kserve)
        except KubeError as exc:
            raise _failure(exc, op.settings.retry_s) from exc
