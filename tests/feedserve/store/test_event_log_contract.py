"""One contract suite for every EventLog implementation (memory and Redis stream)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from feedserve.contracts import Action
from feedserve.store.base import EngagementEvent, EventLog

EventLogFactory = Callable[[], EventLog]


def events(n: int, tag: str = "e") -> list[EngagementEvent]:
    return [
        EngagementEvent(
            event_id=f"{tag}-{i}",
            member_id=1 + i % 3,
            post_id=10 + i,
            action=Action.like if i % 2 else Action.click,
            ts=1000 + i,
            dwell_ms=i,
        )
        for i in range(n)
    ]


def poll(fn: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not fn():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        time.sleep(0.005)


def test_append_consume_ack(event_log: EventLog) -> None:
    assert isinstance(event_log, EventLog)
    assert event_log.pending() == 0
    assert event_log.consume("c1", block_ms=0) == []
    evs = events(5)
    event_log.append(evs)
    event_log.append([])
    assert event_log.pending() == 5
    got = event_log.consume("c1", count=3, block_ms=0)
    assert [e for _, e in got] == evs[:3]
    ids = [d for d, _ in got]
    assert len(set(ids)) == 3
    rest = event_log.consume("c1", count=10, block_ms=0)
    assert [e for _, e in rest] == evs[3:]
    assert event_log.pending() == 5  # delivered but not acknowledged
    event_log.ack(ids)
    assert event_log.pending() == 2
    event_log.ack(ids)  # acknowledging twice is harmless
    event_log.ack([d for d, _ in rest])
    assert event_log.pending() == 0
    assert event_log.consume("c1", block_ms=0) == []


def test_ack_of_undelivered_id_is_ignored(event_log: EventLog) -> None:
    event_log.append(events(2))
    assert event_log.consume("c1", count=1, block_ms=0)
    # a fake id (or one never delivered) must not drop anything
    event_log.ack(["999999999999-0"])
    assert event_log.pending() == 2


def test_two_consumers_never_get_the_same_event(make_event_log: EventLogFactory) -> None:
    log_a, log_b = make_event_log(), make_event_log()
    evs = events(40)
    log_a.append(evs)
    seen: dict[str, list[str]] = {"a": [], "b": []}
    while True:
        got_a = log_a.consume("a", count=3, block_ms=0)
        got_b = log_b.consume("b", count=4, block_ms=0)
        seen["a"] += [e.event_id for _, e in got_a]
        seen["b"] += [e.event_id for _, e in got_b]
        if not got_a and not got_b:
            break
    assert seen["a"] and seen["b"]
    assert not set(seen["a"]) & set(seen["b"])
    assert sorted(seen["a"] + seen["b"]) == sorted(e.event_id for e in evs)


def test_reclaim_after_idle(make_event_log: EventLogFactory) -> None:
    log = make_event_log()
    log.append(events(4))
    lost = log.consume("crashed", count=3, block_ms=0)
    assert len(lost) == 3
    assert log.reclaim("rescuer", min_idle_ms=60_000) == []
    got: list[tuple[str, EngagementEvent]] = []

    def reclaimed() -> bool:
        got.extend(log.reclaim("rescuer", min_idle_ms=30, count=10))
        return len(got) >= 3

    poll(reclaimed)
    assert got == lost  # same delivery ids, same events, in order
    # now owned by the rescuer: not idle any more, nothing to take again right away
    assert log.reclaim("other", min_idle_ms=60_000) == []
    # the fourth event was never delivered: consume, not reclaim, hands it out
    fourth = log.consume("rescuer", block_ms=0)
    assert [e.event_id for _, e in fourth] == ["e-3"]
    log.ack([d for d, _ in got + fourth])
    assert log.pending() == 0
    assert log.reclaim("rescuer", min_idle_ms=0) == []


def test_reclaim_count_limit(event_log: EventLog) -> None:
    event_log.append(events(6))
    event_log.consume("x", count=6, block_ms=0)
    first = event_log.reclaim("y", min_idle_ms=0, count=4)
    assert [e.event_id for _, e in first] == [f"e-{i}" for i in range(4)]
    second = event_log.reclaim("y", min_idle_ms=0, count=10)
    assert len(second) == 6  # idle 0: everything pending, including what y just took


def test_blocking_consume_wakes_on_append(event_log: EventLog) -> None:
    out: list[tuple[str, EngagementEvent]] = []
    started = threading.Event()

    def consumer() -> None:
        started.set()
        deadline = time.monotonic() + 5.0
        while not out and time.monotonic() < deadline:
            out.extend(event_log.consume("blocker", block_ms=200))

    t = threading.Thread(target=consumer)
    t.start()
    started.wait()
    event_log.append(events(1))
    t.join(timeout=10)
    assert not t.is_alive()
    assert [e.event_id for _, e in out] == ["e-0"]


def test_concurrent_consumers_no_loss_no_duplicates(make_event_log: EventLogFactory) -> None:
    producer = make_event_log()
    evs = events(300, tag="c")
    delivered: list[str] = []
    lock = threading.Lock()
    done = threading.Event()

    def consumer(name: str) -> None:
        log = make_event_log()
        while not done.is_set():
            got = log.consume(name, count=16, block_ms=50)
            with lock:
                delivered.extend(e.event_id for _, e in got)
            log.ack([d for d, _ in got])

    threads = [threading.Thread(target=consumer, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for k in range(0, len(evs), 25):
        producer.append(evs[k : k + 25])
    try:
        poll(lambda: producer.pending() == 0 and len(delivered) >= len(evs))
    finally:
        done.set()
        for t in threads:
            t.join(timeout=10)
    assert sorted(delivered) == sorted(e.event_id for e in evs)
    assert len(delivered) == len(set(delivered))


def test_one_append_is_consumed_as_one_batch(event_log: EventLog) -> None:
    """A blocked consumer never wakes to half of an append: one request's events are applied
    (and refresh nearline state) together."""
    sizes: list[int] = []
    stop = threading.Event()

    def consumer() -> None:
        while not stop.is_set():
            got = event_log.consume("batcher", count=256, block_ms=100)
            if got:
                sizes.append(len(got))
                event_log.ack([d for d, _ in got])

    t = threading.Thread(target=consumer)
    t.start()
    try:
        for round_ in range(12):
            before = sum(sizes)
            event_log.append(events(5, tag=f"r{round_}"))
            poll(lambda before=before: sum(sizes) >= before + 5)  # type: ignore[misc]
    finally:
        stop.set()
        t.join(timeout=10)
    assert sum(sizes) == 60
    assert all(n % 5 == 0 for n in sizes), sizes
