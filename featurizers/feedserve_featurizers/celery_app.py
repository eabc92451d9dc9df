"""The featurizer pool's Celery app (broker and result backend: Redis).

Messages use feedserve's compact binary codec (msgpack + raw numpy buffers), never pickle.
The task queue is named after the Redis key prefix, so several stacks can share one Redis.
"""

from __future__ import annotations

import contextlib
from typing import Any

from celery import Celery, signals
from kombu.serialization import register

from feedserve import codec, tracing
from feedserve.settings import FeaturizerSettings

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


@signals.worker_init.connect
def _check_backend(**_: Any) -> None:
    """A featurizer backend that cannot run here stops the worker at start-up, with one clear
    line and no traceback (e.g. ``dali`` without the ``feedserve[dali]`` extra)."""
    from feedserve_featurizers.batch import BackendUnavailable, check_backend

    try:
        check_backend(FeaturizerSettings())
    except BackendUnavailable as exc:
        raise SystemExit(f"feedserve featurizer: {exc}") from None


def queue_name(prefix: str) -> str:
    return f"{prefix}.featurizer"


def make_app(settings: FeaturizerSettings) -> Celery:
    app = Celery("feedserve_featurizers", include=["feedserve_featurizers.tasks"])
    app.conf.update(
        broker_url=settings.redis_url or "memory://",
        result_backend=settings.redis_url or "cache+memory://",
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
