"""Autoscaling policies for a FeedPipeline: pure functions from observations to replica counts.

A FeedPipeline has two pools that one request passes through in turn: the CPU featurizer pool
(Celery workers fed from a Redis queue) and the GPU inference pool (Triton pods). Every
``interval_s`` the operator reads one :class:`Observation` (Prometheus: gateway p99, request
rate, Redis queue depth, featurizer CPU, Triton queue time and measured per-pod throughput; the
Kubernetes API: current and ready replicas) and asks a policy for a :class:`Decision`.

Two policies, both ``(obs, state, config) -> Decision`` with ``state`` (a :class:`PolicyState`)
updated in place; no I/O, no clock, so the simulator (``simulator.py``) and the operator run
exactly the same code:

``hpa``
    The baseline: what two Kubernetes ``HorizontalPodAutoscaler`` (autoscaling/v2) objects do,
    one per pool, each blind to the other. For this policy the operator does not scale anything
    itself: it emits one HPA for the featurizer Deployment (resource metric ``cpu``,
    ``averageUtilization`` = ``featurizer_target_cpu``) and one for the Triton Deployment (Pods
    metric ``triton_queue_ms``, ``averageValue`` = ``triton_target_queue_ms``, served by a
    Prometheus adapter), with the default ``behavior``. :func:`hpa` reproduces the controller's
    algorithm (``pkg/controller/podautoscaler``) so that the baseline can be simulated.

``coupled``
    Sizes both pools together from the one latency objective: the inference pool from demand
    (request rate, trend-extrapolated over the GPU pods' start-up time, plus the queued backlog
    to drain) over the measured per-pod Triton throughput at a target utilisation that keeps
    queueing within the objective, with a p99/queue-time correction; the featurizer pool so that
    its capacity is never below what the inference pool can consume and so that the Redis
    backlog drains within ``backlog_drain_s``. Scale-up is immediate while p99 is over the
    objective (otherwise at most once per ``scale_up_cooldown_s``); scale-down takes the largest
    recommendation of the last ``scale_down_stabilization_s``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

HPA_TOLERANCE = 0.1
"""``--horizontal-pod-autoscaler-tolerance``: ratios within 1 ± 0.1 leave the replicas alone."""
HPA_SCALE_UP_PERCENT = 100
"""Default ``behavior.scaleUp``: at most +100 % or +4 pods (whichever is more) per period."""
HPA_SCALE_UP_PODS = 4
HPA_SCALE_DOWN_PERCENT = 100
"""Default ``behavior.scaleDown``: at most -100 % per period (after the stabilisation window)."""


@dataclass(frozen=True)
class PoolBounds:
    min_replicas: int
    max_replicas: int

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError(f"need 0 <= min_replicas <= max_replicas, got {self}")

    def clamp(self, n: int) -> int:
        return max(self.min_replicas, min(self.max_replicas, n))


@dataclass(frozen=True)
class PolicyConfig:
    """The FeedPipeline's ``spec.autoscaling`` (shared by both policies where it applies)."""

    latency_objective_ms: float = 300.0
    """The p99 end-to-end (gateway) latency objective."""
    interval_s: float = 15.0
    """How often the policy runs (the HPA controller's sync period)."""
    scale_up_cooldown_s: float = 30.0
    scale_down_stabilization_s: float = 300.0
    featurizer_target_cpu: float = 0.7
    """hpa: the featurizer HPA's ``averageUtilization`` (0..1)."""
    triton_target_queue_ms: float = 50.0
    """hpa: the Triton HPA's ``averageValue`` of the per-pod queue time."""
    hpa_triton_metric: Literal["queue_ms", "utilization"] = "queue_ms"
    """hpa: what the Triton HPA scales on: queue time (the baseline) or, as a sensitivity
    check, the pods' busy fraction against ``triton_target_utilization``."""
    triton_target_utilization: float = 0.7
    featurizer: PoolBounds = field(default_factory=lambda: PoolBounds(2, 64))
    inference: PoolBounds = field(default_factory=lambda: PoolBounds(1, 32))
    inference_target_utilization: float = 0.8
    """coupled: Triton utilisation to size for (M/M/c with 8 slots per pod: p99 queueing stays
    under ~130 ms up to 0.85, and grows without bound towards 1)."""
    featurizer_target_utilization: float = 0.8
    """coupled: featurizer utilisation to size for from demand alone."""
    backlog_drain_s: float = 30.0
    """coupled: queued requests are drained within about this long."""
    inference_startup_s: float = 90.0
    """coupled: how long a new Triton pod takes to become ready (the operator measures it from
    pod conditions); demand is extrapolated this far ahead while it is rising."""
    trend_window_s: float = 60.0
    """coupled: the request-rate trend is the slope over about this long."""

    def __post_init__(self) -> None:
        if self.interval_s <= 0 or self.latency_objective_ms <= 0:
            raise ValueError("interval_s and latency_objective_ms must be > 0")
        for name in (
            "featurizer_target_cpu",
            "inference_target_utilization",
            "featurizer_target_utilization",
            "triton_target_utilization",
        ):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1]")


@dataclass(frozen=True)
class Observation:
    """What the operator sees at ``time_s`` (metrics averaged over a recent window)."""

    time_s: float
    p99_ms: float
    """Gateway end-to-end p99 latency."""
    request_rate: float
    """Requests per second entering the gateway."""
    featurizer_queue_depth: float
    """Tasks waiting in the Redis (Celery) queue."""
    featurizer_cpu: float
    """Mean CPU utilisation of the ready featurizer pods, 0..1."""
    triton_queue_ms: float
    """Mean time a request waits in a Triton pod's queue."""
    triton_throughput_per_pod: float
    """Measured capacity of one Triton pod (requests/s; from its compute-time metrics)."""
    featurizer_throughput_per_pod: float
    """Measured capacity of one featurizer pod (requests/s; from Celery task runtimes)."""
    featurizer_replicas: int
    featurizer_ready: int
    inference_replicas: int
    inference_ready: int
    triton_utilization: float = 0.0
    """Mean busy fraction of the ready Triton pods, 0..1 (for ``hpa_triton_metric`` =
    ``"utilization"`` only)."""


@dataclass(frozen=True)
class Decision:
    featurizers: int
    inference: int
    reason: str


@dataclass
class PolicyState:
    """What a policy remembers between intervals."""

    featurizer_recommendations: deque[tuple[float, int]] = field(default_factory=deque)
    inference_recommendations: deque[tuple[float, int]] = field(default_factory=deque)
    last_featurizer_scale_up_s: float = -math.inf
    last_inference_scale_up_s: float = -math.inf
    request_rates: deque[tuple[float, float]] = field(default_factory=deque)


Policy = Callable[[Observation, PolicyState, PolicyConfig], Decision]


def _remember(history: deque[tuple[float, int]], now: float, rec: int, window_s: float) -> int:
    """Record ``rec`` and return the largest recommendation of the last ``window_s``."""
    history.append((now, rec))
    while history and history[0][0] < now - window_s:
        history.popleft()
    return max(r for _, r in history)


# --------------------------------------------------------------------------- hpa


def hpa_replicas(metric: float, target: float, ready: int, current: int) -> int:
    """The HPA controller's raw recommendation for one pool (before stabilisation and limits).

    ``desired = ceil(ready * metric / target)``, unchanged when ``metric / target`` is within
    the 10 % tolerance. As the controller does, pods that are not ready yet (and report no
    metric) count as using nothing when scaling up: the ratio is recomputed over all
    ``current`` pods and the scale-up is dropped if it then falls within tolerance.
    """
    if ready <= 0 or target <= 0:
        return current
    ratio = metric / target
    if abs(ratio - 1.0) <= HPA_TOLERANCE:
        return current
    desired = math.ceil(ready * ratio - 1e-9)
    unready = max(0, current - ready)
    if ratio > 1.0 and unready:
        ratio_all = metric * ready / (target * (ready + unready))
        if ratio_all <= 1.0 + HPA_TOLERANCE:
            return current
        desired = math.ceil(ratio_all * (ready + unready) - 1e-9)
    return desired


def _hpa_pool(
    metric: float,
    target: float,
    ready: int,
    current: int,
    bounds: PoolBounds,
    history: deque[tuple[float, int]],
    now: float,
    config: PolicyConfig,
) -> int:
    rec = bounds.clamp(hpa_replicas(metric, target, ready, current))
    # scale-down stabilisation: the highest recommendation of the window (scale-up: none)
    stabilized = _remember(history, now, rec, config.scale_down_stabilization_s)
    desired = rec if rec >= current else min(current, stabilized)
    # default behavior rate limits per sync period
    up_limit = max(current * (100 + HPA_SCALE_UP_PERCENT) // 100, current + HPA_SCALE_UP_PODS)
    down_limit = math.ceil(current * (100 - HPA_SCALE_DOWN_PERCENT) / 100)
    desired = max(down_limit, min(up_limit, desired))
    return bounds.clamp(desired)


def hpa(obs: Observation, state: PolicyState, config: PolicyConfig) -> Decision:
    """Two independent Kubernetes HPAs: featurizers on CPU, Triton on queue time."""
    featurizers = _hpa_pool(
        obs.featurizer_cpu,
        config.featurizer_target_cpu,
        obs.featurizer_ready,
        obs.featurizer_replicas,
        config.featurizer,
        state.featurizer_recommendations,
        obs.time_s,
        config,
    )
    by_queue = config.hpa_triton_metric == "queue_ms"
    inference = _hpa_pool(
        obs.triton_queue_ms if by_queue else obs.triton_utilization,
        config.triton_target_queue_ms if by_queue else config.triton_target_utilization,
        obs.inference_ready,
        obs.inference_replicas,
        config.inference,
        state.inference_recommendations,
        obs.time_s,
        config,
    )
    triton = (
        f"queue {obs.triton_queue_ms:.0f}/{config.triton_target_queue_ms:.0f} ms"
        if by_queue
        else f"gpu {obs.triton_utilization:.2f}/{config.triton_target_utilization:.2f}"
    )
    reason = f"hpa: cpu {obs.featurizer_cpu:.2f}/{config.featurizer_target_cpu:.2f}, {triton}"
    return Decision(featurizers, inference, reason)


# --------------------------------------------------------------------------- coupled


def forecast_rate(obs: Observation, state: PolicyState, config: PolicyConfig) -> float:
    """The request rate ``inference_startup_s`` ahead: the current rate plus the rising part of
    its trend over the last ``trend_window_s`` (falling demand is left to stabilisation)."""
    rates = state.request_rates
    rates.append((obs.time_s, obs.request_rate))
    while len(rates) > 1 and rates[0][0] < obs.time_s - config.trend_window_s:
        rates.popleft()
    t0, r0 = rates[0]
    if obs.time_s - t0 <= 0:
        return obs.request_rate
    slope = (obs.request_rate - r0) / (obs.time_s - t0)
    return obs.request_rate + max(0.0, slope) * (config.inference_startup_s + config.interval_s)


def coupled_targets(obs: Observation, state: PolicyState, config: PolicyConfig) -> tuple[int, int]:
    """Unbounded-by-cooldown replica recommendations ``(featurizers, inference)``."""
    mu_t = max(obs.triton_throughput_per_pod, 1e-9)
    mu_f = max(obs.featurizer_throughput_per_pod, 1e-9)
    demand = forecast_rate(obs, state, config)
    # Little's law: requests queued in Triton ≈ queue time × the rate the ready pods serve
    # (new GPU pods serve nothing before they start, so that backlog is spread over as long)
    triton_backlog = obs.triton_queue_ms / 1000.0 * mu_t * obs.inference_ready
    drain = (obs.featurizer_queue_depth + triton_backlog) / max(
        config.backlog_drain_s, config.inference_startup_s
    )
    inference = math.ceil((demand + drain) / (config.inference_target_utilization * mu_t))
    over = obs.p99_ms / config.latency_objective_ms
    queue_budget_ms = config.latency_objective_ms / 3.0
    settled = obs.inference_ready >= obs.inference_replicas
    if over > 1.0 and obs.triton_queue_ms > queue_budget_ms and settled:
        # every pod is up and Triton's queue is still where the time goes: the throughput model
        # is off (say, heavier requests), grow the pool in proportion to the overshoot
        inference = max(inference, math.ceil(obs.inference_ready * min(over, 2.0)))
    inference = config.inference.clamp(inference)
    # featurizers: drain the Redis backlog and never starve the inference pool
    from_demand = (demand + obs.featurizer_queue_depth / config.backlog_drain_s) / (
        config.featurizer_target_utilization * mu_f
    )
    from_inference = inference * mu_t / mu_f
    featurizers = config.featurizer.clamp(math.ceil(max(from_demand, from_inference) - 1e-9))
    return featurizers, inference


def _coupled_pool(
    rec: int,
    current: int,
    history: deque[tuple[float, int]],
    last_up_s: float,
    over_objective: bool,
    now: float,
    config: PolicyConfig,
) -> tuple[int, bool]:
    """Apply cooldown (up) and stabilisation (down); returns ``(replicas, scaled_up)``."""
    stabilized = _remember(history, now, rec, config.scale_down_stabilization_s)
    if rec > current:
        if over_objective or now - last_up_s >= config.scale_up_cooldown_s:
            return rec, True
        return current, False
    return min(current, stabilized), False


def coupled(obs: Observation, state: PolicyState, config: PolicyConfig) -> Decision:
    """Both pools sized from the latency objective, demand and measured per-pod throughput."""
    feat_rec, inf_rec = coupled_targets(obs, state, config)
    over = obs.p99_ms > config.latency_objective_ms
    now = obs.time_s
    inference, inf_up = _coupled_pool(
        inf_rec,
        obs.inference_replicas,
        state.inference_recommendations,
        state.last_inference_scale_up_s,
        over,
        now,
        config,
    )
    featurizers, feat_up = _coupled_pool(
        feat_rec,
        obs.featurizer_replicas,
        state.featurizer_recommendations,
        state.last_featurizer_scale_up_s,
        over,
        now,
        config,
    )
    if inf_up:
        state.last_inference_scale_up_s = now
    if feat_up:
        state.last_featurizer_scale_up_s = now
    reason = (
        f"coupled: p99 {obs.p99_ms:.0f}/{config.latency_objective_ms:.0f} ms, "
        f"{obs.request_rate:.0f} rps, redis {obs.featurizer_queue_depth:.0f} → "
        f"recommend {feat_rec} featurizers / {inf_rec} inference"
    )
    return Decision(featurizers, inference, reason)


POLICIES: dict[str, Policy] = {"hpa": hpa, "coupled": coupled}
