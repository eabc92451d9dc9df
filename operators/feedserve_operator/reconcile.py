"""Pure reconcile logic: what to create, patch and delete, pool status and conditions.

No I/O here: ``handlers`` reads the live objects through ``kube``, calls these functions,
and writes what they decide.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from feedserve_operator.autoscale import Decision, PolicyConfig, PoolBounds
from feedserve_operator.spec import Condition, FeedPipelineSpec, PoolStatus

Key = tuple[str, str, str]
"""(kind, namespace, name) of an object."""

INSTANCE_LABEL = "app.kubernetes.io/instance"
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY = ("app.kubernetes.io/managed-by", "feedserve-operator")
POOLS = ("featurizer", "inference", "gateway")
"""Component labels of the three Deployments the status reports on."""


def key(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata", {})
    return (str(obj.get("kind")), str(meta.get("namespace", "")), str(meta.get("name", "")))


def is_subset(desired: Any, live: Any) -> bool:
    """Every field of ``desired`` has the same value in ``live`` (maps compared key by key,
    lists and scalars exactly). Fields the API server adds (defaults, status) are ignored."""
    if isinstance(desired, Mapping):
        return isinstance(live, Mapping) and all(
            k in live and is_subset(v, live[k]) for k, v in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(live, list)
            and len(desired) == len(live)
            and all(is_subset(d, v) for d, v in zip(desired, live, strict=True))
        )
    return bool(desired == live)


@dataclass
class Plan:
    create: list[dict[str, Any]] = field(default_factory=list)
    patch: list[dict[str, Any]] = field(default_factory=list)
    delete: list[Key] = field(default_factory=list)
    unchanged: int = 0

    @property
    def changes(self) -> int:
        return len(self.create) + len(self.patch) + len(self.delete)


def plan(
    desired: Sequence[Mapping[str, Any]],
    live: Mapping[Key, Mapping[str, Any] | None],
    owned: Sequence[Mapping[str, Any]] = (),
) -> Plan:
    """Create what is missing, patch what drifted, delete what we own but no longer want
    (``owned``: live objects carrying this pipeline's instance label)."""
    out = Plan()
    wanted = {key(d) for d in desired}
    for obj in desired:
        current = live.get(key(obj))
        if current is None:
            out.create.append(dict(obj))
        elif not is_subset(_comparable(obj), current):
            out.patch.append(dict(obj))
        else:
            out.unchanged += 1
    out.delete = sorted({key(o) for o in owned} - wanted)
    return out


def _comparable(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What of a desired object must match the live one (its metadata: labels,
    annotations and owner references only)."""
    meta = obj.get("metadata", {})
    keep = {k: meta[k] for k in ("labels", "annotations", "ownerReferences") if k in meta}
    return {**{k: v for k, v in obj.items() if k != "metadata"}, "metadata": keep}


def by_pool(live_deployments: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """The pools' live Deployments by their component label (other Deployments left out)."""
    out: dict[str, Mapping[str, Any]] = {}
    for d in live_deployments:
        pool = (d.get("metadata", {}).get("labels") or {}).get(COMPONENT_LABEL)
        if pool in POOLS:
            out[str(pool)] = d
    return out


def kept_replicas(
    spec: FeedPipelineSpec, live_deployments: Sequence[Mapping[str, Any]]
) -> dict[str, int]:
    """Replicas per pool that a reconcile keeps: what the autoscaler (or HPA) last set,
    clamped to the spec's bounds; the lower bound for a pool not created yet."""
    bounds = {
        "featurizer": (spec.featurizers.replicas.min, spec.featurizers.replicas.max),
        "inference": (spec.inference.replicas.min, spec.inference.replicas.max),
        "gateway": (spec.gateway.replicas, spec.gateway.replicas),
    }
    current = {p: d.get("spec", {}).get("replicas") for p, d in by_pool(live_deployments).items()}
    out = {}
    for pool, (lo, hi) in bounds.items():
        now = current.get(pool)
        out[pool] = lo if not isinstance(now, int) else min(max(now, lo), hi)
    return out


def pool_status(live_deployments: Sequence[Mapping[str, Any]]) -> dict[str, PoolStatus]:
    """Desired and ready replicas of each pool's Deployment."""
    out = {pool: PoolStatus() for pool in POOLS}
    for pool, d in by_pool(live_deployments).items():
        out[pool] = PoolStatus(
            desired=int(d.get("spec", {}).get("replicas") or 0),
            ready=int((d.get("status") or {}).get("readyReplicas") or 0),
        )
    return out


def conditions(
    pools: Mapping[str, PoolStatus],
    generation: int,
    previous: Sequence[Condition],
    now: str,
    error: str = "",
    waiting: Mapping[str, str] | None = None,
) -> list[Condition]:
    """Ready / Progressing / Degraded, each with a reason; a condition keeps its
    lastTransitionTime while its status does not change. ``waiting``: what each child that is
    not ready yet waits for (KServe InferenceServices), added to the Ready message."""
    not_ready = [p for p, s in pools.items() if s.ready < s.desired or s.desired == 0]
    rolling = [p for p, s in pools.items() if s.ready != s.desired]
    why = "; ".join(f"{k}: {v}" for k, v in sorted((waiting or {}).items()))
    if error:
        ready = ("False", "ReconcileFailed", error)
    elif not_ready:
        message = "not ready: " + ", ".join(sorted(not_ready)) + (f" ({why})" if why else "")
        ready = ("False", "PoolsNotReady", message)
    else:
        ready = ("True", "AllPoolsReady", "every pool has its desired replicas ready")
    progressing = (
        ("True", "Scaling", "waiting for " + ", ".join(sorted(rolling)))
        if rolling and not error
        else ("False", "Stable", "")
    )
    degraded = ("True", "ReconcileFailed", error) if error else ("False", "Healthy", "")
    return with_transitions(
        {"Ready": ready, "Progressing": progressing, "Degraded": degraded},
        generation,
        previous,
        now,
    )


def load_failed(errors: Mapping[str, str]) -> dict[str, tuple[str, str, str]]:
    """A FeedModel's condition states when loading failed on some pods (``errors``: pod →
    why; not empty)."""
    pod, why = sorted(errors.items())[0]
    return {
        "Ready": ("False", "LoadFailed", f"{len(errors)} pod(s) failed; {pod}: {why}"),
        "Progressing": ("False", "LoadFailed", ""),
        "Degraded": ("True", "LoadFailed", f"{pod}: {why}"),
    }


def with_transitions(
    states: Mapping[str, tuple[str, str, str]],
    generation: int,
    previous: Sequence[Condition],
    now: str,
) -> list[Condition]:
    """Conditions from ``{type: (status, reason, message)}``; a condition keeps its
    lastTransitionTime while its status does not change."""
    before: dict[str, Condition] = {str(c.type): c for c in previous}
    out = []
    for ctype, (status, reason, message) in states.items():
        old = before.get(ctype)
        since = old.last_transition_time if old is not None and old.status == status else now
        out.append(
            Condition.model_validate(
                {
                    "type": ctype,
                    "status": status,
                    "reason": reason,
                    "message": message[:2048],
                    "lastTransitionTime": since,
                    "observedGeneration": generation,
                }
            )
        )
    return out


def owned_by(objects: Sequence[Mapping[str, Any]], uid: str) -> list[Mapping[str, Any]]:
    """The objects whose owner references name ``uid`` (so that a pipeline never deletes
    what another resource with the same instance label owns, e.g. a FeedModel's config)."""
    return [
        o
        for o in objects
        if any(r.get("uid") == uid for r in o.get("metadata", {}).get("ownerReferences") or [])
    ]


def policy_config(spec: FeedPipelineSpec) -> PolicyConfig:
    """The autoscaling policy's settings from a FeedPipeline spec."""
    a = spec.autoscaling
    return PolicyConfig(
        latency_objective_ms=float(a.latency_objective_ms),
        interval_s=float(a.interval_seconds),
        scale_up_cooldown_s=float(a.scale_up_cooldown_seconds),
        scale_down_stabilization_s=float(a.scale_down_stabilization_seconds),
        featurizer_target_cpu=a.featurizer_target_cpu_percent / 100,
        triton_target_queue_ms=float(a.triton_target_queue_ms),
        featurizer=PoolBounds(spec.featurizers.replicas.min, spec.featurizers.replicas.max),
        inference=PoolBounds(spec.inference.replicas.min, spec.inference.replicas.max),
    )


def scale_patches(decision: Decision, current: Mapping[str, int]) -> dict[str, int]:
    """``{pool: replicas}`` for the existing pools (``current``: their replicas now) whose
    Deployment the decision changes."""
    wanted = {"featurizer": decision.featurizers, "inference": decision.inference}
    return {p: n for p, n in wanted.items() if p in current and current[p] != n}


def pool_replicas(live_deployments: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """``{pool: spec.replicas}`` of the pools' live Deployments."""
    pools = by_pool(live_deployments)
    return {p: int(d.get("spec", {}).get("replicas") or 0) for p, d in pools.items()}
