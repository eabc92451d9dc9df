"""How the gateway reaches the featurizer pool: Celery over Redis, or in-process.

Both implementations expose the same async interface. The in-process one is the embedded
default (no broker): the same pure functions run in a worker thread of the gateway.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import reprlib
import uuid
from collections.abc import Callable
from contextlib import suppress
from typing import Any, Protocol

import numpy as np
import redis.asyncio as aredis
from celery.utils.nodenames import anon_nodename
from kombu.serialization import dumps
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from feedserve import codec, tracing
from feedserve.settings import FeaturizerSettings
from feedserve.store.base import EmbeddingLog, FeatureStore
from feedserve.triton_client import InferenceClient
from feedserve_featurizers import hydrate

log = logging.getLogger(__name__)

CLIENT_NAME = "feedserve-featurizer-client"
"""The Redis client name of the connections ``CeleryFeaturizer`` opens."""

ORIGIN = anon_nodename()
"""The ``origin`` header of the task messages this process sends (Celery's own format)."""


class FeaturizerUnavailable(Exception):
    """The featurizer pool did not answer in time (no worker, broker down)."""


PromptCallback = Callable[[np.ndarray], None]
"""Receives the member prompt's token ids before hydration finishes (on the event loop)."""


class Featurizer(Protocol):
    async def hydrate_member(
        self,
        member_id: int,
        session: hydrate.SessionContext | None,
        now: int,
        with_prompt: bool = True,
        on_prompt: PromptCallback | None = None,
    ) -> dict[str, Any]:
        """The member's features; ``on_prompt`` (if given, and the prompt is made) receives
        the prompt's token ids as soon as they exist, before this returns."""

    async def hydrate_candidates(self, post_ids: list[int]) -> dict[str, Any]: ...

    async def index_post(self, post_id: int) -> None:
        """Schedule nearline indexing of a stored post; returns once it is scheduled."""

    async def ready(self) -> bool: ...

    async def close(self) -> None: ...


class FeaturizerTaskFailed(RuntimeError):
    """A featurizer task ran and raised (a bug or bad input, not an outage: HTTP 500)."""


class CeleryFeaturizer:
    """The Celery featurizer pool, called from the gateway's event loop with asyncio Redis.

    Tasks are Celery task messages (protocol 2, built by Celery's own ``as_task_v2`` and
    serializer registry) pushed onto the pool's queue as kombu's Redis transport does, so the
    pool is plain Celery workers; results are read from Celery's Redis result backend: the
    task ids of this client share a prefix, so one pattern subscription (made once, on one
    pub/sub connection) covers every result channel, and the reader hands each result to the
    request awaiting it. A call costs one Redis round trip before its task is queued (a
    subscription per task cost two, and one more after). No thread per call: Celery's
    synchronous client (``send_task`` + ``AsyncResult.get`` in a worker thread) cost ~1 ms
    more per call here, and its thread fought the event loop for the GIL.
    """

    def __init__(self, settings: FeaturizerSettings, timeout_s: float) -> None:
        from feedserve_featurizers.celery_app import make_app, prompt_channel, queue_name

        self.app = make_app(settings)
        self.timeout_s = timeout_s
        self.queue = queue_name(settings.redis_prefix)
        # named, so that CLIENT LIST tells the featurizer clients apart from the rest
        self.redis = aredis.Redis.from_url(settings.redis_url, client_name=CLIENT_NAME)
        self.backend = self.app.backend
        self._task_prefix = f"{uuid.uuid4().hex}-"
        """Every task id this client makes starts with it (hex: no glob pattern characters)."""
        self._results = bytes(self.backend.get_key_for_task(self._task_prefix)) + b"*"
        """The pattern of this client's result channels."""
        self._pending: dict[bytes, asyncio.Future[bytes]] = {}
        self._prompt_channel = prompt_channel
        self._early: dict[bytes, PromptCallback] = {}
        """Prompt channels (``prompt_channel``) of the calls in flight that asked for one."""
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    # --- results ------------------------------------------------------------------------------
    async def _listening(self) -> PubSub:
        """The pub/sub connection, its reader started (once; again after a lost connection)."""
        async with self._lock:
            if self._pubsub is None or self._reader is None or self._reader.done():
                if self._pubsub is not None:  # the lost connection's: let it go
                    with suppress(RedisError, OSError):
                        await self._pubsub.aclose()  # type: ignore[attr-defined]
                pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                await pubsub.psubscribe(self._results)
                self._pubsub = pubsub
                self._reader = asyncio.create_task(self._read(pubsub))
            return self._pubsub

    async def _read(self, pubsub: PubSub) -> None:
        try:
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is not None and message.get("type") == "pmessage":
                    channel = message["channel"]
                    waiter = self._pending.get(channel)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(message["data"])
                    elif (early := self._early.pop(channel, None)) is not None:
                        try:
                            early(codec.decode(message["data"]))
                        except Exception:  # the receiver's bug: not a lost connection
                            log.exception("the early member prompt's receiver failed")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the connection is gone: fail the waiting calls now
            log.warning("featurizer result connection lost: %s", exc)
            for waiter in self._pending.values():
                if not waiter.done():
                    waiter.set_exception(FeaturizerUnavailable(f"result backend lost: {exc}"))

    def _envelope(self, name: str, task_id: str, args: tuple[Any, ...]) -> str:
        """The task message as kombu's Redis transport stores it in the queue's list."""
        # argsrepr: Celery's saferepr walked every candidate id (~1.5 ms per feed under load)
        argsrepr = reprlib.repr(args)
        message = self.app.amqp.as_task_v2(
            task_id, name, args, {}, origin=ORIGIN, argsrepr=argsrepr, kwargsrepr="{}"
        )
        headers = {**message.headers, **tracing.inject()}  # the trace continues in the worker
        content_type, encoding, body = dumps(message.body, serializer=codec.SERIALIZER_NAME)
        return json.dumps(
            {
                "body": base64.b64encode(body).decode("ascii"),
                "content-encoding": encoding,
                "content-type": content_type,
                "headers": headers,
                "properties": {
                    **message.properties,
                    "delivery_mode": 2,
                    "priority": 0,
                    "body_encoding": "base64",
                    "delivery_tag": str(uuid.uuid4()),
                    "delivery_info": {"exchange": self.queue, "routing_key": self.queue},
                },
            }
        )

    async def _publish(self, name: str, task_id: str, args: tuple[Any, ...]) -> None:
        """Push the task onto the pool's queue (the broker down → ``FeaturizerUnavailable``)."""
        try:
            await self.redis.lpush(self.queue, self._envelope(name, task_id, args))
        except (RedisError, OSError) as exc:
            raise FeaturizerUnavailable(f"{name}: broker unreachable ({exc})") from exc

    async def _call(self, name: str, *args: Any, on_prompt: PromptCallback | None = None) -> Any:
        task_id = f"{self._task_prefix}{uuid.uuid4().hex}"
        channel = bytes(self.backend.get_key_for_task(task_id))
        waiter: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[channel] = waiter
        if on_prompt is not None:
            self._early[self._prompt_channel(channel)] = on_prompt
        try:
            try:
                await self._listening()  # subscribed before the task exists: nothing is missed
            except (RedisError, OSError) as exc:
                raise FeaturizerUnavailable(f"{name}: broker unreachable ({exc})") from exc
            await self._publish(name, task_id, args)
            raw: bytes | None
            try:
                raw = await asyncio.wait_for(waiter, self.timeout_s)
            except TimeoutError:
                raw = await self._stored_result(channel)  # published before we listened?
                if raw is None:
                    raise FeaturizerUnavailable(
                        f"{name} got no answer in {self.timeout_s:.1f}s"
                    ) from None
        finally:
            self._pending.pop(channel, None)
            if on_prompt is not None:
                self._early.pop(self._prompt_channel(channel), None)
        return self._result(name, raw)

    async def _stored_result(self, key: bytes) -> bytes | None:
        with suppress(RedisError, OSError):
            raw = await self.redis.get(key)
            if isinstance(raw, bytes):
                return raw
            await self.redis.delete(key)  # forget: a late result is not kept for nobody
        return None

    def _result(self, name: str, raw: bytes) -> Any:
        meta = self.backend.decode_result(raw)
        if meta.get("status") == "SUCCESS":
            return meta.get("result")
        exc = self.backend.exception_to_python(meta.get("result"))
        raise FeaturizerTaskFailed(f"{name} failed: {type(exc).__name__}: {exc}") from exc

    # --- the Featurizer interface -------------------------------------------------------------
    async def hydrate_member(
        self,
        member_id: int,
        session: hydrate.SessionContext | None,
        now: int,
        with_prompt: bool = True,
        on_prompt: PromptCallback | None = None,
    ) -> dict[str, Any]:
        payload = session.model_dump() if session else None
        early = on_prompt is not None and with_prompt
        out: dict[str, Any] = await self._call(
            "feedserve.hydrate_member",
            member_id,
            payload,
            now,
            with_prompt,
            early,
            on_prompt=on_prompt if early else None,
        )
        return out

    async def hydrate_candidates(self, post_ids: list[int]) -> dict[str, Any]:
        out: dict[str, Any] = await self._call("feedserve.hydrate_candidates", post_ids)
        return out

    async def index_post(self, post_id: int) -> None:
        await self._publish("feedserve.index_post", str(uuid.uuid4()), (post_id,))

    async def ready(self) -> bool:
        try:
            return bool(await self._call("feedserve.ping") == "pong")
        except Exception:
            return False

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._pubsub is not None:
            with suppress(RedisError, OSError):
                await self._pubsub.aclose()  # type: ignore[attr-defined]  # (stubs predate it)
        await self.redis.aclose()  # type: ignore[attr-defined]
        self.app.close()


class InProcessFeaturizer:
    """Runs the featurization functions in the gateway process (embedded mode)."""

    def __init__(
        self,
        ctx: hydrate.FeaturizerContext,
        triton: InferenceClient,
        embedding_log: EmbeddingLog | None,
    ) -> None:
        """``embedding_log`` None: this featurizer does not index posts (a batch job's)."""
        self.ctx = ctx
        self.triton = triton
        self.embedding_log = embedding_log
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def create(
        cls,
        settings: FeaturizerSettings,
        store: FeatureStore,
        triton: InferenceClient,
        embedding_log: EmbeddingLog,
    ) -> InProcessFeaturizer:
        return cls(hydrate.FeaturizerContext.load(settings, store=store), triton, embedding_log)

    async def hydrate_member(
        self,
        member_id: int,
        session: hydrate.SessionContext | None,
        now: int,
        with_prompt: bool = True,
        on_prompt: PromptCallback | None = None,
    ) -> dict[str, Any]:
        """``on_prompt`` is not called: in one process the model and the rest of the
        hydration share the GIL, and handing the prompt over early gained nothing measurable
        (monolith p50 at 1 rps 112 and 111 ms with it, 110 ms without)."""
        return await asyncio.to_thread(
            hydrate.hydrate_member, self.ctx, member_id, session, now, with_prompt
        )

    async def hydrate_candidates(self, post_ids: list[int]) -> dict[str, Any]:
        return await asyncio.to_thread(hydrate.hydrate_candidates, self.ctx, post_ids)

    async def _index(self, post_id: int, attempts: int = 8) -> None:
        if self.embedding_log is None:
            raise RuntimeError("this in-process featurizer has no embedding log to index into")
        log_ = self.embedding_log
        loop = asyncio.get_running_loop()

        def embed(ids: np.ndarray) -> tuple[np.ndarray, str]:  # called from the worker thread
            call = self.triton.embed_ids_tagged(ids, timeout_s=10.0)
            return asyncio.run_coroutine_threadsafe(call, loop).result()

        delay = 0.2
        for attempt in range(attempts):
            try:
                await asyncio.to_thread(hydrate.index_post, self.ctx, post_id, embed, log_)
                return
            except Exception as exc:  # retried with backoff, like the Celery task
                log.warning("indexing post %s failed (attempt %d): %s", post_id, attempt + 1, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        log.error("giving up indexing post %s", post_id)

    async def index_post(self, post_id: int) -> None:
        task = asyncio.create_task(self._index(post_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()


__all__ = [
    "CeleryFeaturizer",
    "Featurizer",
    "FeaturizerTaskFailed",
    "FeaturizerUnavailable",
    "InProcessFeaturizer",
]
