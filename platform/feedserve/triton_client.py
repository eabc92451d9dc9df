"""The one module that talks to Triton (Open Inference Protocol v2 over HTTP, binary tensors).

Requests are built from ``feedserve.models.signatures``, so names and types cannot drift from
the model repository. Every call has a client-side deadline; failures surface as
``TritonUnavailable`` (server down, timeout) or ``TritonRequestError`` (the model rejected
the request), which the gateway maps to degraded answers or HTTP errors in one place.

``AsyncTritonClient`` speaks one of two protocols (``PROTOCOLS``; the gateway's
``inference_protocol`` setting): ``triton``, Triton's HTTP API with its binary-tensor
extension (the default: fastest against Triton), or ``v2``, the plain Open Inference
Protocol with JSON tensors and no Triton extension, which any v2 server answers (Triton, a
KServe InferenceService, KServe's own model server, ...). Each model may have an endpoint of
its own (``model_urls``: one KServe InferenceService per model); URLs are ``host:port`` or
``http(s)://host[:port]``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Mapping
from typing import Any, Literal, Protocol

import numpy as np
from tritonclient.http import InferInput, InferRequestedOutput
from tritonclient.http.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from feedserve import tracing
from feedserve.models.signatures import (
    GENERATIVE_RANKER,
    POST_INDEX,
    RETRIEVAL_ENCODER,
    SIGNATURES,
    ModelSignature,
)
from feedserve.resilience import CircuitBreaker
from feedserve.routing import VersionRouter


class TritonError(Exception):
    def __init__(self, model: str, message: str) -> None:
        super().__init__(f"{model}: {message}")
        self.model = model


class TritonUnavailable(TritonError):
    """The server did not answer in time or refused the connection."""

    def __init__(self, model: str, message: str, retryable: bool = False) -> None:
        super().__init__(model, message)
        self.retryable = retryable
        """The connection failed before the server could have worked on the request."""


RETRY_BACKOFF_S = 0.02


class TritonRequestError(TritonError):
    """The server answered with an error for this request."""


WireProtocol = Literal["triton", "v2"]
PROTOCOLS: tuple[WireProtocol, ...] = ("triton", "v2")
"""triton: Triton's binary-tensor extension; v2: the plain Open Inference Protocol (JSON)."""


JSON_HEADERS = {"Content-Type": "application/json"}
"""tritonclient posts a JSON-only request body untyped (``application/octet-stream``), which
strict v2 servers (KServe's model server) take for the binary extension and refuse."""


def split_url(url: str) -> tuple[str, bool]:
    """``host[:port]`` and whether to use TLS, from ``host:port`` or ``http(s)://...``."""
    base = url.strip().rstrip("/")
    ssl = base.startswith("https://")
    for scheme in ("http://", "https://"):
        base = base.removeprefix(scheme)
    return base, ssl


def _input(
    signature: ModelSignature, name: str, value: np.ndarray, binary: bool = True
) -> InferInput:
    spec = signature.input(name)
    arr = np.asarray(value, dtype=spec.numpy_dtype)[None, ...]  # batch of one
    tensor = InferInput(name, list(arr.shape), spec.dtype)
    tensor.set_data_from_numpy(arr, binary_data=binary)
    return tensor


async def _infer_call(where: str, call: Awaitable[Any], timeout_s: float) -> Any:
    """Await an inference call: server down, overloaded or slow → ``TritonUnavailable``; the
    request rejected (400) → ``TritonRequestError``."""
    try:
        async with asyncio.timeout(timeout_s):  # in this task: wait_for would make one
            return await call
    except TimeoutError as exc:
        raise TritonUnavailable(where, "timed out") from exc
    except InferenceServerException as exc:
        status = str(exc.status() or "")
        if status in {"400", "StatusCode.INVALID_ARGUMENT"}:
            raise TritonRequestError(where, exc.message() or str(exc)) from exc
        raise TritonUnavailable(where, exc.message() or str(exc)) from exc
    except OSError as exc:  # connection refused / reset (aiohttp errors subclass OSError)
        raise TritonUnavailable(where, str(exc) or type(exc).__name__, retryable=True) from exc
    except Exception as exc:
        if type(exc).__module__.startswith("aiohttp"):
            raise TritonUnavailable(where, str(exc) or type(exc).__name__, retryable=True) from exc
        raise


class InferenceClient(Protocol):
    """What the gateway needs from the inference pool (``AsyncTritonClient``; fakes in tests)."""

    async def embed_ids(
        self, input_ids: np.ndarray, timeout_s: float | None = None
    ) -> np.ndarray: ...

    async def embed_ids_tagged(
        self, input_ids: np.ndarray, timeout_s: float | None = None
    ) -> tuple[np.ndarray, str]: ...

    async def search(
        self,
        query: np.ndarray | None,
        k: int,
        exclude_ids: np.ndarray | None = None,
        timeout_s: float | None = None,
        *,
        query_post_ids: np.ndarray | None = None,
        blocked_author_ids: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]: ...

    async def rank(
        self,
        history: Mapping[str, np.ndarray],
        candidate_ids: np.ndarray,
        timeout_s: float | None = None,
    ) -> np.ndarray: ...

    async def ready(self, models: tuple[str, ...] = ...) -> bool: ...

    async def close(self) -> None: ...


class ModelCalls:
    """The three models' calls, built on ``_infer`` (Triton over HTTP, or in-process)."""

    async def _infer(
        self, signature: ModelSignature, inputs: Mapping[str, np.ndarray], timeout_s: float | None
    ) -> dict[str, np.ndarray]:
        raise NotImplementedError

    async def embed_ids(self, input_ids: np.ndarray, timeout_s: float | None = None) -> np.ndarray:
        return (await self.embed_ids_tagged(input_ids, timeout_s))[0]

    async def embed_ids_tagged(
        self, input_ids: np.ndarray, timeout_s: float | None = None
    ) -> tuple[np.ndarray, str]:
        """The embedding and the fingerprint of the encoder (embedding space) that made it."""
        out = await self._infer(RETRIEVAL_ENCODER, {"input_ids": input_ids}, timeout_s)
        return out["embedding"], tensor_text(out["space"])

    async def embed_text(self, text: str, timeout_s: float | None = None) -> np.ndarray:
        arr = np.array([text.encode("utf-8")], dtype=np.object_)
        out = await self._infer(RETRIEVAL_ENCODER, {"text": arr}, timeout_s)
        return out["embedding"]

    async def search(
        self,
        query: np.ndarray | None,
        k: int,
        exclude_ids: np.ndarray | None = None,
        timeout_s: float | None = None,
        *,
        query_post_ids: np.ndarray | None = None,
        blocked_author_ids: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` posts for an embedding, or for the mean of ``query_post_ids``."""
        inputs: dict[str, np.ndarray] = {"k": np.array([k], dtype=np.int32)}
        if query is not None:
            inputs["query"] = query
        if query_post_ids is not None:
            inputs["query_post_ids"] = np.asarray(query_post_ids, dtype=np.int64)
        for name, ids in (("exclude_ids", exclude_ids), ("blocked_author_ids", blocked_author_ids)):
            if ids is not None and len(ids):
                inputs[name] = np.asarray(ids, dtype=np.int64)
        out = await self._infer(POST_INDEX, inputs, timeout_s)
        return out["post_ids"], out["scores"]

    async def rank(
        self,
        history: Mapping[str, np.ndarray],
        candidate_ids: np.ndarray,
        timeout_s: float | None = None,
    ) -> np.ndarray:
        inputs = {
            "history_post_ids": history["history_post_ids"],
            "history_actions": history["history_actions"],
            "history_timestamps": history["history_timestamps"],
            "candidate_ids": candidate_ids,
        }
        if history.get("request_time") is not None:
            inputs["request_time"] = np.asarray([history["request_time"]], dtype=np.int64)
        out = await self._infer(GENERATIVE_RANKER, inputs, timeout_s)
        return out["scores"]


class AsyncTritonClient(ModelCalls):
    def __init__(
        self,
        url: str,
        timeout_s: float = 2.0,
        router: VersionRouter | None = None,
        breaker: CircuitBreaker | None = None,
        *,
        protocol: WireProtocol = "triton",
        model_urls: Mapping[str, str] | None = None,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        self.url = url
        self.timeout_s = timeout_s
        self.router = router
        """Picks the model version of each request (canary weights); none: Triton's."""
        self.breaker = breaker
        """Fails calls fast while Triton keeps failing (the caller's fallback answers)."""
        self.protocol = protocol
        self.model_urls = dict(model_urls or {})
        """Endpoints of models served elsewhere than ``url`` (model -> URL)."""
        self._clients: dict[tuple[str, bool], InferenceServerClient] = {}
        self._client = self._connect(url)

    def _connect(self, url: str) -> InferenceServerClient:
        base, ssl = split_url(url)
        if (base, ssl) not in self._clients:
            self._clients[base, ssl] = InferenceServerClient(
                url=base, ssl=ssl, conn_timeout=self.timeout_s
            )
        return self._clients[base, ssl]

    def client_for(self, model: str) -> InferenceServerClient:
        """The connection to the endpoint serving ``model``."""
        return self._connect(self.model_urls.get(model, self.url))

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()

    async def _infer(
        self, signature: ModelSignature, inputs: Mapping[str, np.ndarray], timeout_s: float | None
    ) -> dict[str, np.ndarray]:
        binary = self.protocol == "triton"
        tensors = [_input(signature, n, v, binary) for n, v in inputs.items()]
        outputs = [InferRequestedOutput(s.name, binary_data=binary) for s in signature.outputs]
        version = self.router.pick(signature.name) if self.router is not None else ""
        breaker = self.breaker
        if breaker is not None and not breaker.allow():
            wait = breaker.retry_after_s()
            raise TritonUnavailable(signature.name, f"circuit open (retry in {wait:.1f}s)")
        span, token = tracing.start(f"triton {signature.name}", **{"feedserve.version": version})
        try:
            try:
                result = await self._call(signature, tensors, outputs, version, timeout_s)
            except TritonUnavailable as exc:
                # inference is idempotent: a refused or reset connection (a pod restarting,
                # a Service switching endpoints) is worth one quick retry; a timeout is not,
                # it has spent the step's budget already
                if not exc.retryable or (breaker is not None and not breaker.allow()):
                    raise
                await asyncio.sleep(RETRY_BACKOFF_S)
                span.set_attribute("feedserve.retried", True)
                result = await self._call(signature, tensors, outputs, version, timeout_s)
        except TritonUnavailable:
            if breaker is not None:
                breaker.failure()
            raise
        finally:
            tracing.end(span, token)
        if breaker is not None:
            breaker.success()
        return {s.name: result.as_numpy(s.name)[0] for s in signature.outputs}

    async def _call(
        self,
        signature: ModelSignature,
        tensors: list[InferInput],
        outputs: list[InferRequestedOutput],
        version: str,
        timeout_s: float | None,
    ) -> Any:
        client = self.client_for(signature.name)
        typed = {} if self.protocol == "triton" else {"headers": dict(JSON_HEADERS)}
        call = client.infer(
            signature.name, tensors, outputs=outputs, model_version=version, **typed
        )
        return await _infer_call(signature.name, call, timeout_s or self.timeout_s)

    async def ready(self, models: tuple[str, ...] = tuple(SIGNATURES)) -> bool:
        """True when the server (each model's) and every model in ``models`` are ready."""
        try:
            clients = [self.client_for(m) for m in models] or [self._client]
            servers = {id(c): c for c in clients}  # each endpoint once
            for client in servers.values():
                if not await asyncio.wait_for(client.is_server_ready(), self.timeout_s):
                    return False
            for name in models:
                ready = self.client_for(name).is_model_ready(name)
                if not await asyncio.wait_for(ready, self.timeout_s):
                    return False
            return True
        except Exception:
            return False

    async def load_model(self, name: str) -> None:
        """(Re)load a model: Triton switches to the newest version in the repository."""
        try:
            await asyncio.wait_for(self.client_for(name).load_model(name), timeout=600)
        except InferenceServerException as exc:
            raise TritonRequestError(name, exc.message() or str(exc)) from exc

    async def _control(self, name: str, call: Any) -> Any:
        try:
            return await asyncio.wait_for(call, timeout=600)
        except InferenceServerException as exc:
            raise TritonRequestError(name, exc.message() or str(exc)) from exc
        except (OSError, TimeoutError) as exc:
            raise TritonUnavailable(name, str(exc) or type(exc).__name__) from exc
        except Exception as exc:
            if type(exc).__module__.startswith("aiohttp"):
                raise TritonUnavailable(name, str(exc) or type(exc).__name__) from exc
            raise

    async def model_config(self, name: str) -> dict[str, Any]:
        """The loaded model's complete configuration (JSON form of ``config.pbtxt``)."""
        config: dict[str, Any] = await self._control(
            name, self.client_for(name).get_model_config(name)
        )
        return config

    async def load_with_config(self, name: str, config: Mapping[str, Any]) -> None:
        """(Re)load ``name`` with ``config`` instead of its ``config.pbtxt`` (Triton's model
        control API; ``config`` must be complete, e.g. ``model_config`` with changes)."""
        call = self.client_for(name).load_model(name, config=json.dumps(config))
        await self._control(name, call)

    async def unload_model(self, name: str) -> None:
        await self._control(name, self.client_for(name).unload_model(name))

    async def ready_versions(self, name: str) -> list[int]:
        """Versions of ``name`` that are loaded and ready, ascending."""
        index = await self._control(name, self.client_for(name).get_model_repository_index())
        return sorted(
            int(m["version"])
            for m in index
            if m.get("name") == name and m.get("state") == "READY" and m.get("version")
        )

    async def model_version(self, name: str) -> str:
        """The newest ready version of ``name`` ("" if none is ready)."""
        index = await asyncio.wait_for(
            self.client_for(name).get_model_repository_index(), self.timeout_s
        )
        ready = [
            int(m["version"])
            for m in index
            if m.get("name") == name and m.get("state") == "READY" and m.get("version")
        ]
        return str(max(ready)) if ready else ""


class OipV2Client:
    """Any Open Inference Protocol v2 endpoint (KServe, Triton, …): plain JSON tensors, no
    Triton extensions, so that a remote workflow step can call servers other than ours.

    Tensors are sent with a leading batch dimension of one and returned without it (the
    layout of batching Triton models).
    """

    def __init__(self, url: str, timeout_s: float = 2.0) -> None:
        base, ssl = split_url(url)
        self.url = url
        self.timeout_s = timeout_s
        self._client = InferenceServerClient(url=base, ssl=ssl, conn_timeout=timeout_s)

    async def infer(
        self,
        model: str,
        tensors: Mapping[str, np.ndarray],
        outputs: tuple[str, ...],
        version: str = "",
        timeout_s: float | None = None,
    ) -> dict[str, np.ndarray]:
        inputs = []
        for name, value in tensors.items():
            arr = np.asarray(value)[None, ...]
            tensor = InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
            tensor.set_data_from_numpy(arr, binary_data=False)
            inputs.append(tensor)
        requested = [InferRequestedOutput(n, binary_data=False) for n in outputs]
        where = f"{model} at {self.url}"
        call = self._client.infer(
            model, inputs, model_version=version, outputs=requested, headers=dict(JSON_HEADERS)
        )
        result = await _infer_call(where, call, timeout_s or self.timeout_s)
        out: dict[str, np.ndarray] = {}
        for name in outputs:
            arr = result.as_numpy(name)
            if arr is None:
                raise TritonRequestError(where, f"response has no tensor {name!r}")
            out[name] = arr[0]
        return out

    async def close(self) -> None:
        await self._client.close()


def tensor_text(arr: np.ndarray) -> str:
    """The first element of a BYTES tensor as text."""
    raw = np.asarray(arr).reshape(-1)[0]
    return raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)


def run_sync(url: str, timeout_s: float, call: Any) -> Any:
    """Run ``call(client)`` (a coroutine function) from synchronous code, e.g. a Celery task."""

    async def main() -> Any:
        client = AsyncTritonClient(url, timeout_s)
        try:
            return await call(client)
        finally:
            await client.close()

    return asyncio.run(main())
