"""The coupled policy's signals: PromQL per signal, Prometheus answers → Observation."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from feedserve_operator import metrics
from feedserve_operator.reconcile import COMPONENT_LABEL
from feedserve_operator.spec import FeedPipelineSpec

SPEC = FeedPipelineSpec.model_validate(
    {"featurizers": {"concurrency": 4, "resources": {"requests": {"cpu": "500m"}}}}
)


def dep(pool: str, replicas: int, ready: int) -> dict[str, Any]:
    return {
        "metadata": {"labels": {COMPONENT_LABEL: pool}},
        "spec": {"replicas": replicas},
        "status": {"readyReplicas": ready},
    }


def test_queries_select_the_pipelines_pods() -> None:
    q = metrics.queries("feed", "prod", "fs.featurizer")
    assert set(metrics.REQUIRED) <= set(q)
    assert 'pod=~"feed-gateway-.*"' in q["p99_ms"] and 'route="/v1/feed"' in q["p99_ms"]
    assert 'pod=~"feed-inference-.*"' in q["triton_rps"] and 'namespace="prod"' in q["triton_rps"]
    assert 'key="fs.featurizer"' in q["featurizer_queue_depth"]
    assert q["p99_ms"].count("(") == q["p99_ms"].count(")")


def test_observation_from_answers() -> None:
    values = {
        "p99_ms": 420.0,
        "request_rate": 100.0,
        "featurize_mean_s": 0.02,
        "featurizer_queue_depth": 12.0,
        "featurizer_cpu_cores": 1.5,
        "triton_queue_us": 100.0 * 5000,  # 5 ms per request at 100 rps
        "triton_rps": 100.0,
        "triton_busy_s": 0.5,
    }
    deps = [dep("featurizer", 4, 3), dep("inference", 2, 2), dep("gateway", 2, 2)]
    obs = metrics.observation(values, SPEC, deps, now_s=7.0)
    assert obs is not None
    assert obs.time_s == 7.0 and obs.p99_ms == 420.0 and obs.request_rate == 100.0
    assert obs.featurizer_queue_depth == 12.0
    assert obs.featurizer_cpu == pytest.approx(1.5 / (0.5 * 3))  # cores / (request × ready)
    assert obs.triton_queue_ms == pytest.approx(5.0)
    assert obs.triton_throughput_per_pod == pytest.approx(200.0)  # 100 rps per 0.5 busy s
    assert obs.featurizer_throughput_per_pod == pytest.approx(4 / 0.02)
    assert (obs.featurizer_replicas, obs.featurizer_ready) == (4, 3)
    assert (obs.inference_replicas, obs.inference_ready) == (2, 2)
    assert obs.triton_utilization == pytest.approx(0.25)


def test_missing_signal_means_no_observation_and_nan_counts_as_zero() -> None:
    values: dict[str, float | None] = {k: 1.0 for k in metrics.REQUIRED}
    values["p99_ms"] = None
    assert metrics.observation(values, SPEC, [], 0.0) is None
    values["p99_ms"] = float("nan")  # histogram_quantile over no requests
    obs = metrics.observation(values, SPEC, [], 0.0)
    assert obs is not None and obs.p99_ms == 0.0 and obs.featurizer_cpu == 0.0


def test_prometheus_client_reads_vectors_scalars_and_empty_answers() -> None:
    answers = {
        "up": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "3.5"]}]},
        "scalar(1)": {"resultType": "scalar", "result": [1, "1"]},
        "none": {"resultType": "vector", "result": []},
    }

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/query"
        q = request.url.params["query"]
        if q == "bad(":
            return httpx.Response(400, json={"status": "error", "error": "parse error"})
        return httpx.Response(200, json={"status": "success", "data": answers[q]})

    async def run() -> dict[str, float | None]:
        prom = metrics.Prometheus("http://prom:9090/", transport=httpx.MockTransport(handler))
        try:
            out = await prom.values({"a": "up", "b": "scalar(1)", "c": "none"})
            with pytest.raises(httpx.HTTPStatusError):
                await prom.query("bad(")
            return out
        finally:
            await prom.close()

    assert asyncio.run(run()) == {"a": 3.5, "b": 1.0, "c": None}
