"""Real-process fixtures: tritonserver, Celery featurizer worker, event consumer, gateway.

Everything binds to loopback on free ports; every process is stopped at teardown and the
test's Redis prefix is deleted.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from feedserve.launcher import Ports, Stack, load_dataset
from feedserve.settings import LauncherSettings
from feedserve.store.redis_store import redis_answers
from feedserve.workflow.spec import DEFAULT_WORKFLOW, set_mode_in_text

REPO = Path(__file__).resolve().parents[2]
REDIS_URL = "redis://127.0.0.1:6379/0"


def _settings(
    built: object, tmp: Path, redis_url: str, workflow: Path | None = None
) -> LauncherSettings:
    return LauncherSettings(
        workflow=workflow,
        redis_url=redis_url,
        redis_prefix=f"it{uuid.uuid4().hex[:10]}",
        artifacts_dir=built.artifacts_dir,  # type: ignore[attr-defined]
        data_dir=built.data_dir,  # type: ignore[attr-defined]
        model_repo=REPO / "model_repo",
        runtime_dir=tmp,
        featurizer_workers=1,
        startup_timeout_s=240,
    )


def workflow_with_member_embedding(mode: str, out_dir: Path) -> Path:
    """The packaged feed workflow with one line changed: the member-embedding step's mode."""
    text = DEFAULT_WORKFLOW.read_text()
    changed = set_mode_in_text(text, "embed_member", mode)
    diff = [(a, b) for a, b in zip(text.splitlines(), changed.splitlines(), strict=True) if a != b]
    assert len(diff) <= 1 and len(text.splitlines()) == len(changed.splitlines())
    path = out_dir / f"feed-{mode.replace('+', '-')}.yaml"
    path.write_text(changed)
    return path


def start_redis_stack(
    built: object,
    tmp_path_factory: pytest.TempPathFactory,
    workflow: Path | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[Stack]:
    """The disaggregated stack: Triton + Redis + Celery worker + event consumer + gateway
    (``env``: extra environment of every process)."""
    if not redis_answers(REDIS_URL):
        pytest.fail(f"Redis does not answer at {REDIS_URL}; .ci/run starts one (see README)")
    settings = _settings(built, tmp_path_factory.mktemp("run"), REDIS_URL, workflow)
    load_dataset(settings)
    stack = Stack(settings, Ports.allocate(settings.host), env={**os.environ, **(env or {})})
    try:
        with stack:
            yield stack
    finally:
        from feedserve.store import open_store

        open_store(settings).clear()


@pytest.fixture(scope="module")
def redis_stack(built: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from start_redis_stack(built, tmp_path_factory)


@pytest.fixture(scope="session")
def stack_helpers() -> StackHelpers:
    """For modules that start their own stack (test modules cannot import conftest)."""
    return StackHelpers()


class StackHelpers:
    start_redis_stack = staticmethod(start_redis_stack)
    workflow_with_member_embedding = staticmethod(workflow_with_member_embedding)


@pytest.fixture(scope="module")
def embedded_stack(built: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Embedded mode: no Redis, in-process featurizer, in-memory store, file embedding log."""
    settings = _settings(built, tmp_path_factory.mktemp("run-embedded"), "")
    log = Path(settings.artifacts_dir) / "nearline" / "post_embeddings.log"
    log.unlink(missing_ok=True)
    with Stack(settings, Ports.allocate(settings.host)) as stack:
        yield stack
    log.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def monolith_stack(built: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Monolith mode: one gateway process with the store, featurizer and the models."""
    settings = _settings(built, tmp_path_factory.mktemp("run-monolith"), "")
    settings = settings.model_copy(update={"monolith": True})
    log = Path(settings.artifacts_dir) / "nearline" / "post_embeddings.log"
    log.unlink(missing_ok=True)
    with Stack(settings, Ports.allocate(settings.host)) as stack:
        yield stack
    log.unlink(missing_ok=True)


@pytest.fixture()
def client(redis_stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=redis_stack.gateway_url, timeout=30.0) as c:
        yield c
