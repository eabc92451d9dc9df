"""Kubernetes batch objects for a workflow's offline steps (pure: manifests as dicts).

Each step whose mode includes ``offline`` becomes a ``CronJob`` when it has a ``schedule``,
else a ``Job`` to run on demand; both run ``feedserve run offline STEP`` in the featurizer
image. The operator applies these (with owner references to the FeedPipeline);
``feedserve operator render`` prints them.
"""

from __future__ import annotations

from typing import Any

from feedserve.workflow.spec import Workflow

JOB_LABEL = "feedserve.io/workflow-step"


def _dns_name(*parts: str) -> str:
    return "-".join(p.replace("_", "-") for p in parts if p)[:52].rstrip("-")


def offline_jobs(
    wf: Workflow,
    *,
    pipeline: str,
    namespace: str,
    image: str,
    env: dict[str, str] | None = None,
    workflow_config_map: str = "",
) -> list[dict[str, Any]]:
    """One Job or CronJob per offline step of ``wf``."""
    out: list[dict[str, Any]] = []
    for name in wf.order:
        step = wf.step(name)
        if not step.mode.batch:
            continue
        labels = {
            "app.kubernetes.io/name": "feedserve",
            "app.kubernetes.io/instance": pipeline,
            "app.kubernetes.io/component": "offline-job",
            JOB_LABEL: name,
        }
        container: dict[str, Any] = {
            "name": "offline",
            "image": image,
            "args": ["feedserve", "run", "offline", name, "--no-progress"],
            "env": [{"name": k, "value": v} for k, v in sorted((env or {}).items())],
            "securityContext": {
                "runAsNonRoot": True,
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            },
        }
        pod: dict[str, Any] = {"restartPolicy": "OnFailure", "containers": [container]}
        if workflow_config_map:
            container["env"].append(
                {"name": "FEEDSERVE_WORKFLOW", "value": "/etc/feedserve/workflow.yaml"}
            )
            container["volumeMounts"] = [
                {"name": "workflow", "mountPath": "/etc/feedserve", "readOnly": True}
            ]
            pod["volumes"] = [{"name": "workflow", "configMap": {"name": workflow_config_map}}]
        job_spec: dict[str, Any] = {
            "backoffLimit": 3,
            "ttlSecondsAfterFinished": 86_400,
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
        }
        metadata = {
            "name": _dns_name(pipeline, name),
            "namespace": namespace,
            "labels": dict(labels),
        }
        if step.schedule:
            out.append(
                {
                    "apiVersion": "batch/v1",
                    "kind": "CronJob",
                    "metadata": metadata,
                    "spec": {
                        "schedule": step.schedule,
                        "concurrencyPolicy": "Forbid",
                        "jobTemplate": {"spec": job_spec},
                    },
                }
            )
        else:
            out.append(
                {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec}
            )
    return out
