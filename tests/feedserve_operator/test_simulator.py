"""The two-pool simulator: determinism, steady state, start-up delay, replica-hours, traces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from feedserve_operator.autoscale import (
    Decision,
    Observation,
    Policy,
    PolicyConfig,
    PolicyState,
    coupled,
    hpa,
)
from feedserve_operator.simulator import (
    SimConfig,
    TraceError,
    erlang_c,
    load_trace,
    simulate,
    trace_names,
)

SIM = SimConfig(samples_per_s=50)


def fixed(featurizers: int, inference: int) -> Policy:
    """A policy that always asks for the same replicas."""

    def policy(obs: Observation, state: PolicyState, config: PolicyConfig) -> Decision:
        return Decision(featurizers, inference, "fixed")

    return policy


def test_same_seed_same_result_other_seed_other_noise() -> None:
    rps = load_trace("flash_spike")[2300:2900]
    a = simulate(rps, coupled, sim=SIM, seed=3)
    b = simulate(rps, coupled, sim=SIM, seed=3)
    c = simulate(rps, coupled, sim=SIM, seed=4)
    assert a.metrics() == b.metrics()
    assert np.array_equal(a.series["p99_ms"], b.series["p99_ms"])
    assert not np.array_equal(a.series["p99_ms"], c.series["p99_ms"])


def test_constant_low_load_with_enough_replicas_never_violates() -> None:
    rps = np.full(600, 300.0)
    result = simulate(rps, fixed(6, 4), sim=SIM, seed=0, initial=(6, 4))
    assert result.slo_violation_s == 0
    assert 60.0 < result.p99_ms < 300.0
    assert result.shed_requests == 0


def test_policies_hold_a_constant_load_within_objective() -> None:
    rps = np.full(900, 1000.0)
    for policy in (hpa, coupled):
        result = simulate(rps, policy, sim=SIM, seed=1)
        assert result.series["inference"][-1] >= 5
        if policy is coupled:
            assert result.slo_violation_s == 0


def test_too_few_replicas_violate_and_shed() -> None:
    rps = np.full(300, 1000.0)
    result = simulate(rps, fixed(10, 2), sim=SIM, seed=0, initial=(10, 2))  # 400 rps of GPU
    assert result.slo_violation_s > 250
    assert result.shed_requests > 0
    assert result.p99_ms == pytest.approx(SIM.request_timeout_s * 1000.0)


def test_startup_delay_matters() -> None:
    """The same step in load hurts for longer when GPU pods take longer to start."""
    rps = np.concatenate([np.full(120, 400.0), np.full(480, 1600.0)])
    fast = simulate(rps, coupled, sim=SimConfig(samples_per_s=50, triton_startup_s=10.0), seed=0)
    slow = simulate(rps, coupled, sim=SimConfig(samples_per_s=50, triton_startup_s=120.0), seed=0)
    assert slow.slo_violation_s > fast.slo_violation_s + 60
    # pods exist (and cost) from creation, not from readiness
    assert (slow.series["inference"] > slow.series["inference_ready"]).any()


def test_replica_hours_arithmetic() -> None:
    rps = np.full(1800, 100.0)
    result = simulate(rps, fixed(3, 2), sim=SIM, seed=0, initial=(3, 2))
    assert result.gpu_replica_hours == pytest.approx(2 * 1800 / 3600)
    assert result.cpu_replica_hours == pytest.approx(3 * 1800 / 3600)
    two_gpus = SimConfig(samples_per_s=50, gpus_per_inference_pod=2)
    result = simulate(rps, fixed(3, 2), sim=two_gpus, seed=0, initial=(3, 2))
    assert result.gpu_replica_hours == pytest.approx(2.0)


def test_policy_runs_every_interval_and_series_are_per_second() -> None:
    rps = np.full(301, 500.0)
    result = simulate(rps, coupled, PolicyConfig(interval_s=15), sim=SIM, seed=0)
    assert [t for t, _ in result.decisions] == [float(t) for t in range(15, 301, 15)]
    for series in result.series.values():
        assert series.shape == (301,)


def test_erlang_c() -> None:
    assert erlang_c(1, 0.5) == pytest.approx(0.5)  # M/M/1: P(wait) = rho
    assert erlang_c(2, 0.5) == pytest.approx(1 / 3)
    assert erlang_c(8, 0.0) == 0.0
    assert erlang_c(64, 0.5) < erlang_c(8, 0.5) < erlang_c(8, 0.9)


# --------------------------------------------------------------------------- traces


def test_shipped_traces_load_by_name() -> None:
    assert set(trace_names()) >= {"diurnal", "flash_spike", "ramp"}
    for name, hours in (("diurnal", 6), ("flash_spike", 2), ("ramp", 3)):
        rps = load_trace(name)
        assert len(rps) == hours * 3600 + 1
        assert rps.min() >= 0 and 1000 < rps.max() < 5000


def test_trace_from_a_file_is_interpolated_per_second(tmp_path: Path) -> None:
    path = tmp_path / "mine.csv"
    path.write_text("t_s,rps\n0,100\n10,200\n# a comment\n20,200\n")
    rps = load_trace(path)
    assert len(rps) == 21
    assert rps[5] == pytest.approx(150.0)
    assert load_trace(str(path))[20] == 200.0


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("time,rate\n0,1\n1,2\n", "header"),
        ("t_s,rps\n0,1\n", "two points"),
        ("t_s,rps\n0,1\n1,abc\n", "row 3"),
        ("t_s,rps\n0,1\n1,-5\n", "rps >= 0"),
        ("t_s,rps\n5,1\n5,2\n", "increase"),
        ("", "header"),
    ],
)
def test_bad_trace_file_gives_a_clear_error(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(TraceError, match=reason):
        load_trace(path)


def test_unknown_trace_name() -> None:
    with pytest.raises(TraceError, match=r"unknown trace 'nope'.*diurnal"):
        load_trace("nope")
