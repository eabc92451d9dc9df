"""Nearline engagement consumer: event stream → member histories and post counters.

Events are acknowledged only after the feature store write; a consumer that dies leaves its
events pending, and any consumer re-claims them after ``reclaim_idle_ms``. Applying is
idempotent by event id, so a re-claimed event that was in fact written is not counted twice.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Sequence
from types import FrameType

from feedserve.settings import FeaturizerSettings
from feedserve.store import open_event_log, open_store
from feedserve.store.base import EngagementEvent, EventLog, FeatureStore
from feedserve_featurizers.nearline import NearlineRefresher

log = logging.getLogger(__name__)


def drain_once(
    events: EventLog,
    store: FeatureStore,
    consumer: str,
    count: int = 256,
    block_ms: int = 1000,
    reclaim_idle_ms: int = 30_000,
    after_apply: Callable[[Sequence[EngagementEvent]], None] | None = None,
) -> int:
    """Apply one batch (re-claimed stale events first, then new ones); returns events handled.

    ``after_apply`` (the nearline workflow steps) runs after the write and before the
    acknowledgement: if it raises, the batch stays pending and is re-delivered.
    """
    batch = events.reclaim(consumer, reclaim_idle_ms, count)
    if len(batch) < count:
        batch += events.consume(consumer, count - len(batch), block_ms if not batch else 0)
    if not batch:
        return 0
    applied = [event for _, event in batch]
    store.apply_events(applied)
    if after_apply is not None:
        after_apply(applied)
    events.ack([delivery for delivery, _ in batch])
    return len(batch)


def run(settings: FeaturizerSettings, stop: threading.Event) -> None:
    store = open_store(settings)
    events = open_event_log(settings)
    consumer = f"{socket.gethostname()}-{os.getpid()}"
    refresher = NearlineRefresher.create(settings, store=store)
    steps = ", ".join(refresher.steps) if refresher else "none"
    log.info("event consumer %s started (nearline steps: %s)", consumer, steps)
    while not stop.is_set():
        try:
            drain_once(
                events,
                store,
                consumer,
                block_ms=500,
                reclaim_idle_ms=settings.event_reclaim_idle_ms,
                after_apply=refresher,
            )
        except Exception:  # keep consuming: unacknowledged events are re-claimed later
            log.exception("applying events failed; will retry")
            stop.wait(1.0)
    log.info("event consumer %s stopped", consumer)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    stop = threading.Event()

    def on_signal(_sig: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    run(FeaturizerSettings(), stop)


if __name__ == "__main__":
    main()
