"""The featurizer pool's broker transport: kombu's Redis transport, with its ack emulation kept
for the work that must not be lost and skipped for the request path.

kombu emulates acknowledgements on Redis by copying every message it takes off a queue into an
"unacked" hash (a MULTI/EXEC round trip before the worker may start the task, another to drop
the copy after it), and re-queues the copies of a worker that died once the visibility timeout
(300 s) has passed. That is what nearline work needs — an ``index_post`` accepted by the
gateway must run even if its worker is killed — but a request-path task (``REQUEST_PATH_TASKS``)
has a caller that waits for it a few seconds at most: a copy re-queued minutes later would only
do work nobody reads. For those tasks the two round trips cost ~0.7 ms on the member's critical
path at low load (measured on the 2-core CI machine) and buy nothing, so they are kept in memory
only (the prefetch accounting kombu does for every message). A worker that shuts down warmly
still puts its reserved, unstarted request-path messages back on the queue, as kombu does for
the others, so a rolling restart does not strand requests.

The queue (its ``LLEN``: the autoscaler's queue-depth signal), the message format and the
workers are unchanged: ``make_app`` names this transport in ``broker_transport``.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis, virtual

REQUEST_PATH_TASKS = frozenset(
    {"feedserve.hydrate_member", "feedserve.hydrate_candidates", "feedserve.ping"}
)
"""Tasks a caller waits for synchronously (the gateway's online path and readiness)."""


def request_path(message: Any) -> bool:
    """Whether ``message`` is a task message of a request-path task."""
    headers = getattr(message, "headers", None) or {}
    return headers.get("task") in REQUEST_PATH_TASKS


class QoS(redis.QoS):
    """kombu's Redis ack emulation for all but the request-path tasks."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.untracked: set[str] = set()
        """Delivery tags of the request-path messages held (no copy in Redis)."""

    def append(self, message: Any, delivery_tag: str) -> None:
        if request_path(message):
            self.untracked.add(delivery_tag)
            virtual.QoS.append(self, message, delivery_tag)
        else:
            super().append(message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        if delivery_tag in self.untracked:
            self.untracked.discard(delivery_tag)
            virtual.QoS.ack(self, delivery_tag)
        else:
            super().ack(delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if delivery_tag in self.untracked:
            if requeue:
                self._requeue(delivery_tag, leftmost=True)
            self.untracked.discard(delivery_tag)
            virtual.QoS.ack(self, delivery_tag)
        else:
            super().reject(delivery_tag, requeue)

    def restore_by_tag(self, tag: str, client: Any = None, leftmost: bool = False) -> None:
        """Put a held message back on its queue (a warm shutdown restores every reserved one)."""
        if tag in self.untracked:
            self._requeue(tag, client, leftmost)
        else:
            super().restore_by_tag(tag, client, leftmost)

    def _requeue(self, tag: str, client: Any = None, leftmost: bool = False) -> None:
        message = self._delivered.get(tag)
        if message is None:
            return
        info = message.delivery_info
        with self.channel.conn_or_acquire(client) as conn:
            pipe = conn.pipeline()
            self.channel._do_restore_message(
                message._raw, info["exchange"], info["routing_key"], pipe, leftmost
            )
            pipe.execute()
        self.untracked.discard(tag)


class Channel(redis.Channel):
    QoS = QoS


class Transport(redis.Transport):
    Channel = Channel


TRANSPORT = f"{__name__}:{Transport.__qualname__}"
"""The ``broker_transport`` setting that selects this transport."""
