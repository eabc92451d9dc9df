"""How the gateway reaches the featurizer pool: Celery over Redis, or in-process.

Both implementations expose the same async interface. The in-process one is the embedded
default (no broker): the same pure functions run in a worker thread of the gateway.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

import numpy as np
from celery.exceptions import TimeoutError as CeleryTimeoutError

from feedserve.settings import FeaturizerSettings
from feedserve.store.base import EmbeddingLog, FeatureStore
from feedserve.triton_client import InferenceClient
from feedserve_featurizers import hydrate

log = logging.getLogger(__name__)


class FeaturizerUnavailable(Exception):
    """The featurizer pool did not answer in time (no worker, broker down)."""


class Featurizer(Protocol):
    async def hydrate_member(
        self,
        member_id: int,
        session: hydrate.SessionContext | None,
        now: int,
        with_prompt: bool = True,
    ) -> dict[str, Any]: ...

    async def hydrate_candidates(self, post_ids: list[int]) -> dict[str, Any]: ...

    async def index_post(self, post_id: int) -> None:
        """Schedule nearline indexing of a stored post; returns once it is scheduled."""

    async def ready(self) -> bool: ...

    async def close(self) -> None: ...


class CeleryFeaturizer:
    def __init__(self, settings: FeaturizerSettings, timeout_s: float) -> None:
        from feedserve_featurizers.celery_app import make_app

        self.app = make_app(settings)
        self.timeout_s = timeout_s

    def _call(self, name: str, *args: Any) -> Any:
        result = self.app.send_task(name, args=args)
        try:
            return result.get(timeout=self.timeout_s, disable_sync_subtasks=False)
        except CeleryTimeoutError as exc:
            result.forget()
            raise FeaturizerUnavailable(f"{name} got no answer in {self.timeout_s:.1f}s") from exc
        except OSError as exc:  # broker connection refused / reset
            raise FeaturizerUnavailable(f"{name}: broker unreachable ({exc})") from exc

    async def hydrate_member(
        self,
        member_id: int,
        session: hydrate.SessionContext | None,
        now: int,
        with_prompt: bool = True,
    ) -> dict[str, Any]:
        payload = session.model_dump() if session else None
        out: dict[str, Any] = await asyncio.to_thread(
            self._call, "feedserve.hydrate_member", member_id, payload, now, with_prompt
        )
        return out

    async def hydrate_candidates(self, post_ids: list[int]) -> dict[str, Any]:
        out: dict[str, Any] = await asyncio.to_thread(
            self._call, "feedserve.hydrate_candidates", post_ids
        )
        return out

    async def index_post(self, post_id: int) -> None:
        await asyncio.to_thread(self.app.send_task, "feedserve.index_post", args=(post_id,))

    async def ready(self) -> bool:
        try:
            return bool(await asyncio.to_thread(self._call, "feedserve.ping") == "pong")
        except Exception:
            return False

    async def close(self) -> None:
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
    ) -> dict[str, Any]:
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


__all__ = ["CeleryFeaturizer", "Featurizer", "FeaturizerUnavailable", "InProcessFeaturizer"]
