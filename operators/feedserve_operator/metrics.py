"""What the ``coupled`` policy observes, read from Prometheus (the one module that talks to
it): PromQL per signal (``queries``), instant queries over HTTP (``Prometheus``), and a pure
function that turns the answers plus the live Deployments into an ``Observation``.

Signals and where they come from (scraped by the chart's ServiceMonitors):

- gateway p99 latency and request rate: ``feedserve_request_seconds`` (the gateway);
- featurizer queue depth: the Celery queue's length in Redis (``redis_key_size`` of the
  standard redis_exporter with ``--check-single-keys``);
- featurizer CPU: ``container_cpu_usage_seconds_total`` (cAdvisor), divided by the pods' CPU
  request;
- featurizer throughput per pod: concurrency / mean ``featurize`` stage time (the gateway);
- Triton queue time, throughput and utilisation: Triton's ``nv_inference_*`` counters.

A signal that is missing (no samples yet) makes the observation ``None``: the policy then
leaves both pools alone rather than acting on half a picture.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from feedserve_operator.autoscale import Observation
from feedserve_operator.reconcile import pool_status
from feedserve_operator.spec import FeedPipelineSpec

WINDOW = "1m"
REQUIRED = ("p99_ms", "request_rate", "triton_rps", "triton_busy_s")


def _cpu_cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def queries(name: str, namespace: str, queue: str) -> dict[str, str]:
    """PromQL per signal for pipeline ``name`` (pods are named ``<name>-<pool>-…``)."""

    def pods(pool: str) -> str:
        return f'namespace="{namespace}",pod=~"{name}-{pool}-.*"'

    gw, fz, tr = pods("gateway"), pods("featurizer"), pods("inference")
    feed = f'{gw},route="/v1/feed"'
    featurize = f'{gw},stage="featurize"'

    def rate(metric: str, where: str) -> str:
        return f"sum(rate({metric}{{{where}}}[{WINDOW}]))"

    return {
        "p99_ms": "1000 * histogram_quantile(0.99, sum by (le) "
        f"(rate(feedserve_request_seconds_bucket{{{feed}}}[{WINDOW}])))",
        "request_rate": rate("feedserve_request_seconds_count", feed),
        "featurize_mean_s": rate("feedserve_stage_seconds_sum", featurize)
        + " / "
        + rate("feedserve_stage_seconds_count", featurize),
        "featurizer_queue_depth": f'sum(redis_key_size{{namespace="{namespace}",key="{queue}"}})',
        "featurizer_cpu_cores": rate(
            "container_cpu_usage_seconds_total", f'{fz},container="featurizer"'
        ),
        "triton_queue_us": rate("nv_inference_queue_duration_us", tr),
        "triton_rps": rate("nv_inference_request_success", tr),
        "triton_busy_s": rate("nv_inference_compute_infer_duration_us", tr) + " / 1e6",
    }


def observation(
    values: Mapping[str, float | None],
    spec: FeedPipelineSpec,
    deployments: Sequence[Mapping[str, Any]],
    now_s: float,
) -> Observation | None:
    """The policy's input from query answers and the live Deployments; ``None`` when a
    required signal has no samples yet."""
    if any(values.get(k) is None for k in REQUIRED):
        return None
    pools = pool_status(deployments)
    feat_replicas, feat_ready = pools["featurizer"].desired, pools["featurizer"].ready
    inf_replicas, inf_ready = pools["inference"].desired, pools["inference"].ready

    def value(key: str) -> float:
        v = values.get(key)
        return float(v) if v is not None and v == v else 0.0  # NaN (0/0) counts as 0

    triton_rps, busy_s = value("triton_rps"), value("triton_busy_s")
    # one pod's capacity: requests it completes per busy second (batching included)
    per_pod = triton_rps / busy_s if busy_s > 0 else 0.0
    mean_featurize = value("featurize_mean_s")
    featurizer_per_pod = spec.featurizers.concurrency / mean_featurize if mean_featurize else 0.0
    cpu_request = _cpu_cores(spec.featurizers.resources.requests.cpu)
    cpu = value("featurizer_cpu_cores") / (cpu_request * feat_ready) if feat_ready else 0.0
    return Observation(
        time_s=now_s,
        p99_ms=value("p99_ms"),
        request_rate=value("request_rate"),
        featurizer_queue_depth=value("featurizer_queue_depth"),
        featurizer_cpu=min(cpu, 1.0),
        triton_queue_ms=value("triton_queue_us") / triton_rps / 1000 if triton_rps else 0.0,
        triton_throughput_per_pod=per_pod,
        featurizer_throughput_per_pod=featurizer_per_pod,
        featurizer_replicas=feat_replicas,
        featurizer_ready=feat_ready,
        inference_replicas=inf_replicas,
        inference_ready=inf_ready,
        triton_utilization=min(busy_s / inf_ready, 1.0) if inf_ready else 0.0,
    )


class Prometheus:
    """Instant queries against the Prometheus HTTP API."""

    def __init__(
        self, url: str, timeout_s: float = 5.0, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self._client = httpx.AsyncClient(
            base_url=url.rstrip("/"), timeout=timeout_s, transport=transport
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def query(self, promql: str) -> float | None:
        """The query's scalar answer (the first sample), ``None`` without samples; raises
        ``httpx.HTTPError`` when Prometheus is unreachable or rejects the query."""
        resp = await self._client.get("/api/v1/query", params={"query": promql})
        resp.raise_for_status()
        data = resp.json().get("data") or {}
        result = data.get("result")
        if data.get("resultType") == "scalar" and result:
            return float(result[1])
        if not result:
            return None
        return float(result[0]["value"][1])

    async def values(self, promql: Mapping[str, str]) -> dict[str, float | None]:
        return {key: await self.query(q) for key, q in promql.items()}
