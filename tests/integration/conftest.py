"""Real-process fixtures: tritonserver, Celery featurizer worker, event consumer, gateway.

Everything binds to loopback on free ports; every process is stopped at teardown and the
test's Redis prefix is deleted.

Starting a disaggregated stack costs 10-40 s of a 2-core machine, so modules that only use
one share it (``SharedStacks``): one stack per member-embedding mode, started by the first
module that asks, kept while the next test still uses shared stacks, health-checked before
it is handed out again (restarted if a process died or a model is not ready). A module on a
shared stack leaves it as it found it (reload what it unloads, restore what it edits).
A module that changes the served models for good takes the stack for itself
(``own_stack``: the shared one, handed over, never shared again) and runs after the
modules that share it; modules that kill processes or need other settings start their own
(``stack_helpers.start_redis_stack``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
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
    triton_exit_timeout_s: int = 10,
) -> Iterator[Stack]:
    """The disaggregated stack: Triton + Redis + Celery worker + event consumer + gateway
    (``env``: extra environment of every process)."""
    if not redis_answers(REDIS_URL):
        pytest.fail(f"Redis does not answer at {REDIS_URL}; .ci/run starts one (see README)")
    settings = _settings(built, tmp_path_factory.mktemp("run"), REDIS_URL, workflow)
    load_dataset(settings)
    stack = Stack(
        settings,
        Ports.allocate(settings.host),
        env={**os.environ, **(env or {})},
        triton_exit_timeout_s=triton_exit_timeout_s,
    )
    try:
        with stack:
            yield stack
    finally:
        from feedserve.store import open_store

        open_store(settings).clear()


MODELS = ("retrieval_encoder", "post_index", "generative_ranker")
ONLINE = "online"


def healthy(stack: Stack) -> bool:
    """Every process alive, the gateway ready and every model loaded."""
    if not stack.processes or not all(p.alive() for p in stack.processes):
        return False
    try:
        if httpx.get(f"{stack.gateway_url}/readyz", timeout=10).status_code != 200:
            return False
        return all(
            httpx.get(f"http://{stack.triton_url}/v2/models/{m}/ready", timeout=10).status_code
            == 200
            for m in MODELS
        )
    except httpx.HTTPError:
        return False


@dataclass
class _Shared:
    stack: Stack
    closer: ExitStack
    leases: int = 0


class SharedStacks:
    """Disaggregated stacks shared by test modules, one per member-embedding mode (the
    feed workflow with ``embed_member`` in that mode; ``online`` is the packaged one)."""

    def __init__(self, built: object, tmp_path_factory: pytest.TempPathFactory) -> None:
        self.built = built
        self.tmp_path_factory = tmp_path_factory
        self.stacks: dict[str, _Shared] = {}
        self.retired: list[ExitStack] = []

    def _start(self, mode: str) -> _Shared:
        closer = ExitStack()
        try:
            workflow = workflow_with_member_embedding(mode, self.tmp_path_factory.mktemp("wf"))
            start = contextmanager(start_redis_stack)
            stack = closer.enter_context(start(self.built, self.tmp_path_factory, workflow))
        except BaseException:
            closer.close()
            raise
        return _Shared(stack, closer)

    def _reusable(self, mode: str) -> _Shared | None:
        shared = self.stacks.get(mode)
        if shared is not None and shared.leases == 0 and not healthy(shared.stack):
            del self.stacks[mode]
            shared.closer.close()
            return None
        return shared

    @contextmanager
    def lease(self, mode: str) -> Iterator[Stack]:
        """The shared stack of ``mode`` (started if there is none, or none healthy)."""
        shared = self._reusable(mode)
        if shared is None:
            shared = self.stacks[mode] = self._start(mode)
        shared.leases += 1
        try:
            yield shared.stack
        finally:
            shared.leases -= 1

    @contextmanager
    def take(self, mode: str) -> Iterator[Stack]:
        """The shared stack of ``mode`` for the caller alone (a fresh one if it is in use
        or there is none), stopped after the caller is done, with the idle ones."""
        shared = self._reusable(mode)
        if shared is not None and shared.leases == 0:
            del self.stacks[mode]
        else:
            shared = self._start(mode)
        try:
            yield shared.stack
        finally:
            self.retired.append(shared.closer)  # stopped with the idle ones, at once

    def close_idle(self) -> None:
        """Stop the stacks no module uses and the taken ones given back, concurrently."""
        closers, self.retired = self.retired, []
        for mode, shared in list(self.stacks.items()):
            if shared.leases == 0:
                del self.stacks[mode]
                closers.append(shared.closer)
        if closers:
            with ThreadPoolExecutor(len(closers)) as pool:
                for done in [pool.submit(closer.close) for closer in closers]:
                    done.result()


SHARED_STACKS = pytest.StashKey[SharedStacks]()


@pytest.fixture(scope="session")
def shared_stacks(
    request: pytest.FixtureRequest, built: object, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SharedStacks]:
    pool = SharedStacks(built, tmp_path_factory)
    request.config.stash[SHARED_STACKS] = pool
    try:
        yield pool
    finally:
        del request.config.stash[SHARED_STACKS]
        pool.close_idle()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, None, None]:
    """Stop the shared stacks as soon as the next test uses none (after this test's own
    fixtures let go of theirs)."""
    try:
        return (yield)
    finally:
        pool = item.config.stash.get(SHARED_STACKS, None)
        if pool is not None and (nextitem is None or not _uses_shared(nextitem)):
            pool.close_idle()


def _uses_shared(item: pytest.Item) -> bool:
    return "shared_stacks" in getattr(item, "fixturenames", ())


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules that take a shared stack for themselves run right after the last test that
    shares one, so that the stack they take has served everyone else first."""
    takers = [i for i in items if "own_stack" in getattr(i, "fixturenames", ())]
    if not takers:
        return
    taken = {id(i) for i in takers}
    rest = [i for i in items if id(i) not in taken]
    after = max((n + 1 for n, i in enumerate(rest) if _uses_shared(i)), default=len(rest))
    items[:] = rest[:after] + takers + rest[after:]


@pytest.fixture(scope="module")
def redis_stack(shared_stacks: SharedStacks) -> Iterator[Stack]:
    """The shared disaggregated stack serving the packaged feed workflow."""
    with shared_stacks.lease(ONLINE) as stack:
        yield stack


@pytest.fixture(scope="module")
def own_stack(shared_stacks: SharedStacks) -> Iterator[Stack]:
    """The shared stack of the packaged workflow, for this module alone (it changes what the
    stack serves, e.g. activates new model versions); nobody gets it after the module."""
    with shared_stacks.take(ONLINE) as stack:
        yield stack


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
