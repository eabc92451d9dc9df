"""The featurizer pool's Celery app (broker and result backend: Redis).

Messages use feedserve's compact binary codec (msgpack + raw numpy buffers), never pickle.
The task queue is named after the Redis key prefix, so several stacks can share one Redis.
"""

from __future__ import annotations

from celery import Celery
from kombu.serialization import register

from feedserve import codec
from feedserve.settings import FeaturizerSettings

register(
    codec.SERIALIZER_NAME,
    codec.encode,
    codec.decode,
    content_type=codec.CONTENT_TYPE,
    content_encoding="binary",
)


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
