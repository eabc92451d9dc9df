"""A discrete-time (1 s steps) simulator of a FeedPipeline's two pools under an autoscaling policy.

Each request goes gateway → featurizer pool → inference pool. Per second ``t``:

* arrivals are Poisson with the trace's rate ``rps(t)`` (seeded RNG);
* the featurizer pool is one shared queue (the Redis list Celery workers pull from) with
  ``ready pods × featurizer_concurrency`` servers; the inference pool is one queue per Triton
  pod (the Service spreads requests evenly) with ``triton_concurrency`` servers each, fed by
  what the featurizers finished that second;
* each queue is a **fluid + M/M/c** model: a fluid backlog carries whatever exceeds the pool's
  capacity from second to second (a request waits ``backlog / capacity`` for it, FIFO), and on
  top of it the steady-state Erlang C waiting time of an M/M/c queue at the current
  utilisation (smoothed over ~5 s, capped at 0.98): waits with probability ``C(c, a)``, for an
  exponential time with rate ``cμ - λ``. Service times are lognormal (mean and coefficient of
  variation per pool);
* pods become ready ``startup`` seconds (±10 %) after the policy asks for them (Triton pods load
  models onto a GPU: 90 s; featurizer pods 15 s); a pod occupies its node, and is counted in the
  replica-hours, from the moment it is created; scaling down removes not-ready pods first;
* every ``interval_s`` the policy gets an :class:`~feedserve_operator.autoscale.Observation`
  made from the simulated state averaged over ``metric_window_s`` and ``metric_lag_s`` old
  (scrape interval plus rate window): the gateway p99 is that of the stage latencies summed at
  each second (what a histogram recorded at completion sees), queue depth the Redis backlog,
  CPU the featurizers' busy fraction, queue time Triton's mean queue wait, per-pod throughput
  the pods' capacity measured with ±3 % noise; replica counts come from the API (no lag).

End-to-end latency is computed per **arrival bucket**: ``samples_per_s`` sampled requests of
second ``s`` get a featurizer latency from the state at ``s`` and then an inference latency
from the state at the second they reach Triton. ``slo_violation_s`` counts the seconds whose
p99 exceeds the objective; ``p99_ms`` is the p99 over all requests of the trace (samples
weighted by their second's arrivals). Same seed, same result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from feedserve_operator.autoscale import (
    Decision,
    Observation,
    Policy,
    PolicyConfig,
    PolicyState,
)


@dataclass(frozen=True)
class SimConfig:
    featurizer_concurrency: int = 4
    """Celery worker processes per featurizer pod."""
    featurizer_service_ms: float = 30.0
    featurizer_service_cv: float = 0.6
    featurizer_startup_s: float = 15.0
    triton_concurrency: int = 8
    """Requests a Triton pod serves at once (model instances × dynamic-batch slots)."""
    triton_service_ms: float = 40.0
    triton_service_cv: float = 0.4
    triton_startup_s: float = 90.0
    gpus_per_inference_pod: int = 1
    request_timeout_s: float = 10.0
    """The gateway gives up on a request after this long; queued work that could not start
    within it is shed (Celery task expiry, cancelled gRPC calls) and latencies cap here."""
    metric_lag_s: int = 15
    metric_window_s: int = 30
    samples_per_s: int = 200
    initial_utilization: float = 0.6
    """Both pools start sized for the trace's first second at this utilisation."""

    @property
    def featurizer_pod_rps(self) -> float:
        return self.featurizer_concurrency * 1000.0 / self.featurizer_service_ms

    @property
    def triton_pod_rps(self) -> float:
        return self.triton_concurrency * 1000.0 / self.triton_service_ms


@dataclass
class SimResult:
    slo_violation_s: int
    p99_ms: float
    gpu_replica_hours: float
    cpu_replica_hours: float
    shed_requests: int
    """Requests given up on after ``request_timeout_s`` in a queue."""
    series: dict[str, np.ndarray]
    """Per second: ``t_s``, ``rps`` (trace), ``arrivals``, ``featurizers``/``featurizers_ready``,
    ``inference``/``inference_ready``, ``p99_ms`` (end-to-end, per arrival second),
    ``featurizer_backlog``, ``triton_queue_ms``, ``shed`` (requests given up on)."""
    decisions: list[tuple[float, Decision]] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        return {
            "slo_violation_s": self.slo_violation_s,
            "gpu_replica_hours": self.gpu_replica_hours,
            "cpu_replica_hours": self.cpu_replica_hours,
            "p99_ms": self.p99_ms,
        }


@lru_cache(maxsize=65_536)
def erlang_c(servers: int, utilization: float) -> float:
    """Probability that an arrival waits in an M/M/c queue (``utilization`` = λ / cμ < 1)."""
    if servers <= 0:
        return 1.0
    if utilization <= 0:
        return 0.0
    a = utilization * servers
    b = 1.0
    for k in range(1, servers + 1):
        b = a * b / (k + a * b)
    return b / (1.0 - utilization * (1.0 - b))


def _lognormal(rng: np.random.Generator, mean_ms: float, cv: float, size: int) -> np.ndarray:
    sigma2 = math.log1p(cv * cv)
    return rng.lognormal(math.log(mean_ms / 1000.0) - sigma2 / 2, math.sqrt(sigma2), size)


@dataclass
class _Pool:
    """Pods (as their ready-at times) and a fluid backlog."""

    ready_at: list[float]
    startup_s: float
    backlog: float = 0.0
    shed: float = 0.0
    rate_ewma: float = 0.0

    def ready(self, t: float) -> int:
        return sum(1 for r in self.ready_at if r <= t)

    def scale(self, n: int, t: float, rng: np.random.Generator) -> None:
        if n > len(self.ready_at):
            jitter = rng.uniform(0.9, 1.1, n - len(self.ready_at))
            self.ready_at.extend(float(t + self.startup_s * j) for j in jitter)
        elif n < len(self.ready_at):
            self.ready_at.sort()  # not-ready pods (latest ready-at) go first
            del self.ready_at[n:]


def _queue_step(
    pool: _Pool, arrivals: float, queues: int, servers: int, mu: float, timeout_s: float
) -> tuple[float, float, float, float, float]:
    """Advance one second of ``queues`` equal queues of ``servers`` servers each (rate ``mu``)
    sharing the load; returns ``(served, fluid wait s, P(wait), wait rate 1/s, busy 0..1)``.
    The backlog never exceeds what the pool can start within ``timeout_s`` (the rest is shed).
    """
    capacity = queues * servers * mu
    pool.rate_ewma += (arrivals - pool.rate_ewma) * 0.2
    if capacity <= 0:
        pool.shed += arrivals
        return 0.0, timeout_s, 1.0, 1.0, 1.0
    fluid_wait = min(timeout_s, pool.backlog / capacity)
    served = min(pool.backlog + arrivals, capacity)
    pool.backlog += arrivals - served
    limit = capacity * timeout_s
    if pool.backlog > limit:
        pool.shed += pool.backlog - limit
        pool.backlog = limit
    rho = min(pool.rate_ewma / capacity, 0.98)
    p_wait = erlang_c(servers, round(rho, 3))
    wait_rate = servers * mu * (1.0 - rho)
    return served, fluid_wait, p_wait, wait_rate, served / capacity


def _wait_samples(
    u: np.ndarray, e: np.ndarray, p_wait: np.ndarray | float, rate: np.ndarray | float
) -> np.ndarray:
    result: np.ndarray = np.where(u < p_wait, e / rate, 0.0)
    return result


def simulate(
    rps: np.ndarray,
    policy: Policy,
    config: PolicyConfig | None = None,
    sim: SimConfig | None = None,
    seed: int = 0,
    initial: tuple[int, int] | None = None,
) -> SimResult:
    """Run ``policy`` over the per-second request rates ``rps``; ``initial`` = (featurizers,
    inference) replicas at t = 0 (default: sized for ``rps[0]`` at ``initial_utilization``)."""
    config = config or PolicyConfig()
    sim = sim or SimConfig()
    rng = np.random.default_rng(seed)
    rps = np.asarray(rps, dtype=np.float64)
    horizon, n = len(rps), sim.samples_per_s
    if horizon == 0:
        raise ValueError("empty trace")
    mu_f = 1000.0 / sim.featurizer_service_ms
    mu_t = 1000.0 / sim.triton_service_ms
    if initial is None:
        initial = (
            config.featurizer.clamp(
                math.ceil(rps[0] / (sim.initial_utilization * sim.featurizer_pod_rps))
            ),
            config.inference.clamp(
                math.ceil(rps[0] / (sim.initial_utilization * sim.triton_pod_rps))
            ),
        )
    feat = _Pool([0.0] * initial[0], sim.featurizer_startup_s, rate_ewma=float(rps[0]))
    tri = _Pool([0.0] * initial[1], sim.triton_startup_s, rate_ewma=float(rps[0]))
    state = PolicyState()  # as if the policy had been running at the initial sizes
    state.featurizer_recommendations.append((0.0, initial[0]))
    state.inference_recommendations.append((0.0, initial[1]))

    arrivals = rng.poisson(rps).astype(np.float64)
    cols = (
        "featurizers",
        "featurizers_ready",
        "inference",
        "inference_ready",
        "featurizer_backlog",
        "f_wait",
        "f_pwait",
        "f_rate",
        "f_busy",
        "t_busy",
        "t_wait",
        "t_pwait",
        "t_rate",
        "triton_queue_ms",
        "stage_p99_ms",
        "shed",
    )
    s = {c: np.zeros(horizon) for c in cols}
    lat_f = np.zeros((horizon, n), dtype=np.float32)
    decisions: list[tuple[float, Decision]] = []
    interval = max(1, round(config.interval_s))

    for t in range(horizon):
        if t > 0 and t % interval == 0:
            obs = _observe(t, s, arrivals, feat, tri, sim, rng)
            decision = policy(obs, state, config)
            decisions.append((float(t), decision))
            feat.scale(decision.featurizers, t, rng)
            tri.scale(decision.inference, t, rng)
        f_ready, t_ready = feat.ready(t), tri.ready(t)
        served_f, f_wait, f_pw, f_rate, f_busy = _queue_step(
            feat, arrivals[t], 1, f_ready * sim.featurizer_concurrency, mu_f, sim.request_timeout_s
        )
        _, t_wait, t_pw, t_rate, t_busy = _queue_step(
            tri, served_f, t_ready, sim.triton_concurrency, mu_t, sim.request_timeout_s
        )
        row = (
            len(feat.ready_at),
            f_ready,
            len(tri.ready_at),
            t_ready,
            feat.backlog,
            f_wait,
            f_pw,
            f_rate,
            f_busy,
            t_busy,
            t_wait,
            t_pw,
            t_rate,
            1000.0 * (t_wait + t_pw / t_rate),
        )
        for c, v in zip(cols, row, strict=False):
            s[c][t] = v
        lf = (
            f_wait
            + _wait_samples(rng.random(n), rng.exponential(1.0, n), f_pw, f_rate)
            + _lognormal(rng, sim.featurizer_service_ms, sim.featurizer_service_cv, n)
        )
        lat_f[t] = lf
        lt = (
            t_wait
            + _wait_samples(rng.random(n), rng.exponential(1.0, n), t_pw, t_rate)
            + _lognormal(rng, sim.triton_service_ms, sim.triton_service_cv, n)
        )
        stage = np.minimum(lf + lt, sim.request_timeout_s)
        s["stage_p99_ms"][t] = 1000.0 * float(np.percentile(stage, 99))
        s["shed"][t] = feat.shed + tri.shed

    p99_per_s, p99_all = _end_to_end(lat_f, arrivals, s, sim, rng)
    violations = int(np.sum((p99_per_s > config.latency_objective_ms) & (arrivals > 0)))
    series = {
        "t_s": np.arange(horizon, dtype=np.float64),
        "rps": rps,
        "arrivals": arrivals,
        "featurizers": s["featurizers"],
        "featurizers_ready": s["featurizers_ready"],
        "inference": s["inference"],
        "inference_ready": s["inference_ready"],
        "p99_ms": p99_per_s,
        "featurizer_backlog": s["featurizer_backlog"],
        "triton_queue_ms": s["triton_queue_ms"],
        "shed": np.diff(s["shed"], prepend=0.0),
    }
    return SimResult(
        slo_violation_s=violations,
        p99_ms=p99_all,
        gpu_replica_hours=float(s["inference"].sum()) * sim.gpus_per_inference_pod / 3600.0,
        cpu_replica_hours=float(s["featurizers"].sum()) / 3600.0,
        shed_requests=round(feat.shed + tri.shed),
        series=series,
        decisions=decisions,
    )


def _observe(
    t: int,
    s: dict[str, np.ndarray],
    arrivals: np.ndarray,
    feat: _Pool,
    tri: _Pool,
    sim: SimConfig,
    rng: np.random.Generator,
) -> Observation:
    """The metrics at ``t``: averages over ``metric_window_s`` ending ``metric_lag_s`` ago. The
    window's p99 is approximated by the mean of the mean and the max of its per-second p99s
    (between them lies the p99 of the pooled requests)."""
    end = max(1, t - sim.metric_lag_s + 1)
    start = max(0, end - sim.metric_window_s)
    win = slice(start, end)
    weights = arrivals[win] + 1e-9
    noise = rng.lognormal(0.0, 0.03, 2)
    return Observation(
        time_s=float(t),
        p99_ms=float(np.max(s["stage_p99_ms"][win]) * 0.5 + np.mean(s["stage_p99_ms"][win]) * 0.5),
        request_rate=float(np.mean(arrivals[win])),
        featurizer_queue_depth=float(s["featurizer_backlog"][end - 1]),
        featurizer_cpu=float(np.mean(s["f_busy"][win])),
        triton_queue_ms=float(np.average(s["triton_queue_ms"][win], weights=weights)),
        triton_throughput_per_pod=sim.triton_pod_rps * float(noise[0]),
        featurizer_throughput_per_pod=sim.featurizer_pod_rps * float(noise[1]),
        featurizer_replicas=len(feat.ready_at),
        featurizer_ready=feat.ready(t),
        inference_replicas=len(tri.ready_at),
        inference_ready=tri.ready(t),
        triton_utilization=float(np.mean(s["t_busy"][win])),
    )


def _end_to_end(
    lat_f: np.ndarray,
    arrivals: np.ndarray,
    s: dict[str, np.ndarray],
    sim: SimConfig,
    rng: np.random.Generator,
    chunk: int = 2048,
) -> tuple[np.ndarray, float]:
    """Per-second p99 (ms) of arrival buckets and the trace's request-weighted p99 (ms)."""
    horizon, n = lat_f.shape
    p99 = np.zeros(horizon)
    totals = np.zeros((horizon, n), dtype=np.float32)
    for lo in range(0, horizon, chunk):
        hi = min(horizon, lo + chunk)
        lf = lat_f[lo:hi].astype(np.float64)
        at = np.minimum(np.arange(lo, hi)[:, None] + np.floor(lf).astype(np.int64), horizon - 1)
        shape = lf.shape
        lt = (
            s["t_wait"][at]
            + _wait_samples(
                rng.random(shape), rng.exponential(1.0, shape), s["t_pwait"][at], s["t_rate"][at]
            )
            + _lognormal(rng, sim.triton_service_ms, sim.triton_service_cv, lf.size).reshape(shape)
        )
        total = np.minimum(lf + lt, sim.request_timeout_s) * 1000.0
        totals[lo:hi] = total
        p99[lo:hi] = np.percentile(total, 99, axis=1)
    flat = totals.ravel()
    weights = np.repeat(arrivals / n, n)
    order = np.argsort(flat, kind="stable")
    cum = np.cumsum(weights[order])
    if cum[-1] <= 0:
        return p99, 0.0
    idx = int(np.searchsorted(cum, 0.99 * cum[-1]))
    return p99, float(flat[order][min(idx, flat.size - 1)])


# --------------------------------------------------------------------------- traces

TRACES_DIR = Path(__file__).resolve().parent / "traces"
"""The shipped request-rate traces (``t_s,rps`` CSV, linear interpolation between points):

``diurnal``      6 h at 60 s: a day compressed, night trough ~250 rps, morning bump, evening
                 peak ~2,000 rps, ±5 % noise;
``flash_spike``  2 h at 30 s: ~800 rps with a 3x spike at 40 min (1 min rise, 8 min hold,
                 5 min fall) and a smaller one (~2.25x, 30 s rise) at 90 min;
``ramp``         3 h at 60 s: 200 rps for 15 min, a linear ramp to 2,400 rps over 90 min,
                 45 min plateau, down to 600 rps over 30 min, ±3 % noise.

They were drawn once from those shapes (numpy seed 2024), independently of the policies.
"""


class TraceError(ValueError):
    """A trace name that is not shipped or a file that is not a ``t_s,rps`` CSV."""


def trace_names() -> list[str]:
    return sorted(p.stem for p in TRACES_DIR.glob("*.csv"))


def resolve_trace(name_or_path: str | Path) -> Path:
    """A shipped trace's name (``diurnal``) or the path of a CSV file."""
    path = Path(name_or_path)
    if path.suffix == "" and (TRACES_DIR / f"{path.name}.csv").is_file() and not path.exists():
        return TRACES_DIR / f"{path.name}.csv"
    if path.is_file():
        return path
    raise TraceError(
        f"unknown trace {str(name_or_path)!r}: not a file and not one of {', '.join(trace_names())}"
    )


def load_trace(name_or_path: str | Path) -> np.ndarray:
    """Per-second request rates of a trace (points linearly interpolated, 1 s steps, from the
    first ``t_s`` to the last); raises :class:`TraceError` with the reason for a bad file."""
    path = resolve_trace(name_or_path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(f"{path}: cannot read: {exc}") from exc
    rows = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not rows or [c.strip() for c in rows[0].split(",")] != ["t_s", "rps"]:
        raise TraceError(f"{path}: the first line must be the header 't_s,rps'")
    times: list[float] = []
    rates: list[float] = []
    for lineno, row in enumerate(rows[1:], start=2):
        cells = row.split(",")
        try:
            if len(cells) != 2:
                raise ValueError
            t, r = float(cells[0]), float(cells[1])
        except ValueError:
            raise TraceError(f"{path}: row {lineno} {row!r} is not two numbers 't_s,rps'") from None
        if not (math.isfinite(t) and math.isfinite(r)) or r < 0:
            raise TraceError(f"{path}: row {lineno}: need finite t_s and rps >= 0")
        if times and t <= times[-1]:
            raise TraceError(f"{path}: row {lineno}: t_s must increase")
        times.append(t)
        rates.append(r)
    if len(times) < 2:
        raise TraceError(f"{path}: need at least two points")
    seconds = np.arange(times[0], times[-1] + 1e-9, 1.0)
    result: np.ndarray = np.interp(seconds, times, rates)
    return result
