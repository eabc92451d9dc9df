"""The featurizer pool's Celery app (broker and result backend: Redis).

Messages use feedserve's compact binary codec (msgpack + raw numpy buffers), never pickle.
The task queue is named after the Redis key prefix, so several stacks can share one Redis.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from typing import Any

from celery import Celery, signals, states
from celery.backends.redis import RedisBackend
from kombu.serialization import register
from kombu.utils.encoding import bytes_to_str

from feedserve import codec, tracing
from feedserve.settings import FeaturizerSettings
from feedserve_featurizers import broker, pool

log = logging.getLogger(__name__)

register(
    codec.SERIALIZER_NAME,
    codec.encode,
    codec.decode,
    content_type=codec.CONTENT_TYPE,
    content_encoding="binary",
)


_spans: dict[str, contextlib.ExitStack] = {}


@signals.before_task_publish.connect
def _publish_trace(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """The sender's trace context rides in the task message's headers."""
    if headers is not None:
        headers.update(tracing.inject())


@signals.task_prerun.connect
def _start_span(task_id: str = "", task: Any = None, **_: Any) -> None:
    request = getattr(task, "request", None)
    headers = {
        k: getattr(request, k, None) or (getattr(request, "headers", None) or {}).get(k)
        for k in ("traceparent", "tracestate")
    }
    stack = contextlib.ExitStack()
    stack.enter_context(
        tracing.continued({k: v for k, v in headers.items() if v}, f"celery {task.name}")
    )
    _spans[task_id] = stack


@signals.task_postrun.connect
def _end_span(task_id: str = "", **_: Any) -> None:
    stack = _spans.pop(task_id, None)
    if stack is not None:
        stack.close()


@signals.worker_init.connect
def _configure_tracing(**_: Any) -> None:
    settings = FeaturizerSettings()
    tracing.configure("feedserve-featurizer", settings.otlp_endpoint, settings.trace_file)


PER_TASK_LOGGERS = ("celery.worker.strategy", "celery.app.trace", "celery.worker.request")
"""Celery's loggers of a line per task received / succeeded (INFO); errors are WARNING+."""


@signals.worker_init.connect
def _per_task_logs(**_: Any) -> None:
    """Without ``log_each_task``, Celery's per-task INFO lines are off (its tracer and task
    strategy read the level once, when the worker builds them, after this signal)."""
    if not FeaturizerSettings().log_each_task:
        for name in PER_TASK_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


@signals.worker_ready.connect
def _load_and_freeze(**_: Any) -> None:
    """Load the worker's context (store, tokenizer, bucket tables) before the first task, and
    take what is loaded out of the cyclic collector's generations (``gc.freeze``): its full
    collections walked every loaded object, tens of milliseconds on one task in many."""
    from feedserve_featurizers import tasks

    try:
        tasks.context()
    except Exception:  # readiness (the ping task) reports it, as it did before
        log.exception("loading the featurizer context failed")
    gc.freeze()


@signals.worker_init.connect
def _check_backend(**_: Any) -> None:
    """A featurizer backend that cannot run here stops the worker at start-up, with one clear
    line and no traceback (e.g. ``dali`` without the ``feedserve[dali]`` extra)."""
    from feedserve_featurizers.batch import BackendUnavailable, check_backend

    try:
        check_backend(FeaturizerSettings())
    except BackendUnavailable as exc:
        raise SystemExit(f"feedserve featurizer: {exc}") from None


class ResultBackend(RedisBackend):
    """Celery's Redis result backend, less one read per task.

    Before each write Celery reads the stored result, so that a duplicate run of a lost task
    cannot overwrite a success with another state (a retry, a failure). A success overwriting
    a success is harmless here (the tasks are idempotent), so successes are written at once:
    the read cost a Redis round trip (~0.4 ms) between a task's end and its caller's answer.
    Every other state keeps Celery's check.
    """

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        if state != states.SUCCESS:
            return super()._store_result(task_id, result, state, traceback, request, **kwargs)
        meta = self._get_result_meta(result=result, state=state, traceback=None, request=request)
        meta["task_id"] = bytes_to_str(task_id)
        self._set_with_state(self.get_key_for_task(task_id), self.encode(meta), state)
        return result


def backend_url(redis_url: str) -> str:
    """The ``result_backend`` setting: ``ResultBackend`` on Redis, Celery's in-memory cache
    without Redis (embedded mode and tests)."""
    if not redis_url:
        return "cache+memory://"
    return f"{ResultBackend.__module__}:{ResultBackend.__qualname__}+{redis_url}"


PROMPT_SUFFIX = b".prompt"


def prompt_channel(result_key: str | bytes) -> bytes:
    """Where ``hydrate_member`` publishes the prompt's tokens early: the task's result
    channel + ``PROMPT_SUFFIX`` (a caller's pattern subscription covers both)."""
    key = result_key.encode() if isinstance(result_key, str) else bytes(result_key)
    return key + PROMPT_SUFFIX


def queue_name(prefix: str) -> str:
    return f"{prefix}.featurizer"


def make_app(settings: FeaturizerSettings) -> Celery:
    app = Celery("feedserve_featurizers", include=["feedserve_featurizers.tasks"])
    app.conf.update(
        broker_url=settings.redis_url or "memory://",
        # kombu's Redis transport, less its ack emulation for request-path tasks (``broker``)
        broker_transport=broker.TRANSPORT if settings.redis_url else None,
        # Celery's thread pool, running a request-path task inline when idle (``pool``)
        worker_pool=pool.POOL,
        result_backend=backend_url(settings.redis_url),
        task_serializer=codec.SERIALIZER_NAME,
        result_serializer=codec.SERIALIZER_NAME,
        accept_content=[codec.SERIALIZER_NAME],
        result_accept_content=[codec.SERIALIZER_NAME],
        task_default_queue=queue_name(settings.redis_prefix),
        result_expires=300,
        worker_prefetch_multiplier=1,
        task_acks_late=True,  # every task is idempotent: a lost worker's task runs again
        task_reject_on_worker_lost=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        broker_transport_options={"visibility_timeout": 300},
    )
    return app


app = make_app(FeaturizerSettings())
