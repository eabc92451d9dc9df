"""The one module that talks to the Kubernetes API (JSON over HTTP, httpx).

Only what the operator needs: fetch, list by label, create, JSON-merge-patch (objects and
their ``status`` subresource) and delete, for the kinds in ``KINDS``. Errors become
``KubeError`` with the HTTP status, so that handlers can tell a bad spec (4xx: permanent)
from an API server that is away (5xx, connection: temporary).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True)
class Kind:
    api_version: str
    kind: str
    plural: str

    def base(self, namespace: str) -> str:
        root = "/api" if "/" not in self.api_version else "/apis"
        return f"{root}/{self.api_version}/namespaces/{namespace}/{self.plural}"


KINDS: dict[str, Kind] = {
    k.kind: k
    for k in (
        Kind("apps/v1", "Deployment", "deployments"),
        Kind("v1", "Service", "services"),
        Kind("v1", "ConfigMap", "configmaps"),
        Kind("v1", "Pod", "pods"),
        Kind("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets"),
        Kind("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers"),
        Kind("batch/v1", "Job", "jobs"),
        Kind("batch/v1", "CronJob", "cronjobs"),
        Kind("feedserve.io/v1alpha1", "FeedPipeline", "feedpipelines"),
        Kind("feedserve.io/v1alpha1", "FeedModel", "feedmodels"),
        Kind("serving.kserve.io/v1beta1", "InferenceService", "inferenceservices"),
    )
}
"""Every kind the operator reads or writes."""

CHILD_KINDS = (
    "Deployment",
    "Service",
    "ConfigMap",
    "PodDisruptionBudget",
    "HorizontalPodAutoscaler",
    "Job",
    "CronJob",
    "InferenceService",
)
OPTIONAL_KINDS = frozenset({"InferenceService"})
"""Kinds of another project's CRDs (KServe's): a cluster may not have them, or not grant them
to an operator whose pipelines do not use them; listing them then finds nothing."""


class KubeError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status

    @property
    def transient(self) -> bool:
        """Worth retrying: the server is away or overloaded, or the object changed meanwhile."""
        return self.status == 0 or self.status in (409, 429) or self.status >= 500


def kind_of(obj: Mapping[str, Any]) -> Kind:
    kind = KINDS.get(str(obj.get("kind")))
    if kind is None or kind.api_version != obj.get("apiVersion"):
        raise KubeError(0, f"unsupported kind {obj.get('apiVersion')}/{obj.get('kind')}")
    return kind


class KubeApi:
    def __init__(
        self,
        server: str,
        token: str | None = None,
        verify: bool | str = True,
        timeout_s: float = 10.0,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.server = server.rstrip("/")
        self._client = httpx.AsyncClient(
            base_url=self.server, headers=headers, verify=verify, timeout=timeout_s
        )

    @classmethod
    def in_cluster(cls) -> KubeApi:
        """The pod's service account (the operator Deployment)."""
        host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
        token = (SA_DIR / "token").read_text().strip()
        return cls(f"https://{host}:{port}", token=token, verify=str(SA_DIR / "ca.crt"))

    async def close(self) -> None:
        await self._client.aclose()

    async def _request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> dict[str, Any] | None:
        try:
            resp = await self._client.request(
                method, path, json=body, headers={"Content-Type": content_type}
            )
        except httpx.HTTPError as exc:
            raise KubeError(0, f"{method} {path}: {exc!r}") from exc
        if resp.status_code == 404 and method in ("GET", "DELETE"):
            return None
        if resp.status_code >= 400:
            raise KubeError(resp.status_code, f"{method} {path}: {resp.text[:500]}")
        data: dict[str, Any] = resp.json() if resp.content else {}
        return data

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._request("GET", f"{KINDS[kind].base(namespace)}/{name}")

    async def list(
        self, kind: str, namespace: str, labels: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        path = f"{KINDS[kind].base(namespace)}?labelSelector={selector}"
        try:
            data = await self._request("GET", path)
        except KubeError as exc:
            if kind in OPTIONAL_KINDS and exc.status in (403, 404):
                return []  # not installed, or not granted (the chart's kserve value)
            raise
        items = (data or {}).get("items", [])
        # an API server filters by label; a minimal one may not: filter here as well
        return [
            i
            for i in items
            if all(
                (i.get("metadata", {}).get("labels") or {}).get(k) == v for k, v in labels.items()
            )
        ]

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        namespace = obj["metadata"]["namespace"]
        kind = kind_of(obj)
        try:
            out = await self._request("POST", kind.base(namespace), dict(obj))
        except KubeError as exc:
            if kind.kind in OPTIONAL_KINDS and exc.status == 404:
                raise KubeError(404, f"the cluster does not serve {kind.api_version} "
                                f"{kind.kind} (is KServe installed?): {exc}") from exc  # fmt: skip
            raise
        return out or {}

    async def merge_patch(
        self, kind: str, namespace: str, name: str, patch: Mapping[str, Any], status: bool = False
    ) -> dict[str, Any]:
        path = f"{KINDS[kind].base(namespace)}/{name}" + ("/status" if status else "")
        out = await self._request("PATCH", path, dict(patch), "application/merge-patch+json")
        return out or {}

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        """True if it existed."""
        path = f"{KINDS[kind].base(namespace)}/{name}?propagationPolicy=Background"
        return await self._request("DELETE", path) is not None
