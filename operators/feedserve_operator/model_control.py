"""Pure logic of Triton model control for a FeedModel: which Triton pods to talk to, the
configuration to load a model with (its repository config plus the FeedModel's versions and
batching), whether a pod needs a (re)load, and the FeedModel's status.

No I/O here: ``handlers`` lists the pods through ``kube`` and calls each pod's model-control
API through ``feedserve.triton_client``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from typing import Any

from feedserve_operator.reconcile import load_failed, with_transitions
from feedserve_operator.render import TRITON_HTTP, canary_weights, model_versions
from feedserve_operator.spec import Condition, FeedModelSpec, FeedModelStatus

OVERLAID = ("version_policy", "dynamic_batching", "instance_group", "max_batch_size")
"""Top-level fields of a Triton model config that a FeedModel decides."""
ORIGINAL = "feedserve.io/repository-config"
"""Model config parameter holding the config the FeedModel's overlay replaced (JSON): what
the model goes back to when the FeedModel is deleted (Triton keeps a model loaded as it is
when asked to load it again with unchanged files)."""


def original(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The repository's config under a FeedModel's overlay; ``None`` if not overlaid."""
    raw = ((config.get("parameters") or {}).get(ORIGINAL) or {}).get("string_value")
    return dict(json.loads(raw)) if raw else None


def triton_endpoints(
    pods: Sequence[Mapping[str, Any]], default_port: int = TRITON_HTTP
) -> dict[str, str]:
    """``{pod name: http://ip:port}`` of the Triton pods that are Ready (the port: the
    container port named ``http``, else ``default_port``)."""
    out = {}
    for pod in pods:
        status = pod.get("status") or {}
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in status.get("conditions") or []
        )
        ip = status.get("podIP")
        if not ready or not ip or (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        port = default_port
        for container in (pod.get("spec") or {}).get("containers") or []:
            for p in container.get("ports") or []:
                if p.get("name") == "http":
                    port = int(p["containerPort"])
        out[str(pod["metadata"]["name"])] = f"{ip}:{port}"
    return dict(sorted(out.items()))


def overlay(
    config: Mapping[str, Any], spec: FeedModelSpec, versions: Sequence[int] | None = None
) -> dict[str, Any]:
    """The model's loaded configuration with the FeedModel's settings on top: the versions to
    serve (``versions``, default: stable and canary), instances per device, batch size and
    dynamic batching."""
    base = original(config) or config
    out = copy.deepcopy(dict(base))
    out["parameters"] = {
        **dict(out.get("parameters") or {}),
        ORIGINAL: {"string_value": json.dumps(base, sort_keys=True)},
    }
    t = spec.triton
    wanted = sorted(versions) if versions is not None else model_versions(spec)
    out["version_policy"] = {"specific": {"versions": wanted}}
    if int(out.get("max_batch_size") or 0) > 0:
        out["max_batch_size"] = t.max_batch_size
        batching = dict(out.get("dynamic_batching") or {})
        batching["max_queue_delay_microseconds"] = t.max_queue_delay_microseconds
        # the spec's preferred sizes, else those of the repository's config that still fit
        # (Triton fills one in from max_batch_size when the config names none)
        preferred = list(t.preferred_batch_sizes) or [
            int(n) for n in batching.get("preferred_batch_size") or [] if int(n) <= t.max_batch_size
        ]
        batching.pop("preferred_batch_size", None)
        if preferred:
            batching["preferred_batch_size"] = preferred
        out["dynamic_batching"] = batching
    groups = [dict(g) for g in out.get("instance_group") or [{"kind": "KIND_AUTO"}]]
    for g in groups:
        g["count"] = t.instances
    out["instance_group"] = groups
    return out


def _same(a: Any, b: Any) -> bool:
    """Triton returns numbers in configs as strings in some places (``"2000"``)."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return str(a) == str(b)


def needs_load(
    config: Mapping[str, Any],
    spec: FeedModelSpec,
    ready: Sequence[int],
    versions: Sequence[int] | None = None,
) -> bool:
    """True when the pod does not serve exactly the wanted versions (``versions``, default:
    stable and canary) with the wanted settings."""
    if sorted(ready) != (sorted(versions) if versions is not None else model_versions(spec)):
        return True
    wanted = overlay(config, spec, versions)
    return not all(_same(wanted.get(k), config.get(k)) for k in OVERLAID if k in wanted)


def model_status(
    spec: FeedModelSpec,
    loaded: Mapping[str, Sequence[int]],
    errors: Mapping[str, str],
    generation: int,
    previous: Sequence[Condition],
    now: str,
) -> FeedModelStatus:
    """``loaded``: the ready versions on each Triton pod reached; ``errors``: pods that
    failed. Ready when every ready Triton pod serves every wanted version."""
    wanted = model_versions(spec)
    everywhere = sorted(set.intersection(*(set(v) for v in loaded.values()))) if loaded else []
    ready = bool(loaded) and not errors and all(v in everywhere for v in wanted)
    if errors:
        state = load_failed(errors)
    elif not loaded:
        state = {
            "Ready": ("False", "NoTritonPods", "no ready Triton pod of the pipeline"),
            "Progressing": ("True", "WaitingForTriton", "versions load when Triton pods are ready"),
            "Degraded": ("False", "Healthy", ""),
        }
    elif not ready:
        state = {
            "Ready": ("False", "Loading", f"versions {wanted} not ready on every pod"),
            "Progressing": ("True", "Loading", f"loading versions {wanted}"),
            "Degraded": ("False", "Healthy", ""),
        }
    else:
        state = {
            "Ready": ("True", "Loaded", f"versions {wanted} ready on {len(loaded)} pod(s)"),
            "Progressing": ("False", "Stable", ""),
            "Degraded": ("False", "Healthy", ""),
        }
    return FeedModelStatus(
        observed_generation=generation,
        loaded_versions=everywhere,
        served_weights=canary_weights(spec),
        ready=ready,
        conditions=with_transitions(state, generation, previous, now),
    )


def status_patch(previous: Mapping[str, Any], new: FeedModelStatus) -> dict[str, Any]:
    """A JSON merge patch from the live status to ``new``: a weight of a version no longer
    served is removed (merge patches only add to maps otherwise)."""
    out = new.model_dump(by_alias=True, mode="json")
    gone = set(previous.get("servedWeights") or {}) - set(out["servedWeights"])
    out["servedWeights"] = {**dict.fromkeys(sorted(gone)), **out["servedWeights"]}
    return out
