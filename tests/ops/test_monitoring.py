"""The Grafana dashboard and the alert rules name only series that something exports, and
have the structure Grafana and Prometheus expect."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.metrics import MetricWrapperBase

from feedserve.gateway.metrics import GatewayMetrics
from feedserve_operator.metrics import queries

MONITORING = Path(__file__).resolve().parents[2] / "ops" / "monitoring"
SERIES = re.compile(r"\b((?:feedserve|nv|redis)_[a-z_]+)\b")

TRITON = {
    # Triton's own metrics (https://github.com/triton-inference-server/server docs/metrics.md)
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
    "nv_gpu_utilization",
    "nv_gpu_memory_used_bytes",
}
REDIS_EXPORTER = {"redis_key_size", "redis_up", "redis_connected_clients"}


def gateway_series() -> set[str]:
    out = set()
    for metric in vars(GatewayMetrics()).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        name, kind = metric._name, metric._type
        if kind == "counter":
            out.add(f"{name}_total")
        elif kind == "histogram":
            out |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
        else:
            out.add(name)
    return out


KNOWN = gateway_series() | TRITON | REDIS_EXPORTER


def exprs_of_alerts() -> list[dict[str, Any]]:
    doc = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def exprs_of_dashboard() -> list[str]:
    dash = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def test_gateway_series_are_what_the_gateway_exports() -> None:
    expected = {"feedserve_request_seconds_bucket", "feedserve_requests_total",
                "feedserve_rejected_total", "feedserve_in_flight_requests"}  # fmt: skip
    assert expected <= gateway_series()


def test_alert_rules_are_well_formed_and_name_exported_series() -> None:
    rules = exprs_of_alerts()
    assert len(rules) >= 6
    names = set()
    for rule in rules:
        assert re.fullmatch(r"Feedserve[A-Za-z]+", rule["alert"])
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]
        assert re.fullmatch(r"\d+[smh]", rule["for"])
        assert rule["expr"].count("(") == rule["expr"].count(")")
        names.add(rule["alert"])
        unknown = set(SERIES.findall(rule["expr"])) - KNOWN
        assert not unknown, (rule["alert"], unknown)
    assert len(names) == len(rules)


def test_dashboard_is_well_formed_and_names_exported_series() -> None:
    dash = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    assert dash["uid"] and dash["panels"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for expr in exprs_of_dashboard():
        assert expr.count("(") == expr.count(")"), expr
        unknown = set(SERIES.findall(expr)) - KNOWN
        assert not unknown, (expr, unknown)
    covered = {family(n) for e in exprs_of_dashboard() for n in SERIES.findall(e)}
    # every signal the coupled autoscaler reads from these exporters is on the dashboard too
    for promql in queries("feed", "ns", "fs.featurizer").values():
        for series in SERIES.findall(promql):
            assert series in KNOWN and family(series) in covered, series


def family(series: str) -> str:
    for suffix in ("_bucket", "_count", "_sum"):
        series = series.removesuffix(suffix)
    return series
