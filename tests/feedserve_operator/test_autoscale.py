"""The autoscaling policies as pure functions: the HPA algorithm and the coupled policy."""

from __future__ import annotations

import dataclasses
import math

import pytest

from feedserve_operator.autoscale import (
    Observation,
    PolicyConfig,
    PolicyState,
    PoolBounds,
    coupled,
    hpa,
    hpa_replicas,
)

CONFIG = PolicyConfig(featurizer=PoolBounds(2, 64), inference=PoolBounds(1, 32))


def obs(**kw: float) -> Observation:
    """A calm pipeline: 800 rps, 10 featurizers and 6 Triton pods, all ready, p99 150 ms."""
    base: dict[str, float] = {
        "time_s": 1000.0,
        "p99_ms": 150.0,
        "request_rate": 800.0,
        "featurizer_queue_depth": 0.0,
        "featurizer_cpu": 0.7,
        "triton_queue_ms": 50.0,
        "triton_throughput_per_pod": 200.0,
        "featurizer_throughput_per_pod": 133.0,
        "featurizer_replicas": 10,
        "featurizer_ready": 10,
        "inference_replicas": 6,
        "inference_ready": 6,
    }
    base.update(kw)
    ints = {k for k in base if k.endswith(("_replicas", "_ready"))}
    return Observation(**{k: int(v) if k in ints else v for k, v in base.items()})  # type: ignore[arg-type]


# --------------------------------------------------------------------------- hpa


def test_hpa_formula_is_ceil_of_current_times_ratio() -> None:
    assert hpa_replicas(metric=0.9, target=0.7, ready=10, current=10) == math.ceil(10 * 0.9 / 0.7)
    assert hpa_replicas(metric=100.0, target=50.0, ready=3, current=3) == 6
    assert hpa_replicas(metric=0.35, target=0.7, ready=10, current=10) == 5


def test_hpa_tolerance_leaves_replicas_alone_within_ten_percent() -> None:
    assert hpa_replicas(metric=0.76, target=0.7, ready=10, current=10) == 10  # ratio 1.086
    assert hpa_replicas(metric=0.64, target=0.7, ready=10, current=10) == 10  # ratio 0.914
    assert hpa_replicas(metric=0.78, target=0.7, ready=10, current=10) == 12  # ratio 1.114


def test_hpa_counts_unready_pods_as_idle_when_scaling_up() -> None:
    # 4 ready at 2x the target, 4 more starting: over all 8 the ratio is 1.0 -> no change
    assert hpa_replicas(metric=100.0, target=50.0, ready=4, current=8) == 8
    # 4 ready at 4x, 4 starting: ratio over all 8 is 2 -> 16
    assert hpa_replicas(metric=200.0, target=50.0, ready=4, current=8) == 16


def test_hpa_pools_are_independent_and_on_their_own_metrics() -> None:
    d = hpa(obs(featurizer_cpu=1.4, triton_queue_ms=50.0), PolicyState(), CONFIG)
    assert (d.featurizers, d.inference) == (20, 6)
    d = hpa(obs(featurizer_cpu=0.7, triton_queue_ms=150.0), PolicyState(), CONFIG)
    assert (d.featurizers, d.inference) == (10, 12)  # +100 % per period at most
    assert "hpa" in d.reason


def test_hpa_scale_up_is_rate_limited_like_the_default_behavior() -> None:
    d = hpa(
        obs(triton_queue_ms=5000.0, inference_replicas=3, inference_ready=3), PolicyState(), CONFIG
    )
    assert d.inference == 7  # max(2 x 3, 3 + 4)
    d = hpa(obs(triton_queue_ms=5000.0), PolicyState(), CONFIG)
    assert d.inference == 12  # 2 x 6


def test_hpa_scale_down_waits_for_the_stabilisation_window() -> None:
    state = PolicyState()
    cfg = dataclasses.replace(CONFIG, scale_down_stabilization_s=300.0)
    assert hpa(obs(time_s=0.0), state, cfg).inference == 6
    # load falls: the recommendation is 3, but 6 was recommended within the window
    for t in (15.0, 150.0, 300.0):
        assert hpa(obs(time_s=t, triton_queue_ms=25.0), state, cfg).inference == 6
    assert hpa(obs(time_s=315.0, triton_queue_ms=25.0), state, cfg).inference == 3


def test_hpa_respects_bounds() -> None:
    cfg = dataclasses.replace(CONFIG, inference=PoolBounds(2, 8), featurizer=PoolBounds(4, 12))
    d = hpa(obs(triton_queue_ms=1000.0, featurizer_cpu=1.0), PolicyState(), cfg)
    assert (d.featurizers, d.inference) == (12, 8)
    d = hpa(obs(triton_queue_ms=0.0, featurizer_cpu=0.0), PolicyState(), cfg)
    assert (d.featurizers, d.inference) == (4, 2)


def test_hpa_can_scale_triton_on_gpu_utilisation() -> None:
    cfg = dataclasses.replace(CONFIG, hpa_triton_metric="utilization")
    d = hpa(obs(triton_queue_ms=0.0, triton_utilization=0.9), PolicyState(), cfg)
    assert d.inference == math.ceil(6 * 0.9 / 0.7)


def test_bounds_and_config_are_validated() -> None:
    with pytest.raises(ValueError):
        PoolBounds(5, 2)
    with pytest.raises(ValueError):
        PolicyConfig(featurizer_target_cpu=1.5)


# --------------------------------------------------------------------------- coupled


def test_coupled_sizes_inference_from_demand_and_measured_throughput() -> None:
    d = coupled(obs(request_rate=1600.0, triton_queue_ms=0.0), PolicyState(), CONFIG)
    want = math.ceil(1600.0 / (CONFIG.inference_target_utilization * 200.0))
    assert d.inference == want
    assert "coupled" in d.reason


def test_coupled_featurizer_capacity_covers_what_inference_consumes() -> None:
    for rate in (100.0, 800.0, 2500.0, 5000.0):
        o = obs(request_rate=rate, featurizer_replicas=2, featurizer_ready=2)
        d = coupled(o, PolicyState(), CONFIG)
        if d.featurizers < CONFIG.featurizer.max_replicas:
            assert d.featurizers * 133.0 >= d.inference * 200.0


def test_coupled_drains_the_redis_backlog() -> None:
    calm = coupled(obs(), PolicyState(), CONFIG)
    backlog = coupled(obs(featurizer_queue_depth=30_000.0), PolicyState(), CONFIG)
    assert backlog.featurizers > calm.featurizers
    drain = 30_000.0 / CONFIG.backlog_drain_s
    util = CONFIG.featurizer_target_utilization
    assert backlog.featurizers * 133.0 * util >= 800.0 + drain - 1e-6


def test_coupled_scales_up_without_cooldown_when_over_objective() -> None:
    state = PolicyState()
    assert coupled(obs(time_s=0.0, request_rate=1200.0), state, CONFIG).inference == 8
    # 15 s later (inside the 30 s cooldown), demand up again
    over = obs(time_s=15.0, request_rate=2400.0, p99_ms=900.0, inference_replicas=8)
    assert coupled(over, state, CONFIG).inference >= 15


def test_coupled_scale_up_honours_cooldown_when_within_objective() -> None:
    state = PolicyState()
    first = coupled(obs(time_s=0.0, request_rate=1200.0), state, CONFIG)
    calm = obs(time_s=15.0, request_rate=1600.0, inference_replicas=first.inference)
    assert coupled(calm, state, CONFIG).inference == first.inference
    later = obs(time_s=30.0, request_rate=1600.0, inference_replicas=first.inference)
    assert coupled(later, state, CONFIG).inference > first.inference


def test_coupled_scale_down_is_stabilised() -> None:
    state = PolicyState()
    cfg = dataclasses.replace(CONFIG, scale_down_stabilization_s=300.0)
    high = coupled(obs(time_s=0.0, request_rate=2000.0, inference_replicas=13), state, cfg)
    assert high.inference == 13
    for t in (60.0, 200.0, 300.0):
        low = obs(time_s=t, request_rate=400.0, inference_replicas=13, featurizer_replicas=20)
        assert coupled(low, state, cfg).inference == 13
    low = obs(time_s=330.0, request_rate=400.0, inference_replicas=13, featurizer_replicas=20)
    d = coupled(low, state, cfg)
    assert d.inference == math.ceil(400.0 / (cfg.inference_target_utilization * 200.0))
    assert d.featurizers < 20


def test_coupled_looks_ahead_on_a_rising_trend() -> None:
    state = PolicyState()
    for t, rate in ((0.0, 1000.0), (30.0, 1100.0), (60.0, 1200.0)):
        d = coupled(obs(time_s=t, request_rate=rate), state, CONFIG)
    flat = coupled(obs(request_rate=1200.0), PolicyState(), CONFIG)
    assert d.inference > flat.inference


def test_coupled_corrects_on_p99_when_triton_queue_is_the_cause() -> None:
    base = coupled(obs(), PolicyState(), CONFIG)
    slow = coupled(obs(p99_ms=600.0, triton_queue_ms=400.0), PolicyState(), CONFIG)
    assert slow.inference >= 2 * 6 > base.inference


def test_coupled_respects_bounds() -> None:
    cfg = dataclasses.replace(CONFIG, inference=PoolBounds(2, 10), featurizer=PoolBounds(5, 20))
    d = coupled(obs(request_rate=50_000.0), PolicyState(), cfg)
    assert (d.featurizers, d.inference) == (20, 10)
    idle = obs(time_s=0.0, request_rate=0.0, featurizer_replicas=5, inference_replicas=2)
    d = coupled(idle, PolicyState(), cfg)
    assert (d.featurizers, d.inference) == (5, 2)
