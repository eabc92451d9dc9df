"""Real-process fixtures: tritonserver, Celery featurizer worker, event consumer, gateway.

Everything binds to loopback on free ports; every process is stopped at teardown and the
test's Redis prefix is deleted.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from feedserve.launcher import Ports, Stack, load_dataset
from feedserve.settings import LauncherSettings
from feedserve.store.redis_store import redis_answers

REPO = Path(__file__).resolve().parents[2]
REDIS_URL = "redis://127.0.0.1:6379/0"


def _settings(built: object, tmp: Path, redis_url: str) -> LauncherSettings:
    return LauncherSettings(
        redis_url=redis_url,
        redis_prefix=f"it{uuid.uuid4().hex[:10]}",
        artifacts_dir=built.artifacts_dir,  # type: ignore[attr-defined]
        data_dir=built.data_dir,  # type: ignore[attr-defined]
        model_repo=REPO / "model_repo",
        runtime_dir=tmp,
        featurizer_workers=1,
        startup_timeout_s=240,
    )


@pytest.fixture(scope="module")
def redis_stack(built: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The disaggregated stack: Triton + Redis + Celery worker + event consumer + gateway."""
    if not redis_answers(REDIS_URL):
        pytest.fail(f"Redis does not answer at {REDIS_URL}; .ci/run starts one (see README)")
    settings = _settings(built, tmp_path_factory.mktemp("run"), REDIS_URL)
    load_dataset(settings)
    stack = Stack(settings, Ports.allocate(settings.host))
    try:
        with stack:
            yield stack
    finally:
        from feedserve.store import open_store

        open_store(settings).clear()


@pytest.fixture(scope="module")
def embedded_stack(built: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Embedded mode: no Redis, in-process featurizer, in-memory store, file embedding log."""
    settings = _settings(built, tmp_path_factory.mktemp("run-embedded"), "")
    log = Path(settings.artifacts_dir) / "nearline" / "post_embeddings.log"
    log.unlink(missing_ok=True)
    with Stack(settings, Ports.allocate(settings.host)) as stack:
        yield stack
    log.unlink(missing_ok=True)


@pytest.fixture()
def client(redis_stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=redis_stack.gateway_url, timeout=30.0) as c:
        yield c
