"""The FastAPI gateway: thin routes over ``FeedService``.

Run with ``uvicorn feedserve.gateway.app:create_app --factory`` (``feedserve up`` does).
In embedded mode (no ``FEEDSERVE_REDIS_URL``) the gateway holds the in-memory feature store,
loads the demo data set into it, runs the featurizer in-process and applies engagement events
with an in-process consumer; otherwise it talks to Redis and the Celery featurizer pool.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import pathlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Annotated

from fastapi import FastAPI, Path, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from feedserve import __version__, tracing
from feedserve.contracts import MAX_ID
from feedserve.gateway import errors, guard
from feedserve.gateway.metrics import GatewayMetrics
from feedserve.gateway.schemas import (
    ErrorBody,
    EventsAccepted,
    EventsRequest,
    FeedRequest,
    FeedResponse,
    Health,
    PostAccepted,
    PostEdit,
    PostIn,
)
from feedserve.gateway.service import FeedConfig, FeedService
from feedserve.resilience import CircuitBreaker
from feedserve.routing import VersionRouter
from feedserve.settings import FeaturizerSettings, GatewaySettings
from feedserve.store import open_embedding_log, open_event_log, open_store
from feedserve.store.base import EventLog, FeatureStore
from feedserve.triton_client import AsyncTritonClient, InferenceClient
from feedserve.workflow.spec import load_configured
from feedserve_featurizers.client import CeleryFeaturizer, Featurizer, InProcessFeaturizer
from feedserve_featurizers.consumer import drain_once
from feedserve_featurizers.nearline import NearlineRefresher, engagement_steps

log = logging.getLogger("feedserve.gateway")

ERRORS: dict[int | str, dict[str, object]] = {
    422: {"model": ErrorBody, "description": "invalid request; `details` names each field"},
    503: {"model": ErrorBody, "description": "a dependency (featurizer pool, store) is down"},
}


@dataclass
class Runtime:
    service: FeedService
    store: FeatureStore
    events: EventLog
    featurizer: Featurizer
    triton: InferenceClient
    embedded: bool
    refresher: NearlineRefresher | None = None


def _load_embedded_data(settings: GatewaySettings, store: FeatureStore) -> None:
    from feedserve.data.io import read_dataset

    ds = read_dataset(settings.data_dir)
    store.bulk_load(ds.members, ds.posts, ds.interactions)
    log.info("loaded %d members, %d posts into the in-memory store", len(ds.members), len(ds.posts))


async def _consume_forever(
    events: EventLog, store: FeatureStore, refresher: NearlineRefresher | None
) -> None:
    """Embedded mode's nearline consumer (the featurizer pool runs it otherwise)."""
    while True:
        try:
            handled = await asyncio.to_thread(
                drain_once, events, store, "gateway", 256, 50, after_apply=refresher
            )
            if not handled:
                await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("applying events failed; retrying")
            await asyncio.sleep(1.0)


def build_runtime(settings: GatewaySettings, triton: InferenceClient) -> Runtime:
    store = open_store(settings)
    events = open_event_log(settings)
    embedding_log = open_embedding_log(settings)
    fsettings = FeaturizerSettings(
        **settings.model_dump(include=set(FeaturizerSettings.model_fields))
    )
    featurizer: Featurizer
    refresher = None
    workflow = load_configured(settings.workflow)
    if settings.embedded:
        _load_embedded_data(settings, store)
        in_process = InProcessFeaturizer.create(
            fsettings, store, triton, open_embedding_log(settings)
        )
        featurizer = in_process
        if engagement_steps(workflow):
            refresher = NearlineRefresher(workflow, in_process.ctx, settings.triton_url)
    else:
        featurizer = CeleryFeaturizer(fsettings, settings.featurizer_timeout_s)
    service = FeedService(
        store,
        events,
        embedding_log,
        featurizer,
        triton,
        GatewayMetrics(),
        FeedConfig(retrieval_k=settings.retrieval_k, max_per_author=settings.max_per_author),
        workflow,
        settings.triton_timeout_s,
    )
    return Runtime(service, store, events, featurizer, triton, settings.embedded, refresher)


RuntimeFactory = Callable[[GatewaySettings, InferenceClient], Runtime]


def inference_client(settings: GatewaySettings) -> InferenceClient:
    """Triton or any Open Inference Protocol v2 endpoint(s) (with canary routing and a
    circuit breaker), or the models in this process."""
    if settings.inference == "local":
        from feedserve.models.local_inference import LocalInferenceClient
        from feedserve.settings import ModelSettings

        fields = set(ModelSettings.model_fields) & set(GatewaySettings.model_fields)
        return LocalInferenceClient(ModelSettings(**settings.model_dump(include=fields)))
    router = VersionRouter(pathlib.Path(settings.routing_dir)) if settings.routing_dir else None
    breaker = CircuitBreaker(settings.triton_breaker_failures, settings.triton_breaker_cooldown_s)
    return AsyncTritonClient(
        settings.triton_url, settings.triton_timeout_s, router, breaker=breaker,
        protocol=settings.inference_protocol, model_urls=settings.model_urls,
    )  # fmt: skip


def _runtime(scope: Scope) -> Runtime | None:
    return getattr(scope["app"].state, "rt", None)


class Admit:
    """Size, key, rate and load checks before any route (probes and metrics are open).

    Plain ASGI middleware, as is ``Observe``: Starlette's ``BaseHTTPMiddleware`` (what
    ``@app.middleware`` builds) relays every response through a memory stream and a task
    group, which cost ~0.5 ms per request for the two of them."""

    def __init__(self, app: ASGIApp, settings: GatewaySettings) -> None:
        self.app = app
        self.max_body_bytes = settings.max_body_bytes
        self.keys = guard.ApiKeys(settings.api_keys.split(","), settings.api_key_sha256.split(","))
        self.limits = guard.RateLimits(settings.rate_limit_per_s, settings.rate_limit_burst)
        self.gate = guard.Gate(settings.max_in_flight)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in guard.OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        rt = _runtime(scope)
        headers = Headers(scope=scope)
        try:
            guard.check_body(
                scope["method"],
                headers.get("content-length"),
                "chunked" in headers.get("transfer-encoding", "").lower(),
                self.max_body_bytes,
            )
            key_id = self.keys.identify(headers.get("x-api-key")) if self.keys.enabled else "-"
            self.limits.check(key_id)
            self.gate.enter()
        except tuple(errors.GUARD_STATUS) as exc:
            if rt is not None:
                rt.service.metrics.rejected.labels(errors.GUARD_STATUS[type(exc)][1]).inc()
            await errors.guard_response(exc)(scope, receive, send)
            return
        if rt is not None:
            rt.service.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            self.gate.leave()
            if rt is not None:
                rt.service.metrics.in_flight.dec()


class Observe:
    """Request latency and count by route and status, and one trace span per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        span, token = tracing.start(f"HTTP {scope['method']}")
        status = 500  # an exception no handler took becomes a 500 outside this middleware

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            tracing.end(span, token, **{"http.route": path})
            rt = _runtime(scope)
            if rt is not None:
                rt.service.metrics.latency.labels(path).observe(time.perf_counter() - start)
                rt.service.metrics.requests.labels(path, str(status)).inc()


def create_app(
    settings: GatewaySettings | None = None, runtime_factory: RuntimeFactory = build_runtime
) -> FastAPI:
    """The gateway app; ``runtime_factory`` builds its dependencies (tests pass fakes)."""
    settings = settings or GatewaySettings()

    tracing.configure("feedserve-gateway", settings.otlp_endpoint, settings.trace_file)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        triton = inference_client(settings)  # in the loop: the aiohttp client needs it
        rt = await asyncio.to_thread(runtime_factory, settings, triton)
        app.state.rt = rt
        consumer = (
            asyncio.create_task(_consume_forever(rt.events, rt.store, rt.refresher))
            if rt.embedded
            else None
        )
        # start-up's objects (models, routes, clients: ~120k) leave the cyclic collector's
        # generations: its full collections walked them all, ~70 ms of CPU on one request in
        # ~40 at 1 rps (2-core CPU); per-request garbage is collected as before. Undone at
        # shutdown, so that a process starting many apps (tests) lets go of the old ones.
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()
            if consumer is not None:
                consumer.cancel()
                with suppress(asyncio.CancelledError):
                    await consumer
            await rt.featurizer.close()
            await rt.service.close()
            await rt.triton.close()

    app = FastAPI(
        title="feedserve gateway",
        version=__version__,
        description="Feed recommendation: featurizer pool → retrieval → generative ranking.",
        lifespan=lifespan,
    )
    errors.install(app)
    app.add_middleware(Admit, settings=settings)
    app.add_middleware(Observe)  # outermost: times and counts every request, rejected ones too

    def runtime(request: Request) -> Runtime:
        rt: Runtime = request.app.state.rt
        return rt

    @app.post("/v1/feed", response_model=FeedResponse, responses=ERRORS, tags=["feed"])
    async def post_feed(body: FeedRequest, request: Request, response: Response) -> FeedResponse:
        """Ranked posts for a member. Unknown members get a cold-start feed (popular + fresh)."""
        result = await runtime(request).service.feed(body)
        response.headers["X-Trace-Id"] = result.trace_id
        return result

    @app.post(
        "/v1/events",
        status_code=202,
        response_model=EventsAccepted,
        responses=ERRORS,
        tags=["events"],
    )
    async def post_events(body: EventsRequest, request: Request) -> EventsAccepted:
        """Append engagement events; 202 means they are durably stored and will be applied."""
        return await runtime(request).service.accept_events(body)

    @app.post(
        "/v1/posts", status_code=202, response_model=PostAccepted, responses=ERRORS, tags=["posts"]
    )
    async def post_posts(body: PostIn, request: Request) -> PostAccepted:
        """Store a post and index it nearline; it is retrievable within seconds."""
        return await runtime(request).service.accept_post(body)

    @app.patch(
        "/v1/posts/{post_id}",
        status_code=202,
        response_model=PostAccepted,
        responses={**ERRORS, 404: {"model": ErrorBody, "description": "no such post"}},
        tags=["posts"],
    )
    async def patch_post(
        post_id: Annotated[int, Path(gt=0, lt=MAX_ID)], body: PostEdit, request: Request
    ) -> PostAccepted:
        """Edit a post; its embedding is replaced nearline."""
        return await runtime(request).service.edit_post(post_id, body)

    @app.delete(
        "/v1/posts/{post_id}",
        status_code=204,
        responses={404: {"model": ErrorBody, "description": "no such post"}},
        tags=["posts"],
    )
    async def delete_post(
        post_id: Annotated[int, Path(gt=0, lt=MAX_ID)], request: Request
    ) -> Response:
        """Delete a post: gone from the store at once and from every index within seconds."""
        await runtime(request).service.delete_post(post_id)
        return Response(status_code=204)

    @app.get("/healthz", response_model=Health, tags=["ops"])
    async def healthz() -> Health:
        """Liveness: the process answers."""
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, responses={503: {"model": Health}}, tags=["ops"])
    async def readyz(request: Request) -> JSONResponse:
        """Readiness: Triton (server and models), the store/broker and the featurizer pool."""
        rt = runtime(request)
        checks = {
            "triton": await rt.triton.ready(),
            "store": await asyncio.to_thread(rt.store.ping),
            "featurizer": await rt.featurizer.ready(),
        }
        ok = all(checks.values())
        body = Health(status="ok" if ok else "unavailable", checks=checks)
        return JSONResponse(status_code=200 if ok else 503, content=body.model_dump())

    @app.get("/metrics", tags=["ops"], response_class=Response)
    async def metrics(request: Request) -> Response:
        """Prometheus metrics."""
        registry = runtime(request).service.metrics.registry
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
