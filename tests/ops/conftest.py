"""Shared helpers for the ops/bench tests: run a benchmark script, import one, read its results."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest


class Bench:
    """The scripts in ops/bench/, run in a subprocess or imported as modules."""

    REPO = Path(__file__).resolve().parents[2]
    DIR = REPO / "ops" / "bench"
    PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

    def run(
        self, script: str, *args: str, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run ops/bench/<script> from the repo root; fail the test unless it exits 0."""
        proc = subprocess.run(
            [sys.executable, str(self.DIR / script), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.REPO,
            check=False,
        )
        assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr}"
        return proc

    def quick(
        self, script: str, out: Path, *extra: str, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run ops/bench/<script> --quick --out OUT [extra...]."""
        return self.run(script, "--quick", "--out", str(out), *extra, timeout=timeout)

    def load(self, script: str) -> ModuleType:
        """ops/bench/<script> as a module named bench_<stem> (ops/ is not a package)."""
        name = f"bench_{Path(script).stem}"
        if name in sys.modules:
            return sys.modules[name]
        if str(self.DIR) not in sys.path:  # as when run as a script: its folder is on the path
            sys.path.insert(0, str(self.DIR))
        spec = importlib.util.spec_from_file_location(name, self.DIR / script)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    @staticmethod
    def results(out: Path, name: str) -> dict[str, Any]:
        """The JSON results a benchmark wrote to <out>/<name>.json."""
        data: dict[str, Any] = json.loads((out / f"{name}.json").read_text())
        return data


@pytest.fixture(scope="session")
def bench() -> Bench:
    return Bench()
