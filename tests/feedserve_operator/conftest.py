"""A mock Kubernetes API server (kmock's stateful emulator) in a thread of its own, for the
operator tests: kopf runs in another thread (``kopf.testing.KopfRunner``), the test polls the
emulator's objects with a deadline.

The emulator stores objects as sent; like a real API server, this one also fills in
``metadata.uid``, ``generation`` (bumped on every spec change), ``resourceVersion`` and
``creationTimestamp``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import httpx
import kmock
import kopf
import pytest
from kopf.testing import KopfRunner

from feedserve.launcher import (
    ManagedProcess,
    free_port,
    http_ok,
    prepare_triton_backends,
    pytriton_dir,
    triton_env,
    wait_until,
)
from feedserve_operator.handlers import MetricsSource, Operator, OperatorSettings, register
from feedserve_operator.kube import KubeApi

T = TypeVar("T")

RESOURCES: dict[str, dict[str, Any]] = {
    "feedserve.io/v1alpha1/feedpipelines": {"kind": "FeedPipeline", "subresources": ["status"]},
    "feedserve.io/v1alpha1/feedmodels": {"kind": "FeedModel", "subresources": ["status"]},
    "apps/v1/deployments": {"kind": "Deployment", "subresources": ["status", "scale"]},
    "v1/services": {"kind": "Service"},
    "v1/configmaps": {"kind": "ConfigMap"},
    "v1/pods": {"kind": "Pod", "subresources": ["status"]},
    "v1/events": {"kind": "Event"},
    "v1/namespaces": {"kind": "Namespace", "namespaced": False},
    "policy/v1/poddisruptionbudgets": {"kind": "PodDisruptionBudget"},
    "autoscaling/v2/horizontalpodautoscalers": {"kind": "HorizontalPodAutoscaler"},
    "batch/v1/jobs": {"kind": "Job"},
    "batch/v1/cronjobs": {"kind": "CronJob"},
    "apiextensions.k8s.io/v1/customresourcedefinitions": {
        "kind": "CustomResourceDefinition",
        "namespaced": False,
    },
}
VERBS = ["list", "watch", "get", "patch", "create", "update", "delete"]


class Emulator(kmock.KubernetesEmulator):
    """kmock's emulator plus the metadata a real API server maintains."""

    _version = 0

    async def _handle(self, request: kmock.Request) -> Any:
        data = request.data if isinstance(request.data, dict) else None
        if request.resource is not None and data is not None:
            # every write gets a new resourceVersion (kopf tells its own patches from others'
            # changes by it); a spec change bumps the generation
            Emulator._version += 1
            meta = data.setdefault("metadata", {})
            if request.action == kmock.action.CREATE:
                if "generateName" in meta and not meta.get("name"):  # events, for one
                    meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("generation", 1)
                meta.setdefault(
                    "creationTimestamp",
                    datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat(),
                )
                meta["resourceVersion"] = str(Emulator._version)
            elif request.action == kmock.action.UPDATE and request.name is not None:
                key = (request.resource, request.namespace, request.name)
                meta["resourceVersion"] = str(Emulator._version)
                if "spec" in data and key in self.objects:
                    old = self.objects[key].get("metadata", {}).get("generation") or 0
                    meta["generation"] = int(old) + 1
        return await super()._handle(request)


class MockCluster:
    """The emulator served on a loopback port from a background event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.emulator = Emulator()
        self.url = ""

    def call(self, fn: Callable[[], Awaitable[T]], timeout_s: float = 10.0) -> T:
        fut: Future[T] = asyncio.run_coroutine_threadsafe(fn(), self.loop)  # type: ignore[arg-type]
        return fut.result(timeout_s)

    def start(self) -> None:
        self.thread.start()

        async def up() -> str:
            await self.emulator.__aenter__()
            self._server = kmock.Server(self.emulator)
            await self._server.__aenter__()
            for path, info in RESOURCES.items():
                self.emulator.resources[path] = {"namespaced": True, "verbs": VERBS, **info}  # type: ignore[assignment]
            return str(self.emulator.url)

        self.url = self.call(up)

    def stop(self) -> None:
        async def down() -> None:
            await self._server.__aexit__(None, None, None)
            await self.emulator.__aexit__(None, None, None)

        try:
            self.call(down)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)

    # --- objects -------------------------------------------------------------------------
    def get(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        async def read() -> dict[str, Any] | None:
            key = (kmock.resource(resource), namespace, name)
            if key not in self.emulator.objects:
                return None
            obj = self.emulator.objects[key]
            return None if obj.deleted else dict(obj.raw)

        return self.call(read)

    def names(self, resource: str, namespace: str) -> set[str]:
        async def read() -> set[str]:
            res = kmock.resource(resource)
            return {
                k[2]
                for k, obj in self.emulator.objects.items()
                if k[0] == res and k[1] == namespace and not obj.deleted
            }

        return self.call(read)

    def _path(self, resource: str, namespace: str, name: str = "") -> str:
        group_version, plural = resource.rsplit("/", 1)
        root = "/api" if "/" not in group_version else "/apis"
        return f"{root}/{group_version}/namespaces/{namespace}/{plural}" + (
            f"/{name}" if name else ""
        )

    def put(self, resource: str, obj: dict[str, Any]) -> None:
        """Create the object, or merge-patch it if it exists (as kubectl apply would)."""
        meta = obj["metadata"]
        with httpx.Client(base_url=self.url, timeout=10) as client:
            if self.get(resource, meta["namespace"], meta["name"]) is None:
                resp = client.post(self._path(resource, meta["namespace"]), json=obj)
            else:
                resp = client.patch(
                    self._path(resource, meta["namespace"], meta["name"]),
                    json={k: v for k, v in obj.items() if k in ("spec", "metadata")},
                    headers={"Content-Type": "application/merge-patch+json"},
                )
            resp.raise_for_status()

    def delete(self, resource: str, namespace: str, name: str) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            client.delete(self._path(resource, namespace, name)).raise_for_status()


@pytest.fixture()
def cluster() -> Iterator[MockCluster]:
    mock = MockCluster()
    mock.start()
    try:
        yield mock
    finally:
        mock.stop()


@pytest.fixture(scope="session")
def poll() -> Callable[..., Any]:
    """Poll a check until it returns something true (returned), failing at a deadline."""
    return wait_until


# --- a real tritonserver with three versions of a tiny model (FeedModel tests) -----------

MODEL_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.version = int(args["model_version"])

    def execute(self, requests):
        out = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            version = np.full(x.shape, self.version, dtype=np.int32)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("version", version)]))
        return out
"""
CONFIG_PBTXT = """name: "generative_ranker"
backend: "python"
max_batch_size: 8
dynamic_batching { max_queue_delay_microseconds: 100 }
instance_group [ { kind: KIND_CPU, count: 1 } ]
input [ { name: "x", data_type: TYPE_INT32, dims: [ 1 ] } ]
output [ { name: "version", data_type: TYPE_INT32, dims: [ 1 ] } ]
"""


@pytest.fixture()
def triton(tmp_path: Path) -> Iterator[str]:
    """A real tritonserver (explicit model control, as in a Triton pod or a KServe predictor
    pod) with versions 1-3 of a tiny ``generative_ranker`` that answers its own version."""
    repo = tmp_path / "repo" / "generative_ranker"
    for version in (1, 2, 3):
        (repo / str(version)).mkdir(parents=True)
        (repo / str(version) / "model.py").write_text(MODEL_PY)
    (repo / "config.pbtxt").write_text(CONFIG_PBTXT)
    backends = prepare_triton_backends(tmp_path / "runtime")
    http = free_port()
    cmd = [
        str(pytriton_dir() / "bin" / "tritonserver"),
        f"--model-repository={repo.parent}", f"--backend-directory={backends}",
        "--http-address=127.0.0.1", f"--http-port={http}", "--allow-grpc=false",
        "--allow-metrics=false", "--model-control-mode=explicit",
        "--load-model=generative_ranker", "--exit-timeout-secs=5",
    ]  # fmt: skip
    proc = ManagedProcess("tritonserver", cmd, triton_env(os.environ), tmp_path / "triton.log")
    proc.start()
    try:
        wait_until(http_ok(f"http://127.0.0.1:{http}/v2/health/ready"), 120, "triton", proc)
        yield f"127.0.0.1:{http}"
    finally:
        proc.stop()


# --- the operator under kopf, in-process, against the mock cluster -----------------------

RunOperator = Callable[..., contextlib.AbstractContextManager[Operator]]


@contextlib.contextmanager
def running(
    cluster: Any, namespace: str, metrics: MetricsSource | None = None
) -> Iterator[Operator]:
    """kopf with feedserve's handlers in a fresh registry, watching ``namespace`` of the mock
    cluster."""
    registry = kopf.OperatorRegistry()
    settings = OperatorSettings(
        resync_s=0.5, retry_s=0.2, autoscale_tick_s=0.2, model_resync_s=0.5, triton_timeout_s=30
    )
    op = Operator(KubeApi(cluster.url, verify=False), settings, metrics=metrics)
    register(registry, op)

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=cluster.url, insecure=True)

    kopf_settings = kopf.OperatorSettings()
    kopf_settings.scanning.disabled = True
    kopf_settings.watching.server_timeout = 10
    args = ["run", "--standalone", "--namespace", namespace, "--verbose"]
    with KopfRunner(args, registry=registry, settings=kopf_settings, timeout=60) as runner:
        yield op
    assert runner.exception is None, runner.output
    assert runner.exit_code == 0, runner.output


@pytest.fixture()
def run_operator() -> RunOperator:
    """``with run_operator(cluster, namespace[, metrics=...]) as op:``: the operator runs."""
    return running
