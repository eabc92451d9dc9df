"""Every exception → HTTP status mapping of the gateway, in one place."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from feedserve.gateway import guard
from feedserve.gateway.schemas import ErrorBody, ErrorDetail
from feedserve.gateway.service import Conflict, NotFound
from feedserve.resilience import retry_after_header
from feedserve.store.redis_store import UNAVAILABLE_ERRORS
from feedserve.triton_client import TritonError
from feedserve_featurizers.client import FeaturizerUnavailable

log = logging.getLogger(__name__)


def _field(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "body"


def _body(status: int, error: str, details: list[ErrorDetail] | None = None) -> JSONResponse:
    payload = ErrorBody(error=error, details=details or [])
    return JSONResponse(status_code=status, content=payload.model_dump())


async def on_validation(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = [
        ErrorDetail(field=_field(tuple(e.get("loc", ()))), message=str(e.get("msg", "invalid")))
        for e in exc.errors()
    ]
    fields = ", ".join(sorted({d.field for d in details}))
    return _body(422, f"invalid request: {fields}", details)


async def on_not_found(_request: Request, exc: Exception) -> JSONResponse:
    return _body(404, str(exc))


async def on_conflict(_request: Request, exc: Exception) -> JSONResponse:
    return _body(409, str(exc))


async def on_unavailable(_request: Request, exc: Exception) -> JSONResponse:
    log.warning("dependency unavailable: %s", exc)
    return _body(503, f"service unavailable: {type(exc).__name__}: {exc}")


async def on_triton(_request: Request, exc: Exception) -> JSONResponse:
    log.warning("inference failed: %s", exc)
    return _body(502, f"inference failed: {exc}")


async def on_timeout(_request: Request, exc: Exception) -> JSONResponse:
    log.warning("deadline exceeded: %s", exc)
    return _body(504, f"deadline exceeded: {exc}")


GUARD_STATUS: dict[type[Exception], tuple[int, str]] = {
    guard.Unauthorized: (401, "unauthorized"),
    guard.RateLimited: (429, "rate_limited"),
    guard.Overloaded: (429, "overloaded"),
    guard.PayloadTooLarge: (413, "too_large"),
    guard.LengthRequired: (411, "length_required"),
}
"""Admission failures: status and the ``reason`` label of ``feedserve_rejected_total``."""


def guard_response(exc: Exception) -> JSONResponse:
    """The response of a request turned away by the guard (before any route ran)."""
    status, _ = GUARD_STATUS[type(exc)]
    response = _body(status, str(exc))
    retry = getattr(exc, "retry_after_s", None)
    if retry is not None:
        response.headers["Retry-After"] = retry_after_header(retry)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'ApiKey header="X-API-Key"'
    return response


async def on_guard(_request: Request, exc: Exception) -> JSONResponse:
    return guard_response(exc)


def install(app: FastAPI) -> None:
    for guard_error in GUARD_STATUS:
        app.add_exception_handler(guard_error, on_guard)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(NotFound, on_not_found)
    app.add_exception_handler(Conflict, on_conflict)
    app.add_exception_handler(FeaturizerUnavailable, on_unavailable)
    for store_error in UNAVAILABLE_ERRORS:
        app.add_exception_handler(store_error, on_unavailable)
    app.add_exception_handler(TritonError, on_triton)
    app.add_exception_handler(TimeoutError, on_timeout)
