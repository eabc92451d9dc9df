"""Start and stop the local stack: tritonserver, featurizer workers, event consumer, gateway.

Used by ``feedserve up`` and by the integration-test fixtures, so tests exercise exactly what
users run. Every process binds to loopback, logs to ``runtime_dir/logs``, runs in its own
process group (so a stop reaches its children) and is waited on with a deadline.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx

from feedserve.model_repo import prepare_model_repo
from feedserve.settings import CommonSettings, LauncherSettings

T = TypeVar("T")


class StartupError(RuntimeError):
    """A component failed to start; the message carries the end of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def load_dataset(settings: CommonSettings) -> int:
    """Replace the feature store's contents (its Redis prefix) with ``settings.data_dir``.

    Returns the number of interactions loaded. The prefix's streams (events, nearline post
    embeddings) are cleared too, so the stack starts from exactly this data set.
    """
    from feedserve.data.io import read_dataset
    from feedserve.store import open_store

    ds = read_dataset(settings.data_dir)
    store = open_store(settings)
    store.clear()
    store.bulk_load(ds.members, ds.posts, ds.interactions)
    return len(ds.interactions)


@dataclass
class ManagedProcess:
    name: str
    cmd: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.cmd,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # own process group: stop() reaches its children too
        )
        log.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def signal(self, sig: int) -> None:
        if self.alive() and self.proc is not None:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.proc is None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait(timeout=5)
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # stragglers in the group (Triton stubs)


def wait_until(
    check: Callable[[], T | None], timeout_s: float, what: str, proc: ManagedProcess | None = None
) -> T:
    """Poll ``check`` until it returns something true, and return that; fail early if
    ``proc`` dies, or at the deadline."""
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        if proc is not None and not proc.alive():
            raise StartupError(f"{what}: {proc.name} exited early\n{proc.log_tail()}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
    tail = f"\n{proc.log_tail()}" if proc is not None else ""
    raise StartupError(f"{what}: not ready after {timeout_s:.0f}s{tail}")


def http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(url, timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    return check


# --- Triton ---------------------------------------------------------------------------------
def pytriton_dir() -> Path:
    try:
        import pytriton
    except ImportError as exc:
        raise StartupError(
            "tritonserver comes from the nvidia-pytriton wheel: pip install 'feedserve[models]'"
        ) from exc
    return Path(pytriton.__file__).parent / "tritonserver"


def prepare_triton_backends(runtime_dir: Path) -> Path:
    """A backend directory whose python backend has the 3.11 stub next to it (done once)."""
    src = pytriton_dir()
    dest = runtime_dir / "triton-backends"
    stub = dest / "python" / "triton_python_backend_stub"
    if not stub.exists():
        shutil.copytree(src / "backends", dest, dirs_exist_ok=True)
        ver = f"{sys.version_info.major}.{sys.version_info.minor}"
        shutil.copy2(src / "python_backend_stubs" / ver / "triton_python_backend_stub", stub)
    return dest


def triton_env(base: Mapping[str, str]) -> dict[str, str]:
    """Environment for tritonserver so that ``model.py`` imports this venv's packages.

    The stub links libpython: the interpreter's own LIBDIR must come first, then the CUDA
    runtime libraries bundled in the wheel; the venv's ``bin`` first on PATH selects its
    site-packages (PYTHONPATH is ignored by the embedded interpreter).
    """
    env = dict(base)
    libdir = str(sysconfig.get_config_var("LIBDIR") or "")
    wheel_libs = str(pytriton_dir().parent.parent / "nvidia_pytriton.libs")
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (libdir, wheel_libs, env.get("LD_LIBRARY_PATH", "")) if p
    )
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    env.setdefault("OMP_NUM_THREADS", "2")
    # each Python-backend model is its own stub process with its own OpenMP pool; the
    # default (active) wait policy leaves a finished model's threads spinning on the cores
    # the next model of the same request needs (measured: ranker 94 ms vs 7 ms in-process)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


@dataclass
class Ports:
    gateway: int
    triton_http: int
    triton_grpc: int
    triton_metrics: int

    @classmethod
    def allocate(cls, host: str, gateway: int | None = None) -> Ports:
        return cls(
            gateway=gateway or free_port(host),
            triton_http=free_port(host),
            triton_grpc=free_port(host),
            triton_metrics=free_port(host),
        )


@dataclass
class Stack:
    """The whole local stack. ``start()`` returns once every component is ready."""

    settings: LauncherSettings
    ports: Ports
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    processes: list[ManagedProcess] = field(default_factory=list)
    on_progress: Callable[[str], None] = lambda _msg: None
    triton_exit_timeout_s: int = 10
    """How long a stopping tritonserver waits for in-flight requests and open client
    connections before it exits anyway."""

    @property
    def gateway_url(self) -> str:
        return f"http://{self.settings.host}:{self.ports.gateway}"

    @property
    def triton_url(self) -> str:
        return f"{self.settings.host}:{self.ports.triton_http}"

    def _feedserve_env(self) -> dict[str, str]:
        s = self.settings
        env = dict(self.env)
        env.update(
            {
                "FEEDSERVE_REDIS_URL": s.redis_url,
                "FEEDSERVE_REDIS_PREFIX": s.redis_prefix,
                "FEEDSERVE_ARTIFACTS_DIR": str(Path(s.artifacts_dir).resolve()),
                "FEEDSERVE_DATA_DIR": str(Path(s.data_dir).resolve()),
                "FEEDSERVE_HISTORY_MAX_LEN": str(s.history_max_len),
                "FEEDSERVE_TRITON_URL": self.triton_url,
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false",
                "PYTHONUNBUFFERED": "1",
            }
        )
        if s.workflow is not None:
            env["FEEDSERVE_WORKFLOW"] = str(Path(s.workflow).resolve())
        if s.monolith:
            env["FEEDSERVE_INFERENCE"] = "local"
            env["FEEDSERVE_REDIS_URL"] = ""
        return env

    def _add(self, name: str, cmd: list[str], env: dict[str, str]) -> ManagedProcess:
        logs = Path(self.settings.runtime_dir) / "logs"
        proc = ManagedProcess(name, cmd, env, logs / f"{name}.log")
        self.processes.append(proc)
        proc.start()
        return proc

    def start_triton(self) -> ManagedProcess:
        s = self.settings
        backends = prepare_triton_backends(Path(s.runtime_dir))
        repo = prepare_model_repo(Path(s.model_repo), s.runtime_model_repo)
        binary = pytriton_dir() / "bin" / "tritonserver"
        cmd = [
            str(binary),
            f"--model-repository={repo.resolve()}",
            f"--backend-directory={backends.resolve()}",
            f"--http-address={s.host}",
            f"--http-port={self.ports.triton_http}",
            f"--grpc-address={s.host}",
            f"--grpc-port={self.ports.triton_grpc}",
            f"--metrics-address={s.host}",
            f"--metrics-port={self.ports.triton_metrics}",
            "--model-control-mode=explicit",  # models can be loaded/unloaded at run time
            "--load-model=*",
            "--log-verbose=0",
            f"--exit-timeout-secs={self.triton_exit_timeout_s}",
        ]
        proc = self._add("tritonserver", cmd, triton_env(self._feedserve_env()))
        return proc

    def start_featurizers(self) -> list[ManagedProcess]:
        s = self.settings
        env = self._feedserve_env()
        procs = []
        for i in range(s.featurizer_workers):
            cmd = [
                sys.executable, "-m", "celery", "-A", "feedserve_featurizers.celery_app",
                "worker", "--concurrency=4", "--loglevel=INFO",
                f"--hostname=featurizer{i}-{os.getpid()}@%h",
                "--without-gossip", "--without-mingle", "--without-heartbeat",
            ]  # fmt: skip
            procs.append(self._add(f"featurizer-{i}", cmd, env))
        procs.append(
            self._add(
                "event-consumer", [sys.executable, "-m", "feedserve_featurizers.consumer"], env
            )
        )
        return procs

    def start_gateway(self) -> ManagedProcess:
        s = self.settings
        cmd = [
            sys.executable, "-m", "uvicorn", "feedserve.gateway.app:create_app", "--factory",
            f"--host={s.host}", f"--port={self.ports.gateway}", "--log-level=warning",
            "--timeout-graceful-shutdown=10",
        ]  # fmt: skip
        return self._add("gateway", cmd, self._feedserve_env())

    def start(self) -> None:
        s = self.settings
        try:
            if s.monolith:
                self.on_progress("starting the gateway (monolith: store, featurizer, models)")
                gateway = self.start_gateway()
                wait_until(
                    http_ok(f"{self.gateway_url}/readyz"), s.startup_timeout_s, "gateway", gateway
                )
                return
            self.on_progress("starting tritonserver (3 models)")
            triton = self.start_triton()
            if not s.embedded and s.featurizer_workers > 0:
                self.on_progress(f"starting {s.featurizer_workers} featurizer worker(s)")
                self.start_featurizers()
            wait_until(
                http_ok(f"http://{self.triton_url}/v2/health/ready"),
                s.startup_timeout_s,
                "tritonserver",
                triton,
            )
            self.on_progress("tritonserver ready; starting the gateway")
            gateway = self.start_gateway()
            wait_until(
                http_ok(f"{self.gateway_url}/readyz"), s.startup_timeout_s, "gateway", gateway
            )
            for proc in self.processes:
                if not proc.alive():
                    raise StartupError(f"{proc.name} exited\n{proc.log_tail()}")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()
        self.processes.clear()

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
