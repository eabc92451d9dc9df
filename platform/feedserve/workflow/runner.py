"""Running a checked workflow: the request path (online), batch jobs (offline) and stream
refreshes (nearline) all go through ``Runner.run``.

Online: every step the requested outputs need starts at once as an asyncio task and waits
only for the values it consumes, so independent branches run concurrently. An op may hand
one of its outputs over before it finishes (``Op.early``, ``ops.emitter``): its consumers
start then (the member prompt's embedding starts while the featurizer finishes hydrating).
Each step runs under ``min(timeout_ms, deadline_share x deadline, time left)``; a step that
fails or runs late gives its fallback outputs (the answer is flagged degraded, naming the
step) or, without a fallback, fails the request with its own exception. Offline and
nearline steps are not run in a request: their stored result is read by key (``on_miss``
says what happens when none is stored).

Batch (offline job, nearline refresh): ``compute_keys`` evaluates a materialized step for a
list of keys, with whatever it needs upstream evaluated per key, without a deadline and
without fallbacks (a failure is an error to retry, not a degraded answer), and stores the
results.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from feedserve import tracing
from feedserve.store.base import StoredVector
from feedserve.triton_client import OipV2Client
from feedserve.workflow.ops import (
    EMIT,
    OPS,
    WANTED,
    ModelHeld,
    Op,
    OpContext,
    Outputs,
    Vec,
    empty_value,
)
from feedserve.workflow.spec import VALUE_TYPES, StepSpec, Workflow

log = logging.getLogger(__name__)

BATCH_COUNT = 20
"""The ``Count`` a batch evaluation supplies (no caller asked for a page)."""


@dataclass(frozen=True)
class StepTrace:
    step: str
    mode: str
    status: str
    """ok | fallback | stored (read a materialized value) | computed-on-miss | held-by-model |
    failed"""
    ms: float
    """The step's own time: from when its inputs were ready to when it finished."""
    detail: str = ""
    start_ms: float = 0.0
    """When its inputs were ready, from the start of the run."""


@dataclass
class RunResult:
    values: dict[str, Any]
    """The requested targets."""
    degraded: list[str] = field(default_factory=list)
    trace: list[StepTrace] = field(default_factory=list)
    computed: dict[str, Any] = field(default_factory=dict)
    """Every value the run produced or read, targets included."""

    def as_of(self) -> dict[str, float]:
        """When each embedding value used was computed (unix seconds): its freshness."""
        return {
            k: v.computed_at
            for k, v in self.computed.items()
            if isinstance(v, Vec) and v.computed_at
        }


class RemoteClients:
    """One Open Inference Protocol v2 client per remote endpoint URL, made on first use."""

    def __init__(self, timeout_s: float = 2.0) -> None:
        self.timeout_s = timeout_s
        self._clients: dict[str, OipV2Client] = {}

    def __call__(self, url: str) -> OipV2Client:
        if url not in self._clients:
            self._clients[url] = OipV2Client(url, self.timeout_s)
        return self._clients[url]

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()


class _Run:
    """The state of one run: its tasks, deadline, degraded reasons and trace."""

    def __init__(
        self,
        inputs: Mapping[str, Any],
        deadline_s: float | None,
        compute: frozenset[str],
        fallbacks: bool,
    ) -> None:
        self.inputs = inputs
        self.start = time.monotonic()
        self.start_perf = time.perf_counter()
        self.began: dict[str, float] = {}
        """perf_counter() at which each step had its inputs and started its own work."""
        self.total = math.inf if deadline_s is None else deadline_s
        self.deadline = self.start + self.total
        self.compute = compute
        self.fallbacks = fallbacks
        self.tasks: dict[str, asyncio.Task[Outputs]] = {}
        self.demand: frozenset[str] = frozenset()
        """Values some step of this run (or its caller) consumes."""
        self.degraded: list[str] = []
        self.trace: list[StepTrace] = []
        self.early: dict[str, asyncio.Future[Any]] = {}
        """Values handed over by their step before it finished (``Op.early``)."""

    def early_value(self, name: str) -> asyncio.Future[Any]:
        fut = self.early.get(name)
        if fut is None:
            fut = self.early[name] = asyncio.get_running_loop().create_future()
        return fut


class Runner:
    def __init__(
        self,
        workflow: Workflow,
        ctx: OpContext,
        observe: Callable[[str, float], None] | None = None,
        ops: Mapping[str, Op] | None = None,
    ) -> None:
        self.wf = workflow
        self.ctx = ctx
        self.observe = observe
        self.ops = OPS if ops is None else ops

    # --- planning ------------------------------------------------------------------------------
    def required(self, targets: Iterable[str], compute: frozenset[str] = frozenset()) -> list[str]:
        """Steps a run for ``targets`` starts eagerly (``Workflow.required``)."""
        return self.wf.required(targets, compute)

    # --- running -------------------------------------------------------------------------------
    async def run(
        self,
        inputs: Mapping[str, Any],
        deadline_s: float | None = None,
        targets: Sequence[str] | None = None,
        compute: Iterable[str] = (),
        fallbacks: bool = True,
    ) -> RunResult:
        """Evaluate ``targets`` (default: the workflow outputs) from the request ``inputs``.

        ``deadline_s`` defaults to the workflow's ``deadline_ms`` (``math.inf``: none).
        ``compute`` names materialized steps to execute instead of reading; ``fallbacks=False``
        makes a failing step fail the run even where it has a fallback.
        """
        missing = [k for k in self.wf.spec.inputs if k not in inputs]
        if missing:
            raise ValueError(f"workflow {self.wf.spec.name!r} needs inputs {missing}")
        if deadline_s is None:
            deadline_s = self.wf.spec.deadline_ms / 1000
        targets = list(targets or self.wf.spec.outputs)
        st = _Run(
            inputs, None if math.isinf(deadline_s) else deadline_s, frozenset(compute), fallbacks
        )
        try:
            required = self.required(targets, st.compute)
            demand = set(targets)
            for name in required:
                step = self.wf.step(name)
                if step.mode.in_request or name in st.compute:
                    demand.update(step.inputs)
            st.demand = frozenset(demand)
            for name in required:
                self._task(name, st)
            values = {v: await self._value(v, st) for v in targets}
            computed: dict[str, Any] = {}
            for task in st.tasks.values():
                if task.done() and not task.cancelled() and task.exception() is None:
                    computed.update(task.result())
        finally:
            pending = [t for t in st.tasks.values() if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            for t in st.tasks.values():  # failures nobody awaited are reported, not lost
                if t.done() and not t.cancelled() and t.exception() is not None:
                    log.debug("step task failed: %s", t.exception())
        return RunResult(values, st.degraded, st.trace, computed)

    def _task(self, name: str, st: _Run) -> asyncio.Task[Outputs]:
        if name not in st.tasks:
            st.tasks[name] = asyncio.create_task(self._node(name, st), name=f"step:{name}")
        return st.tasks[name]

    async def _value(self, value: str, st: _Run) -> Any:
        producer = self.wf.producer[value]
        if not producer:
            return st.inputs[value]
        task = self._task(producer, st)
        if not task.done() and value in self._early(producer):
            early = st.early_value(value)
            await asyncio.wait((task, early), return_when=asyncio.FIRST_COMPLETED)
            if early.done():
                return early.result()
        return (await task)[value]

    def _early(self, name: str) -> frozenset[str]:
        """Outputs step ``name`` may hand over before it finishes."""
        op = self.ops.get(self.wf.step(name).op_name)
        return frozenset() if op is None else op.early

    def _emitter(self, step: StepSpec, st: _Run) -> Callable[[str, Any], None]:
        """``emit(output, value)`` for a step's op (called on the event loop's thread)."""
        allowed = self._early(step.name) & set(step.outputs)

        def emit(output: str, value: Any) -> None:
            if output not in allowed:
                raise ValueError(f"step {step.name!r} cannot hand {output!r} over early")
            fut = st.early_value(output)
            if not fut.done():
                fut.set_result(value)

        return emit

    async def _node(self, name: str, st: _Run) -> Outputs:
        step = self.wf.step(name)
        t0 = time.perf_counter()
        status, detail = "ok", ""
        WANTED.set(frozenset(o for o in step.outputs if o in st.demand))  # this task only
        EMIT.set(self._emitter(step, st) if self._early(name) else None)
        span, token = tracing.start(f"step {name}", **{"feedserve.mode": step.mode.value})
        try:
            if step.mode.materialized and name not in st.compute:
                out, status, detail = await self._read(step, st)
            else:
                out, status, detail = await self._execute(step, st)
            return out
        except asyncio.CancelledError:
            status = "cancelled"
            raise
        except BaseException as exc:
            status, detail = "failed", _describe(exc)
            raise
        finally:
            tracing.end(span, token, **{"feedserve.status": status})
            began = st.began.get(name, t0)
            seconds = time.perf_counter() - began
            start_ms = (began - st.start_perf) * 1000
            st.trace.append(
                StepTrace(name, step.mode.value, status, seconds * 1000, detail, start_ms)
            )
            if self.observe is not None and status not in ("cancelled", "held-by-model"):
                self.observe(step.stage_name, seconds)

    def _timeout(self, step: StepSpec, st: _Run) -> float:
        t = st.deadline - time.monotonic()
        if step.timeout_ms is not None:
            t = min(t, step.timeout_ms / 1000)
        if step.deadline_share is not None and not math.isinf(st.total):
            t = min(t, step.deadline_share * st.total)
        return t

    async def _inputs(self, step: StepSpec, st: _Run) -> dict[str, Any]:
        inp = {v: await self._value(v, st) for v in step.inputs}
        for a in step.after:
            await self._task(a, st)
        st.began.setdefault(step.name, time.perf_counter())
        return inp

    async def _execute(self, step: StepSpec, st: _Run) -> tuple[Outputs, str, str]:
        inp = await self._inputs(step, st)
        timeout = self._timeout(step, st)
        try:
            if timeout <= 0:
                raise TimeoutError("no time left before the request deadline")
            async with asyncio.timeout(timeout):  # no extra task per step (wait_for's)
                out = await self._call(step, inp, timeout)
            return out, "ok", ""
        except Exception as exc:
            if isinstance(exc, asyncio.TimeoutError | TimeoutError) and not str(exc):
                exc = TimeoutError(f"ran past its {timeout * 1000:.0f} ms budget")
            if not (st.fallbacks and step.fallback):
                raise
            reason = f"{step.name} fell back: {_describe(exc)}"
            log.warning("%s", reason)
            st.degraded.append(reason)
            out = self._fallback(step, inp)
            for name, fut in st.early.items():  # consumers already have these: they stand
                if name in step.outputs and fut.done():
                    out[name] = fut.result()
            return out, "fallback", _describe(exc)

    async def _call(self, step: StepSpec, inp: Mapping[str, Any], timeout: float) -> Outputs:
        impl = self.ops[step.op_name]
        known = impl.shortcut(inp)
        if known is not None:
            return known
        if step.remote is None or step.mode.value != "remote":
            return await impl.run(self.ctx, inp, timeout)
        adapter = impl.remote
        if adapter is None or self.ctx.remote is None:
            raise RuntimeError(f"step {step.name!r}: no remote client configured")
        client = self.ctx.remote(step.remote.url)
        tensors = await client.infer(
            step.remote.model or adapter.default_model,
            adapter.to_tensors(inp),
            adapter.outputs,
            version=step.remote.version,
            timeout_s=timeout,
        )
        return adapter.from_tensors(inp, tensors)

    def _fallback(self, step: StepSpec, inp: Mapping[str, Any]) -> Outputs:
        return {
            out: empty_value(step.outputs[out]) if src == "empty" else inp[src]
            for out, src in step.fallback.items()
        }

    async def _read(self, step: StepSpec, st: _Run) -> tuple[Outputs, str, str]:
        """An offline/nearline step seen from a request: read its stored outputs by key."""
        out: Outputs = {}
        stored = {o: t for o, t in step.outputs.items() if not VALUE_TYPES[t].held_by_model}
        for o, t in step.outputs.items():
            if VALUE_TYPES[t].held_by_model:
                out[o] = ModelHeld(step.name, o)
        if not stored:
            return out, "held-by-model", ""
        key = int(await self._value(step.key, st))
        st.began[step.name] = time.perf_counter()
        timeout = self._timeout(step, st)
        try:
            rows = await asyncio.wait_for(asyncio.to_thread(self._load, list(stored), key), timeout)
        except Exception as exc:
            if not (st.fallbacks and step.fallback):
                raise
            st.degraded.append(f"{step.name} fell back: store read failed: {_describe(exc)}")
            return await self._read_fallback(step, st), "fallback", _describe(exc)
        found = {o: r for o, r in rows.items() if r is not None}
        if len(found) == len(rows) and not await self._stale(step, found):
            for o, r in found.items():
                out[o] = Vec(r.vector, r.space, r.updated_at)
            return out, "stored", ""
        if step.on_miss == "fallback":
            reason = f"{step.name} fell back: nothing stored for {step.key}={key}"
            st.degraded.append(reason)
            return await self._read_fallback(step, st), "fallback", reason
        return await self._compute_miss(step, key, st)

    async def _compute_miss(self, step: StepSpec, key: int, st: _Run) -> tuple[Outputs, str, str]:
        """Compute a stored step the request found missing, with what it needs upstream, as a
        run of its own (the request's steps did not prepare its inputs, e.g. the member
        prompt), then store the result for the next request."""
        left = st.deadline - time.monotonic()
        sub = await self.run(
            st.inputs,
            deadline_s=math.inf if math.isinf(st.total) else max(left, 0.0),
            targets=list(step.outputs),
            compute={step.name},
            fallbacks=st.fallbacks,
        )
        st.trace += [
            replace(t, detail=f"miss of {step.name}" + (f": {t.detail}" if t.detail else ""))
            for t in sub.trace
            if t.step != step.name
        ]
        st.degraded += sub.degraded
        own = next((t for t in sub.trace if t.step == step.name), None)
        if own is not None and own.status == "ok":
            await asyncio.to_thread(self._store, step, key, sub.values)
            return sub.values, "computed-on-miss", ""
        return sub.values, own.status if own else "failed", own.detail if own else ""

    async def _stale(self, step: StepSpec, rows: Mapping[str, StoredVector]) -> bool:
        """Stored in another embedding space than the serving encoder's (an encoder was
        released since): such a value counts as missing."""
        if not self.ops[step.op_name].encoder_space or self.ctx.encoder_space is None:
            return False
        current = await self.ctx.encoder_space()
        return bool(current) and any(r.space and r.space != current for r in rows.values())

    async def _read_fallback(self, step: StepSpec, st: _Run) -> Outputs:
        """The fallback of a read: a fallback may pass one of the step's inputs through."""
        inp = {src: await self._value(src, st) for src in step.fallback.values() if src != "empty"}
        return self._fallback(step, inp)

    def _load(self, outputs: list[str], key: int) -> dict[str, StoredVector | None]:
        return {o: self.ctx.store.get_vectors(o, [key])[0] for o in outputs}

    def _store(self, step: StepSpec, key: int, outputs: Outputs) -> int:
        """Write a step's embedding outputs for ``key``; returns how many were written."""
        written = 0
        for o, value in outputs.items():
            if isinstance(value, Vec):
                self.ctx.store.put_vectors(
                    o, [StoredVector(key, value.vector, value.space, value.computed_at)]
                )
                written += 1
        return written

    # --- batch: offline jobs and nearline refreshes ----------------------------------------------
    def batch_inputs(self, step: StepSpec, key: int, now: int) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, vtype in self.wf.spec.inputs.items():
            if name == step.key:
                values[name] = key
            elif vtype == "Timestamp":
                values[name] = now
            elif vtype == "Count":
                values[name] = BATCH_COUNT
            else:
                values[name] = None
        return values

    async def compute_keys(
        self,
        step_name: str,
        keys: Sequence[int],
        now: int | None = None,
        concurrency: int = 8,
        on_done: Callable[[int], None] | None = None,
    ) -> BatchReport:
        """Compute and store a materialized step for ``keys``; per-key failures are counted
        (and the first few named), not raised, so one bad key does not stop a job."""
        step = self.wf.step(step_name)
        now = int(time.time()) if now is None else now
        gate = asyncio.Semaphore(concurrency)
        report = BatchReport(step_name)

        async def one(key: int) -> None:
            async with gate:
                try:
                    result = await self.run(
                        self.batch_inputs(step, key, now),
                        deadline_s=math.inf,
                        targets=list(step.outputs),
                        compute={step_name},
                        fallbacks=False,
                    )
                    # await first: `report.stored += await ...` would read the counter before
                    # the await and lose the writes of keys finishing meanwhile
                    written = await asyncio.to_thread(self._store, step, key, result.values)
                    report.stored += written
                    report.done += 1
                except Exception as exc:
                    report.failed += 1
                    if len(report.errors) < 5:
                        report.errors.append(f"{step.key}={key}: {_describe(exc)}")
                    report.last_error = exc
                finally:
                    if on_done is not None:
                        on_done(1)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(int(k)) for k in keys))
        report.seconds = time.perf_counter() - t0
        return report


@dataclass
class BatchReport:
    step: str
    done: int = 0
    stored: int = 0
    failed: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    last_error: BaseException | None = None


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
