"""The featurizer worker's task pool: Celery's thread pool, less a thread hand-over when idle.

Celery's ``threads`` pool hands every task from the consumer's thread to a pool thread, which
has to wake up and take the interpreter lock: ~0.3 ms on the member's critical path at low load
(measured on the 2-core CI machine, where an idle CPU sleeps). This pool runs a request-path
task (``broker.REQUEST_PATH_TASKS``, a few milliseconds of work) at once in the consumer's
thread when no task is running — what Celery's ``solo`` pool does for every task — and hands
everything else to the threads as before: nearline work (``index_post`` waits on Triton), and
every task while another runs, so concurrency is unchanged under load.

Selected by ``make_app`` (``worker_pool``); ``--pool`` on the command line overrides it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from celery.concurrency import thread
from celery.concurrency.base import apply_target

from feedserve_featurizers.broker import REQUEST_PATH_TASKS


class TaskPool(thread.TaskPool):
    """Thread pool; an idle pool runs a request-path task in the consumer's thread."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._running = 0
        self._lock = threading.Lock()
        self.inline = 0
        """Tasks run in the consumer's thread so far."""

    def on_apply(
        self,
        target: Callable[..., Any],
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        callback: Callable[..., Any] | None = None,
        accept_callback: Callable[..., Any] | None = None,
        **rest: Any,
    ) -> thread.ApplyResult:
        name = args[0] if args else None  # Celery's tracer is called with the task name first
        with self._lock:
            idle = self._running == 0
            self._running += 1
        if idle and name in REQUEST_PATH_TASKS:
            done: Future[Any] = Future()
            try:
                done.set_result(apply_target(target, args, kwargs, callback, accept_callback))
            except Exception as exc:  # what a pool thread's future would hold
                done.set_exception(exc)
            finally:
                self._finished()
                self.inline += 1
            return thread.ApplyResult(done)
        result = super().on_apply(target, args, kwargs, callback, accept_callback, **rest)
        result.f.add_done_callback(lambda _: self._finished())
        return result

    def _finished(self) -> None:
        with self._lock:
            self._running -= 1


POOL = f"{__name__}:{TaskPool.__qualname__}"
"""The ``worker_pool`` setting that selects this pool."""
