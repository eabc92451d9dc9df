"""The broker transport: kombu's ack emulation for nearline tasks only (a real Redis)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection

from feedserve.settings import FeaturizerSettings
from feedserve.store.redis_store import redis_answers
from feedserve_featurizers import broker
from feedserve_featurizers.celery_app import make_app

REDIS_URL = "redis://127.0.0.1:6379/0"

pytestmark = pytest.mark.redis


@pytest.fixture
def keys() -> Iterator[dict[str, str]]:
    if not redis_answers(REDIS_URL):
        pytest.fail(f"Redis does not answer at {REDIS_URL}; .ci/run starts one (see README)")
    p = f"brokertest{uuid.uuid4().hex[:8]}"
    names = {
        "queue": f"{p}.featurizer",
        "unacked_key": f"{p}.unacked",
        "unacked_index_key": f"{p}.unacked_index",
        "unacked_mutex_key": f"{p}.unacked_mutex",
    }
    yield names
    client = redis.Redis.from_url(REDIS_URL)
    client.delete(*names.values())
    client.close()


@pytest.fixture
def conn(keys: dict[str, str]) -> Iterator[Connection]:
    options = {k: v for k, v in keys.items() if k != "queue"}
    with Connection(REDIS_URL, transport=broker.TRANSPORT, transport_options=options) as c:
        yield c


def put(conn: Connection, queue: str, task: str) -> None:
    conn.SimpleQueue(queue).put({"task": task}, headers={"task": task})


def unacked(keys: dict[str, str]) -> dict[bytes, bytes]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return client.hgetall(keys["unacked_key"])
    finally:
        client.close()


def test_the_app_uses_it_with_redis_and_not_without() -> None:
    app = make_app(FeaturizerSettings(redis_url=REDIS_URL, redis_prefix="b"))
    assert app.connection_for_write().transport_cls == broker.TRANSPORT
    app = make_app(FeaturizerSettings(redis_url=""))
    assert "memory" in str(app.connection_for_write().transport_cls)


def test_request_path_tasks_are_the_apps_tasks() -> None:
    """The names are written in ``broker`` (which the tasks module cannot be imported into):
    a renamed task would silently lose its place there."""
    from feedserve_featurizers import tasks

    registered = set(tasks.app.tasks)
    assert broker.REQUEST_PATH_TASKS.issubset(registered)
    assert "feedserve.index_post" in registered - broker.REQUEST_PATH_TASKS


@pytest.mark.parametrize(
    ("task", "expected"),
    [("feedserve.hydrate_member", True), ("feedserve.index_post", False), (None, False)],
)
def test_request_path(task: str | None, expected: bool) -> None:
    class Message:
        headers: dict[str, Any] = {} if task is None else {"task": task}

    assert broker.request_path(Message()) is expected


def test_only_nearline_messages_get_a_copy_in_redis(conn: Connection, keys: dict[str, str]) -> None:
    queue = conn.SimpleQueue(keys["queue"])
    put(conn, keys["queue"], "feedserve.hydrate_member")
    put(conn, keys["queue"], "feedserve.index_post")
    first, second = queue.get(timeout=2), queue.get(timeout=2)
    assert first.headers["task"] == "feedserve.hydrate_member"
    held = unacked(keys)
    assert list(held) == [second.delivery_tag.encode()]  # the index_post, not the request
    first.ack()
    second.ack()
    assert unacked(keys) == {}


def test_a_warm_shutdown_puts_reserved_requests_back(
    conn: Connection, keys: dict[str, str]
) -> None:
    queue = conn.SimpleQueue(keys["queue"])
    put(conn, keys["queue"], "feedserve.hydrate_candidates")
    put(conn, keys["queue"], "feedserve.index_post")
    reserved = [queue.get(timeout=2), queue.get(timeout=2)]
    assert len(unacked(keys)) == 1
    conn.default_channel.qos.restore_unacked()  # what kombu does when the worker stops
    assert unacked(keys) == {}
    again = sorted(queue.get(timeout=2).headers["task"] for _ in reserved)
    assert again == ["feedserve.hydrate_candidates", "feedserve.index_post"]


def test_a_rejected_request_is_requeued_only_when_asked(
    conn: Connection, keys: dict[str, str]
) -> None:
    queue = conn.SimpleQueue(keys["queue"])
    put(conn, keys["queue"], "feedserve.hydrate_member")
    queue.get(timeout=2).reject(requeue=True)
    message = queue.get(timeout=2)
    assert message.headers["task"] == "feedserve.hydrate_member"
    message.reject()
    with pytest.raises(queue.Empty):
        queue.get(timeout=0.2)
    assert unacked(keys) == {}
