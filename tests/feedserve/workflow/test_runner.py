"""Workflow runner: dependency order, concurrency, deadlines and fallbacks, materialized reads,
batch computation, and the default feed workflow with the real ops against fakes."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

import numpy as np
import pytest

from feedserve.store.base import StoredVector
from feedserve.store.memory import MemoryFeatureStore
from feedserve.triton_client import InferenceClient
from feedserve.workflow.ops import (
    FeedConfig,
    Inputs,
    ModelHeld,
    Op,
    OpContext,
    Outputs,
    Vec,
    emitter,
)
from feedserve.workflow.runner import BATCH_COUNT, Runner, RunResult
from feedserve.workflow.spec import Mode, OpSignature, Workflow, check, load_default, parse
from feedserve_featurizers.client import Featurizer

ALL = frozenset({Mode.online, Mode.offline, Mode.nearline, Mode.offline_nearline})
ONLINE = frozenset({Mode.online})
GUARD_S = 5.0
"""How long a test waits for a run that should finish almost at once (fails, never hangs)."""

Fn = Callable[[OpContext, Inputs, float], Awaitable[Outputs]]


class Boom(Exception):
    pass


def make_op(
    name: str,
    inputs: Mapping[str, str],
    outputs: Mapping[str, str],
    fn: Fn,
    modes: frozenset[Mode] = ALL,
) -> Op:
    return Op(OpSignature(name, dict(inputs), dict(outputs), modes), fn)


def workflow(
    steps: list[dict[str, Any]],
    outputs: list[str],
    inputs: Mapping[str, str] | None = None,
    deadline_ms: int = 1000,
) -> dict[str, Any]:
    return {
        "name": "test",
        "deadline_ms": deadline_ms,
        "inputs": dict(inputs or {"x": "Count"}),
        "outputs": outputs,
        "steps": steps,
    }


def context(store: MemoryFeatureStore | None = None) -> OpContext:
    return OpContext(
        featurizer=cast(Featurizer, None),
        triton=cast(InferenceClient, None),
        store=MemoryFeatureStore() if store is None else store,
    )


def make_runner(
    data: dict[str, Any],
    ops: Mapping[str, Op],
    store: MemoryFeatureStore | None = None,
    observe: Callable[[str, float], None] | None = None,
) -> Runner:
    wf = check(parse(data), {name: o.signature for name, o in ops.items()})
    return Runner(wf, context(store), observe=observe, ops=ops)


def statuses(result: RunResult) -> dict[str, str]:
    return {t.step: t.status for t in result.trace}


def guarded(coro: Awaitable[RunResult]) -> RunResult:
    async def main() -> RunResult:
        return await asyncio.wait_for(coro, GUARD_S)

    return asyncio.run(main())


def never_finishes(cancelled: list[str], name: str, out: str) -> Fn:
    async def fn(ctx: OpContext, inp: Inputs, timeout_s: float) -> Outputs:
        try:
            await asyncio.Event().wait()  # never set
        finally:
            cancelled.append(name)
        return {out: []}

    return fn


# --- dependency order and concurrency ---------------------------------------------------------


def test_consumer_sees_its_producers_output() -> None:
    seen: list[tuple[str, int]] = []

    async def double(ctx: OpContext, inp: Inputs, timeout_s: float) -> Outputs:
        seen.append(("double", inp["x"]))
        return {"y": 2 * inp["x"]}

    async def inc(ctx: OpContext, inp: Inputs, timeout_s: float) -> Outputs:
        seen.append(("inc", inp["y"]))
        return {"z": inp["y"] + 1}

    ops = {
        "double": make_op("double", {"x": "Count"}, {"y": "Count"}, double),
        "inc": make_op("inc", {"y": "Count"}, {"z": "Count"}, inc),
    }
    data = workflow(  # listed consumer first: the order comes from the data
        [
            {"name": "inc", "inputs": {"y": "Count"}, "outputs": {"z": "Count"}},
            {"name": "double", "inputs": {"x": "Count"}, "outputs": {"y": "Count"}},
        ],
        ["z"],
    )
    runner = make_runner(data, ops)
    result = guarded(runner.run({"x": 5}))
    assert result.values == {"z": 11}
    assert seen == [("double", 5), ("inc", 10)]
    assert [t.step for t in result.trace] == ["double", "inc"]
    assert statuses(result) == {"double": "ok", "inc": "ok"}
    assert result.degraded == []
    both = guarded(runner.run({"x": 1}, targets=["y", "z"]))
    assert both.values == {"y": 2, "z": 3}


def early_ops(fail_after_emit: bool = False) -> tuple[dict[str, Op], list[str]]:
    """``first`` hands ``y`` over early, then waits until ``second`` (a consumer of ``y``)
    has run before it finishes with ``w``: the run only ends if ``second`` started early."""
    events: list[str] = []
    second_ran = asyncio.Event()

    async def first(ctx: OpContext, inp: Inputs, timeout_s: float) -> Outputs:
        emit = emitter()
        assert emit is not None
        with pytest.raises(ValueError, match="cannot hand 'w' over early"):
            emit("w", 0)  # not declared early
        emit("y", 2 * inp["x"])
        events.append("first emitted y")
        await second_ran.wait()
        events.append("first finished")
        if fail_after_emit:
            raise Boom("after the emit")
        return {"y": 2 * inp["x"], "w": 7}

    async def second(ctx: OpContext, inp: Inputs, timeout_s: float) -> Outputs:
        events.append(f"second got y={inp['y']}")
        second_ran.set()
        return {"z": inp["y"] + 1}

    ops = {
        "first": Op(
            OpSignature("first", {"x": "Count"}, {"y": "Count", "w": "Count"}, ALL),
            first,
            early=frozenset({"y"}),
        ),
        "second": make_op("second", {"y": "Count"}, {"z": "Count"}, second),
    }
    return ops, events


EARLY_STEPS = [
    {"name": "first", "inputs": {"x": "Count"}, "outputs": {"y": "Count", "w": "Count"}},
    {"name": "second", "inputs": {"y": "Count"}, "outputs": {"z": "Count"}},
]


def test_a_consumer_starts_on_an_output_handed_over_early() -> None:
    ops, events = early_ops()
    result = guarded(make_runner(workflow(EARLY_STEPS, ["z", "w"]), ops).run({"x": 5}))
    assert result.values == {"z": 11, "w": 7}
    assert events == ["first emitted y", "second got y=10", "first finished"]
    assert statuses(result) == {"first": "ok", "second": "ok"}


def test_an_early_output_stands_when_its_step_then_fails() -> None:
    """Without a fallback the run fails; with one, the fallback cannot take back what the
    consumers already have."""
    ops, _ = early_ops(fail_after_emit=True)
    with pytest.raises(Boom):
        guarded(make_runner(workflow(EARLY_STEPS, ["z", "w"]), ops).run({"x": 5}))
    ops, _ = early_ops(fail_after_emit=True)
    steps = [dict(EARLY_STEPS[0], fallback={"y": "empty", "w": "empty"}), EARLY_STEPS[1]]
    result = guarded(make_runner(workflow(steps, ["y", "z", "w"]), ops).run({"x": 5}))
    assert result.values == {"y": 10, "z": 11, "w": None}
    assert statuses(result)["first"] == "fallback"


def test_after_waits_for_a_step_that_feeds_no_input() -> None:
    events: list[str] = []

    async def warm(ctx: OpContext, inp: Inputs, timeout_s: float) -> Outputs:
        await asyncio.sleep(0)  # yield: a step not waiting for warm would run first
        events.append("warm")
        return {"w": 0}

    async def serve(ctx: OpContext, inp: Inputs, timeout_s: float) -> Outputs:
        events.append("serve")
        return {"y": inp["x"]}

    ops = {
        "warm": make_op("warm", {"x": "Count"}, {"w": "Count"}, warm),
        "serve": make_op("serve", {"x": "Count"}, {"y": "Count"}, serve),
    }
    data = workflow(
        [
            {
                "name": "serve",
                "inputs": {"x": "Count"},
                "outputs": {"y": "Count"},
                "after": ["warm"],
            },
            {"name": "warm", "inputs": {"x": "Count"}, "outputs": {"w": "Count"}},
        ],
        ["y"],
    )
    result = guarded(make_runner(data, ops).run({"x": 4}))
    assert result.values == {"y": 4}
    assert events == ["warm", "serve"]


def test_missing_request_input_is_an_error() -> None:
    async def ident(ctx: OpContext, inp: Inputs, timeout_s: float) -> Outputs:
        return {"y": inp["x"]}

    ops = {"ident": make_op("ident", {"x": "Count"}, {"y": "Count"}, ident)}
    data = workflow([{"name": "ident", "inputs": {"x": "Count"}, "outputs": {"y": "Count"}}], ["y"])
    with pytest.raises(ValueError, match="needs inputs"):
        guarded(make_runner(data, ops).run({}))


def test_independent_branches_run_concurrently() -> None:
    reached: list[str] = []

    async def main() -> RunResult:
        barrier = asyncio.Barrier(2)  # both branches must be waiting at once to pass

        def branch(name: str, out: str) -> Fn:
            async def fn(ctx: OpContext, inp: Inputs, timeout_s: float) -> Outputs:
                reached.append(name)
                await barrier.wait()
                return {out: inp["x"]}

            return fn

        async def join(ctx: OpContext, inp: Inputs, timeout_s: float) -> Outputs:
            return {"s": inp["l"] + inp["r"]}

        ops = {
            "left": make_op("left", {"x": "Count"}, {"l": "Count"}, branch("left", "l")),
            "right": make_op("right", {"x": "Count"}, {"r": "Count"}, branch("right", "r")),
            "join": make_op("join", {"l": "Count", "r": "Count"}, {"s": "Count"}, join),
        }
        data = workflow(
            [
                {"name": "left", "inputs": {"x": "Count"}, "outputs": {"l": "Count"}},
                {"name": "right", "inputs": {"x": "Count"}, "outputs": {"r": "Count"}},
                {
                    "name": "join",
                    "inputs": {"l": "Count", "r": "Count"},
                    "outputs": {"s": "Count"},
                },
            ],
            ["s"],
        )
        runner = make_runner(data, ops)
        return await asyncio.wait_for(runner.run({"x": 3}, deadline_s=math.inf), GUARD_S)

    result = asyncio.run(main())  # sequential branches would never pass the barrier
    assert result.values == {"s": 6}
    assert sorted(reached) == ["left", "right"]


# --- deadlines and fallbacks --------------------------------------------------------------------


def slow_and_fast(
    cancelled: list[str], slow_step: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Op]]:
    async def fast(ctx: OpContext, inp: Inputs, timeout_s: float) -> Outputs:
        return {"d": [(1, 1.0)]}

    async def join(ctx: OpContext, inp: Inputs, timeout_s: float) -> Outputs:
        return {"page": [p for p, _ in inp["c"] + inp["d"]]}

    ops = {
        "slow": make_op(
            "slow", {"x": "Count"}, {"c": "Candidates"}, never_finishes(cancelled, "slow", "c")
        ),
        "fast": make_op("fast", {"x": "Count"}, {"d": "Candidates"}, fast),
        "join": make_op("join", {"c": "Candidates", "d": "Candidates"}, {"page": "Page"}, join),
    }
    data = workflow(
        [
            {"name": "slow", "inputs": {"x": "Count"}, "outputs": {"c": "Candidates"}, **slow_step},
            {"name": "fast", "inputs": {"x": "Count"}, "outputs": {"d": "Candidates"}},
            {
                "name": "join",
                "inputs": {"c": "Candidates", "d": "Candidates"},
                "outputs": {"page": "Page"},
            },
        ],
        ["page"],
        deadline_ms=30_000,
    )
    return data, ops


def test_slow_step_past_its_timeout_falls_back() -> None:
    cancelled: list[str] = []
    data, ops = slow_and_fast(cancelled, {"timeout_ms": 50, "fallback": {"c": "empty"}})
    runner = make_runner(data, ops)
    t0 = time.monotonic()
    result = guarded(runner.run({"x": 1}))
    elapsed = time.monotonic() - t0
    assert elapsed < 2.0  # bounded by the step's 50 ms, not the 30 s request deadline
    assert result.values == {"page": [1]}
    assert result.degraded == ["slow fell back: TimeoutError: ran past its 50 ms budget"]
    assert statuses(result) == {"slow": "fallback", "fast": "ok", "join": "ok"}
    assert cancelled == ["slow"]  # the late op was stopped, not left running


def test_slow_step_without_fallback_fails_the_run() -> None:
    cancelled: list[str] = []
    data, ops = slow_and_fast(cancelled, {"timeout_ms": 50})
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        guarded(make_runner(data, ops).run({"x": 1}))
    assert time.monotonic() - t0 < 2.0
    assert cancelled == ["slow"]


def test_deadline_share_limits_a_step() -> None:
    cancelled: list[str] = []
    data, ops = slow_and_fast(cancelled, {"deadline_share": 0.01, "fallback": {"c": "empty"}})
    t0 = time.monotonic()
    result = guarded(make_runner(data, ops).run({"x": 1}, deadline_s=20.0))
    assert time.monotonic() - t0 < 4.0  # 1% of 20 s, far below the deadline itself
    assert result.degraded == ["slow fell back: TimeoutError: ran past its 200 ms budget"]
    assert result.values == {"page": [1]}


def test_the_request_deadline_limits_every_step() -> None:
    cancelled: list[str] = []
    data, ops = slow_and_fast(cancelled, {"fallback": {"c": "empty"}})
    data["deadline_ms"] = 100  # run() without deadline_s uses the workflow's
    data["outputs"] = ["c", "d"]
    t0 = time.monotonic()
    result = guarded(make_runner(data, ops).run({"x": 1}))
    assert time.monotonic() - t0 < 2.0
    assert result.values == {"c": [], "d": [(1, 1.0)]}
    assert len(result.degraded) == 1
    assert result.degraded[0].startswith("slow fell back: TimeoutError: ran past its")
    assert cancelled == ["slow"]


def test_a_step_with_no_time_left_fails() -> None:
    cancelled: list[str] = []
    data, ops = slow_and_fast(cancelled, {"fallback": {"c": "empty"}})
    # slow uses the whole deadline, so join (no fallback) starts with no time left
    with pytest.raises(TimeoutError, match="no time left before the request deadline"):
        guarded(make_runner(data, ops).run({"x": 1}, deadline_s=0.1))


def fail_then_rerank(
    fallback: dict[str, str] | None,
) -> tuple[dict[str, Any], dict[str, Op], list[str]]:
    ran: list[str] = []

    async def source(ctx: OpContext, inp: Inputs, timeout_s: float) -> Outputs:
        ran.append("source")
        return {"cands": [(1, 0.5), (2, 0.4)]}

    async def rerank(ctx: OpContext, inp: Inputs, timeout_s: float) -> Outputs:
        ran.append("rerank")
        raise Boom("ranker down")

    async def pick(ctx: OpContext, inp: Inputs, timeout_s: float) -> Outputs:
        ran.append("pick")
        return {"page": [p for p, _ in inp["ranked"]]}

    ops = {
        "source": make_op("source", {"x": "Count"}, {"cands": "Candidates"}, source),
        "rerank": make_op("rerank", {"cands": "Candidates"}, {"ranked": "Candidates"}, rerank),
        "pick": make_op("pick", {"ranked": "Candidates"}, {"page": "Page"}, pick),
    }
    rerank_step: dict[str, Any] = {
        "name": "rerank",
        "inputs": {"cands": "Candidates"},
        "outputs": {"ranked": "Candidates"},
    }
    if fallback is not None:
        rerank_step["fallback"] = fallback
    data = workflow(
        [
            {"name": "source", "inputs": {"x": "Count"}, "outputs": {"cands": "Candidates"}},
            rerank_step,
            {"name": "pick", "inputs": {"ranked": "Candidates"}, "outputs": {"page": "Page"}},
        ],
        ["page", "ranked"],
    )
    return data, ops, ran


def test_failing_step_without_fallback_raises_its_own_exception() -> None:
    data, ops, ran = fail_then_rerank(None)
    with pytest.raises(Boom, match="ranker down"):
        guarded(make_runner(data, ops).run({"x": 1}))
    assert "pick" not in ran  # nothing downstream of the failure ran


def test_failing_step_with_fallback_passes_its_input_through() -> None:
    data, ops, ran = fail_then_rerank({"ranked": "cands"})
    result = guarded(make_runner(data, ops).run({"x": 1}))
    assert result.values == {"page": [1, 2], "ranked": [(1, 0.5), (2, 0.4)]}
    assert result.degraded == ["rerank fell back: Boom: ranker down"]
    trace = {t.step: t for t in result.trace}
    assert trace["rerank"].status == "fallback"
    assert trace["rerank"].detail == "Boom: ranker down"
    assert trace["pick"].status == "ok"
    assert ran == ["source", "rerank", "pick"]


def test_failing_step_with_empty_fallback() -> None:
    data, ops, _ = fail_then_rerank({"ranked": "empty"})
    result = guarded(make_runner(data, ops).run({"x": 1}))
    assert result.values == {"page": [], "ranked": []}
    assert result.degraded == ["rerank fell back: Boom: ranker down"]


def test_fallbacks_false_makes_the_failure_raise() -> None:
    data, ops, _ = fail_then_rerank({"ranked": "cands"})
    with pytest.raises(Boom):
        guarded(make_runner(data, ops).run({"x": 1}, fallbacks=False))


def test_observe_receives_each_steps_stage() -> None:
    observed: list[tuple[str, float]] = []
    data, ops, _ = fail_then_rerank({"ranked": "cands"})
    data["steps"][0]["stage"] = "retrieve"
    guarded(make_runner(data, ops, observe=lambda s, sec: observed.append((s, sec))).run({"x": 1}))
    assert sorted(s for s, _ in observed) == ["pick", "rerank", "retrieve"]
    assert all(sec >= 0 for _, sec in observed)


# --- materialized steps: read by key, on_miss ---------------------------------------------------


class Embedder:
    """Ops for: profile (member_id -> member) -> embed (materialized) -> score (online)."""

    def __init__(self, fail_for: frozenset[int] = frozenset()) -> None:
        self.profiled: list[tuple[int, int]] = []
        self.embedded: list[int] = []
        self.scored = 0
        self.fail_for = fail_for

    async def profile(self, ctx: OpContext, inp: Inputs, timeout_s: float) -> Outputs:
        self.profiled.append((inp["member_id"], inp["now"]))
        return {"member": {"id": inp["member_id"]}}

    async def embed(self, ctx: OpContext, inp: Inputs, timeout_s: float) -> Outputs:
        member_id = inp["member"]["id"]
        self.embedded.append(member_id)
        if member_id in self.fail_for:
            raise Boom(f"bad member {member_id}")
        return {"emb": Vec(np.full(3, member_id, np.float32), "space-c", 999.0)}

    async def score(self, ctx: OpContext, inp: Inputs, timeout_s: float) -> Outputs:
        self.scored += 1
        emb: Vec | None = inp["emb"]
        return {"total": -1.0 if emb is None else float(emb.vector.sum())}

    def ops(self) -> dict[str, Op]:
        return {
            "profile": make_op(
                "profile",
                {"member_id": "MemberId", "now": "Timestamp"},
                {"member": "MemberFeatures"},
                self.profile,
            ),
            "embed": make_op(
                "embed", {"member": "MemberFeatures"}, {"emb": "Embedding"}, self.embed
            ),
            "score": make_op("score", {"emb": "Embedding"}, {"total": "Count"}, self.score, ONLINE),
        }


def materialized(**embed: Any) -> dict[str, Any]:
    return workflow(
        [
            {
                "name": "profile",
                "inputs": {"member_id": "MemberId", "now": "Timestamp"},
                "outputs": {"member": "MemberFeatures"},
            },
            {
                "name": "embed",
                "mode": "offline",
                "key": "member_id",
                "inputs": {"member": "MemberFeatures"},
                "outputs": {"emb": "Embedding"},
                "stage": "embedding",
                **embed,
            },
            {"name": "score", "inputs": {"emb": "Embedding"}, "outputs": {"total": "Count"}},
        ],
        ["total", "emb"],
        inputs={"member_id": "MemberId", "now": "Timestamp", "count": "Count"},
    )


REQUEST = {"member_id": 7, "now": 1_700_000_000, "count": 10}


def test_stored_value_is_read_not_computed() -> None:
    store = MemoryFeatureStore()
    store.put_vectors(
        "emb",
        [
            StoredVector(7, np.array([1.0, 2.0, 3.0], np.float32), "space-s", 1234.5),
            StoredVector(8, np.array([9.0, 9.0, 9.0], np.float32), "space-s", 1.0),
        ],
    )
    e = Embedder()
    observed: list[str] = []
    runner = make_runner(materialized(), e.ops(), store, observe=lambda s, _: observed.append(s))
    result = guarded(runner.run(REQUEST))
    assert statuses(result) == {"embed": "stored", "score": "ok"}
    assert result.values["total"] == 6.0
    emb = result.values["emb"]
    assert isinstance(emb, Vec) and emb.space == "space-s"
    np.testing.assert_array_equal(emb.vector, [1.0, 2.0, 3.0])
    assert result.as_of() == {"emb": 1234.5}
    assert e.embedded == [] and e.profiled == []  # the request never waits on the computation
    assert sorted(observed) == ["embedding", "score"]
    assert result.degraded == []


def test_miss_with_on_miss_compute_computes_and_writes_back() -> None:
    store = MemoryFeatureStore()
    e = Embedder()
    runner = make_runner(materialized(), e.ops(), store)
    first = guarded(runner.run(REQUEST))
    assert statuses(first) == {"profile": "ok", "embed": "computed-on-miss", "score": "ok"}
    assert first.values["total"] == 21.0
    assert e.profiled == [(7, 1_700_000_000)] and e.embedded == [7]
    assert store.vector_count("emb") == 1
    row = store.get_vectors("emb", [7])[0]
    assert row is not None and row.space == "space-c" and row.updated_at == 999.0
    np.testing.assert_array_equal(row.vector, [7.0, 7.0, 7.0])
    assert first.degraded == []

    second = guarded(runner.run(REQUEST))
    assert statuses(second) == {"embed": "stored", "score": "ok"}
    assert second.values["total"] == 21.0
    assert second.as_of() == {"emb": 999.0}
    assert e.embedded == [7]  # not computed again


def test_miss_whose_computation_falls_back_is_not_stored() -> None:
    store = MemoryFeatureStore()
    e = Embedder(fail_for=frozenset({7}))
    runner = make_runner(materialized(fallback={"emb": "empty"}), e.ops(), store)
    result = guarded(runner.run(REQUEST))
    assert statuses(result)["embed"] == "fallback"
    assert result.values["emb"] is None and result.values["total"] == -1.0
    assert result.degraded == ["embed fell back: Boom: bad member 7"]
    assert store.vector_count("emb") == 0


def test_miss_with_on_miss_fallback_uses_the_fallback() -> None:
    store = MemoryFeatureStore()
    e = Embedder()
    data = materialized(on_miss="fallback", fallback={"emb": "empty"})
    result = guarded(make_runner(data, e.ops(), store).run(REQUEST))
    assert statuses(result) == {"embed": "fallback", "score": "ok"}
    assert result.values == {"emb": None, "total": -1.0}
    assert result.degraded == ["embed fell back: nothing stored for member_id=7"]
    assert e.embedded == [] and e.profiled == []
    assert result.as_of() == {}
    assert store.vector_count("emb") == 0


class BrokenStore(MemoryFeatureStore):
    def get_vectors(self, table: str, keys: Sequence[int]) -> list[StoredVector | None]:
        raise ConnectionError("store down")


def test_store_read_failure_uses_the_fallback() -> None:
    e = Embedder()
    data = materialized(fallback={"emb": "empty"})
    result = guarded(make_runner(data, e.ops(), BrokenStore()).run(REQUEST))
    assert statuses(result)["embed"] == "fallback"
    assert result.values == {"emb": None, "total": -1.0}
    assert result.degraded == ["embed fell back: store read failed: ConnectionError: store down"]
    assert e.embedded == []


def test_store_read_failure_without_fallback_fails_the_run() -> None:
    with pytest.raises(ConnectionError, match="store down"):
        guarded(make_runner(materialized(), Embedder().ops(), BrokenStore()).run(REQUEST))


def test_compute_runs_a_materialized_step_instead_of_reading() -> None:
    store = MemoryFeatureStore()
    store.put_vectors("emb", [StoredVector(7, np.zeros(3, np.float32), "old", 1.0)])
    e = Embedder()
    runner = make_runner(materialized(), e.ops(), store)
    result = guarded(runner.run(REQUEST, compute={"embed"}))
    assert statuses(result)["embed"] == "ok"
    assert result.values["total"] == 21.0
    assert e.embedded == [7]


def test_compute_keys_stores_each_key_and_counts_failures() -> None:
    store = MemoryFeatureStore()
    e = Embedder(fail_for=frozenset({3}))
    # a fallback does not apply in a batch: a failure is an error to retry
    runner = make_runner(materialized(fallback={"emb": "empty"}), e.ops(), store)
    done: list[int] = []

    async def main() -> Any:
        return await asyncio.wait_for(
            runner.compute_keys(
                "embed", [1, 2, 3, 4], now=1700, concurrency=2, on_done=done.append
            ),
            GUARD_S,
        )

    report = asyncio.run(main())
    assert (report.step, report.done, report.failed, report.stored) == ("embed", 3, 1, 3)
    assert report.errors == ["member_id=3: Boom: bad member 3"]
    assert isinstance(report.last_error, Boom)
    assert sum(done) == 4
    # upstream evaluated per key, with the batch clock
    assert sorted(e.profiled) == [(1, 1700), (2, 1700), (3, 1700), (4, 1700)]
    assert sorted(e.embedded) == [1, 2, 3, 4]
    assert e.scored == 0  # only the step and what it needs
    rows = store.get_vectors("emb", [1, 2, 3, 4])
    assert rows[2] is None
    for key, row in zip([1, 2, 4], [rows[0], rows[1], rows[3]], strict=True):
        assert row is not None and row.key == key
        np.testing.assert_array_equal(row.vector, [key, key, key])
    assert store.vector_count("emb") == 3


def test_batch_inputs_fill_the_key_clock_and_count() -> None:
    runner = make_runner(materialized(), Embedder().ops())
    values = runner.batch_inputs(runner.wf.step("embed"), 42, 1700)
    assert values == {"member_id": 42, "now": 1700, "count": BATCH_COUNT}


# --- the default feed workflow with the real ops -------------------------------------------------

AUTHORS = {p: 100 + p % 7 for p in range(1, 61)}


class FakeFeaturizer:
    def __init__(self, no_profile: frozenset[int] = frozenset()) -> None:
        self.members: list[int] = []
        self.with_prompt: list[bool] = []
        self.no_profile = no_profile

    async def hydrate_member(
        self,
        member_id: int,
        session: Any,
        now: int,
        with_prompt: bool = True,
        on_prompt: Any = None,
    ) -> dict[str, Any]:
        self.members.append(member_id)
        self.with_prompt.append(with_prompt)
        known = member_id not in self.no_profile
        hist = np.zeros(8, dtype=np.int64)
        prompt = np.arange(1, 5, dtype=np.int64) if known and with_prompt else np.zeros(0, np.int64)
        if on_prompt is not None and known and with_prompt:
            on_prompt(prompt)
            await asyncio.sleep(0)  # the rest of the hydration takes a while
        return {
            "member_id": member_id,
            "known": known,
            "input_ids": prompt,
            "seen_ids": np.array([1, 2], dtype=np.int64),
            "blocked_author_ids": np.zeros(0, dtype=np.int64),
            "network_ids": np.array([30, 31], dtype=np.int64),
            "popular_ids": np.array([40, 41, 1], dtype=np.int64),
            "fresh_ids": np.array([50, 51], dtype=np.int64),
            "history_post_ids": hist,
            "history_actions": hist,
            "history_timestamps": hist,
            "request_time": now,
        }

    async def hydrate_candidates(self, post_ids: list[int]) -> dict[str, Any]:
        known = [p for p in post_ids if p in AUTHORS]
        return {
            "post_ids": np.array(known, dtype=np.int64),
            "author_ids": np.array([AUTHORS[p] for p in known], dtype=np.int64),
            "created_at": np.zeros(len(known), dtype=np.int64),
            "formats": ["text"] * len(known),
            "topics": ["t"] * len(known),
        }

    async def index_post(self, post_id: int) -> None:
        return None

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        return None


class FakeTriton:
    def __init__(self) -> None:
        self.embeds = 0
        self.queries: list[np.ndarray | None] = []
        self.ranked: list[np.ndarray] = []

    async def embed_ids(self, input_ids: np.ndarray, timeout_s: float | None = None) -> np.ndarray:
        return (await self.embed_ids_tagged(input_ids, timeout_s))[0]

    async def embed_ids_tagged(
        self, input_ids: np.ndarray, timeout_s: float | None = None
    ) -> tuple[np.ndarray, str]:
        self.embeds += 1
        return np.ones(4, dtype=np.float32), "space-a"

    async def search(
        self,
        query: np.ndarray | None,
        k: int,
        exclude_ids: np.ndarray | None = None,
        timeout_s: float | None = None,
        *,
        query_post_ids: np.ndarray | None = None,
        blocked_author_ids: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        self.queries.append(query)
        ids = np.array([10, 11, 12, 13, 999], dtype=np.int64)
        return ids, np.linspace(0.9, 0.5, len(ids)).astype(np.float32)

    async def rank(
        self,
        history: Mapping[str, np.ndarray],
        candidate_ids: np.ndarray,
        timeout_s: float | None = None,
    ) -> np.ndarray:
        self.ranked.append(candidate_ids)
        return candidate_ids.astype(np.float32)

    async def ready(self, models: tuple[str, ...] = ()) -> bool:
        return True

    async def close(self) -> None:
        return None


FEED_REQUEST = {"member_id": 7, "session_context": None, "now": 1_700_000_000, "count": 6}


def feed_runner(
    wf: Workflow, store: MemoryFeatureStore, featurizer: FakeFeaturizer | None = None
) -> tuple[Runner, FakeTriton]:
    triton = FakeTriton()
    ctx = OpContext(
        featurizer=featurizer or FakeFeaturizer(),
        triton=triton,
        store=store,
        config=FeedConfig(retrieval_k=50, max_per_author=2),
    )
    return Runner(wf, ctx), triton


def feed_targets(wf: Workflow) -> list[str]:
    return [*wf.spec.outputs, "member_embedding"]


def test_default_workflow_online_computes_the_embedding() -> None:
    wf = load_default()
    store = MemoryFeatureStore()
    featurizer = FakeFeaturizer()
    runner, triton = feed_runner(wf, store, featurizer)
    result = guarded(runner.run(FEED_REQUEST, targets=feed_targets(wf)))
    assert featurizer.with_prompt == [True]  # this request embeds the member's prompt
    st = statuses(result)
    assert st["embed_member"] == "ok"
    assert st["embed_posts"] == "held-by-model"
    assert set(st) == set(wf.online_steps())
    assert triton.embeds == 1
    assert result.degraded == []
    page = result.values["page"]
    assert page and all(isinstance(p, int) for p in page) and len(page) <= 6
    assert not {1, 2} & set(page)  # seen posts never come back
    assert store.vector_count("member_embedding") == 0  # online mode stores nothing


def test_default_workflow_sends_the_ranker_call_before_hydrating_candidates() -> None:
    """Both start from the merged candidates; the model call goes out first, and the
    featurizer round trip runs behind it (the other order delayed the ranker)."""
    calls: list[str] = []

    class Recording(FakeFeaturizer):
        async def hydrate_candidates(self, post_ids: list[int]) -> dict[str, Any]:
            calls.append("hydrate_candidates")
            return await super().hydrate_candidates(post_ids)

    wf = load_default()
    runner, triton = feed_runner(wf, MemoryFeatureStore(), Recording())
    rank = triton.rank

    async def recorded_rank(*args: Any, **kwargs: Any) -> np.ndarray:
        calls.append("rank")
        return await rank(*args, **kwargs)

    triton.rank = recorded_rank  # type: ignore[method-assign]
    result = guarded(runner.run(FEED_REQUEST, targets=feed_targets(wf)))
    assert result.degraded == []
    assert calls == ["rank", "hydrate_candidates"]


def test_default_workflow_embeds_the_prompt_while_the_member_is_hydrated() -> None:
    """The featurizer hands the prompt over first; the embedding starts before hydration
    finishes (this featurizer finishes only once the embedding has started)."""
    embedding = asyncio.Event()

    class Slow(FakeFeaturizer):
        async def hydrate_member(
            self,
            member_id: int,
            session: Any,
            now: int,
            with_prompt: bool = True,
            on_prompt: Any = None,
        ) -> dict[str, Any]:
            out = await super().hydrate_member(member_id, session, now, with_prompt, on_prompt)
            await embedding.wait()
            return out

    wf = load_default()
    runner, triton = feed_runner(wf, MemoryFeatureStore(), Slow())
    embed = triton.embed_ids_tagged

    async def started(*args: Any, **kwargs: Any) -> tuple[np.ndarray, str]:
        embedding.set()
        return await embed(*args, **kwargs)

    triton.embed_ids_tagged = started  # type: ignore[method-assign]
    result = guarded(runner.run(FEED_REQUEST, targets=feed_targets(wf)))
    assert statuses(result)["embed_member"] == "ok" and result.degraded == []
    trace = {t.step: t for t in result.trace}
    hydrated = trace["hydrate_member"].start_ms + trace["hydrate_member"].ms
    assert trace["embed_member"].start_ms < hydrated


def test_default_workflow_reads_a_stored_member_embedding() -> None:
    wf = load_default().with_mode("embed_member", Mode.offline_nearline)
    store = MemoryFeatureStore()
    stored = np.full(4, 0.25, np.float32)
    store.put_vectors("member_embedding", [StoredVector(7, stored, "space-s", 111.0)])
    featurizer = FakeFeaturizer()
    runner, triton = feed_runner(wf, store, featurizer)
    result = guarded(runner.run(FEED_REQUEST, targets=feed_targets(wf)))
    assert triton.embeds == 0  # embed_ids_tagged never called
    assert featurizer.with_prompt == [False]  # and the prompt was not even rendered
    assert statuses(result)["embed_member"] == "stored"
    assert result.as_of() == {"member_embedding": 111.0}
    ebr_queries = [q for q in triton.queries if q is not None]
    assert len(ebr_queries) == 1
    np.testing.assert_array_equal(ebr_queries[0], stored)  # retrieval used the stored vector
    assert result.degraded == []
    online, _ = feed_runner(load_default(), MemoryFeatureStore())
    assert result.values["page"] == guarded(online.run(FEED_REQUEST)).values["page"]


def test_default_workflow_computes_a_missing_member_embedding() -> None:
    wf = load_default().with_mode("embed_member", Mode.offline_nearline)
    store = MemoryFeatureStore()
    featurizer = FakeFeaturizer()
    runner, triton = feed_runner(wf, store, featurizer)
    first = guarded(runner.run(FEED_REQUEST, targets=feed_targets(wf)))
    assert statuses(first)["embed_member"] == "computed-on-miss"
    assert triton.embeds == 1
    # the request hydrated without the prompt; the miss hydrated again, with it
    assert sorted(featurizer.with_prompt) == [False, True]
    assert any(t.detail.startswith("miss of embed_member") for t in first.trace)
    assert first.degraded == []
    row = store.get_vectors("member_embedding", [7])[0]
    assert row is not None and row.space == "space-a"
    np.testing.assert_array_equal(row.vector, np.ones(4, np.float32))

    second = guarded(runner.run(FEED_REQUEST, targets=feed_targets(wf)))
    assert statuses(second)["embed_member"] == "stored"
    assert triton.embeds == 1
    assert featurizer.with_prompt[2:] == [False]
    assert second.values["page"] == first.values["page"]


def test_default_workflow_batch_computes_member_embeddings() -> None:
    wf = load_default().with_mode("embed_member", Mode.offline_nearline)
    store = MemoryFeatureStore()
    featurizer = FakeFeaturizer(no_profile=frozenset({3}))
    runner, triton = feed_runner(wf, store, featurizer)

    async def main() -> Any:
        return await asyncio.wait_for(runner.compute_keys("embed_member", [1, 2, 3]), GUARD_S)

    report = asyncio.run(main())
    assert (report.done, report.failed, report.stored) == (3, 0, 2)  # 3 has nothing to embed
    assert sorted(featurizer.members) == [1, 2, 3]
    assert featurizer.with_prompt == [True, True, True]
    assert triton.embeds == 2
    assert triton.ranked == [] and triton.queries == []  # nothing downstream ran
    assert store.vector_count("member_embedding") == 2
    assert store.get_vectors("member_embedding", [3]) == [None]


def test_model_held_value_is_a_handle() -> None:
    wf = load_default()
    runner, _ = feed_runner(wf, MemoryFeatureStore())
    result = guarded(runner.run(FEED_REQUEST, targets=["post_index"]))
    assert result.values == {"post_index": ModelHeld("embed_posts", "post_index")}
    assert statuses(result) == {"embed_posts": "held-by-model"}


def passthrough_workflow(on_miss: str) -> tuple[dict[str, Any], dict[str, Op]]:
    """refine (offline) falls back to its own input, the online embedding."""

    async def embed(ctx: OpContext, inp: Inputs, timeout_s: float) -> Outputs:
        return {"emb": Vec(np.ones(2, np.float32), "online", 5.0)}

    async def refine(ctx: OpContext, inp: Inputs, timeout_s: float) -> Outputs:
        raise Boom("refiner down")

    ops = {
        "embed": make_op("embed", {"member_id": "MemberId"}, {"emb": "Embedding"}, embed),
        "refine": make_op("refine", {"emb": "Embedding"}, {"emb2": "Embedding"}, refine),
    }
    data = workflow(
        [
            {"name": "embed", "inputs": {"member_id": "MemberId"}, "outputs": {"emb": "Embedding"}},
            {
                "name": "refine",
                "mode": "offline",
                "key": "member_id",
                "on_miss": on_miss,
                "inputs": {"emb": "Embedding"},
                "outputs": {"emb2": "Embedding"},
                "fallback": {"emb2": "emb"},
            },
        ],
        ["emb2"],
        inputs={"member_id": "MemberId"},
    )
    return data, ops


@pytest.mark.parametrize("on_miss", ["fallback", "compute"])
def test_materialized_miss_falls_back_to_its_input(on_miss: str) -> None:
    data, ops = passthrough_workflow(on_miss)
    result = guarded(make_runner(data, ops).run({"member_id": 7}))
    assert statuses(result)["refine"] == "fallback"
    emb2 = result.values["emb2"]
    assert isinstance(emb2, Vec) and emb2.space == "online"
    assert len(result.degraded) == 1 and result.degraded[0].startswith("refine fell back")


def test_a_stored_embedding_from_another_encoder_space_counts_as_missing() -> None:
    """After an encoder release the stored member embeddings are from the old space: each is
    recomputed on its next request (and stored in the new space), never mixed with the new
    index."""
    from feedserve.workflow.ops import EncoderSpace

    wf = load_default().with_mode("embed_member", Mode.offline_nearline)
    store = MemoryFeatureStore()
    store.put_vectors("member_embedding", [StoredVector(7, np.zeros(4, np.float32), "old", 1.0)])
    runner, triton = feed_runner(wf, store)
    runner.ctx.encoder_space = EncoderSpace(cast(InferenceClient, triton), ttl_s=3600)
    first = guarded(runner.run(FEED_REQUEST, targets=feed_targets(wf)))
    assert statuses(first)["embed_member"] == "computed-on-miss"
    assert triton.embeds == 2  # the space probe, then the member
    row = store.get_vectors("member_embedding", [7])[0]
    assert row is not None and row.space == "space-a"
    second = guarded(runner.run(FEED_REQUEST, targets=feed_targets(wf)))
    assert statuses(second)["embed_member"] == "stored"
    assert triton.embeds == 2  # the probe is cached for ttl_s


def test_trace_times_each_step_from_when_its_inputs_were_ready() -> None:
    """A consumer's own time excludes the wait for its producer (the stage metrics and
    `explain` break latency down by step, not cumulatively)."""
    work_s = 0.05

    async def slow(ctx: OpContext, inp: Inputs, timeout_s: float) -> Outputs:
        await asyncio.sleep(work_s)  # the op's own work, simulated
        return {"a": 1}

    async def fast(ctx: OpContext, inp: Inputs, timeout_s: float) -> Outputs:
        return {"b": inp["a"] + 1}

    sigs = {
        "slow": OpSignature("slow", {}, {"a": "Count"}, frozenset({Mode.online})),
        "fast": OpSignature("fast", {"a": "Count"}, {"b": "Count"}, frozenset({Mode.online})),
    }
    ops = {"slow": Op(sigs["slow"], slow), "fast": Op(sigs["fast"], fast)}
    spec = parse(
        {
            "name": "w",
            "inputs": {"x": "MemberId"},
            "outputs": ["b"],
            "steps": [
                {"name": "slow", "outputs": {"a": "Count"}},
                {"name": "fast", "inputs": {"a": "Count"}, "outputs": {"b": "Count"}},
            ],
        }
    )
    runner = Runner(check(spec, signatures=sigs), cast(OpContext, None), ops=ops)
    result = guarded(runner.run({"x": 1}, deadline_s=10.0))
    trace = {t.step: t for t in result.trace}
    assert result.values == {"b": 2}
    assert trace["slow"].ms >= work_s * 1000 * 0.9
    assert trace["fast"].start_ms >= trace["slow"].ms * 0.9  # it began once `a` was ready
    assert trace["fast"].ms < work_s * 1000 / 2  # its own time, not the wait for `slow`
