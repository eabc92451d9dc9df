"""The CLI: real subprocesses, expected failures as one clear line without a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def feedserve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "feedserve.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_demo_data_writes_a_deterministic_data_set(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        result = feedserve(
            "demo-data", "--members", "20", "--posts", "40", "--seed", "3", "--out", str(out)
        )
        assert result.returncode == 0, result.stderr
        assert "wrote 20 members, 40 posts" in result.stdout
    for name in ("manifest.json", "members.jsonl", "posts.jsonl", "interactions.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["build", "--data", "/nonexistent/data"], "/nonexistent/data"),
        (["up", "--data", "/nonexistent/data"], "no data set at /nonexistent/data"),
        (["demo-data", "--members", "1"], "--members"),
        (["load", "--data", "/nonexistent/data"], "FEEDSERVE_REDIS_URL is not set"),
        (["build", "--pooling", "max"], "--pooling must be mean or last"),
        (["build", "--base-model", "/nonexistent/model"], "is not a Hugging Face model"),
        (["index", "build"], "give a data set directory, or set FEEDSERVE_REDIS_URL"),
        (["train", "retrieval", "--data", "/nonexistent/data"], "/nonexistent/data"),
    ],
)
def test_errors_are_one_clear_line_without_traceback(args: list[str], message: str) -> None:
    result = feedserve(*args, env={"FEEDSERVE_REDIS_URL": ""})
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_up_refuses_unreachable_redis(tmp_path: Path, built: object) -> None:
    result = feedserve(
        "up",
        "--data",
        str(built.data_dir),  # type: ignore[attr-defined]
        "--artifacts",
        str(built.artifacts_dir),  # type: ignore[attr-defined]
        "--redis-url",
        "redis://127.0.0.1:1/0",
    )
    assert result.returncode == 2
    assert "Redis does not answer at redis://127.0.0.1:1/0" in result.stderr
    assert "Traceback" not in result.stderr


def test_up_without_dali_for_a_dali_featurizer_is_one_line(tmp_path: Path, built: object) -> None:
    """The featurizer backend is checked before anything starts (embedded mode included)."""
    hide_dali = tmp_path / "sitecustomize.py"
    hide_dali.write_text("import sys\nsys.modules['nvidia.dali'] = None\n")
    paths = [str(tmp_path), os.environ.get("PYTHONPATH", "")]
    result = feedserve(
        "up",
        "--embedded",
        "--data",
        str(built.data_dir),  # type: ignore[attr-defined]
        "--artifacts",
        str(built.artifacts_dir),  # type: ignore[attr-defined]
        env={"FEEDSERVE_FEATURIZER_BACKEND": "dali", "PYTHONPATH": os.pathsep.join(paths)},
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "featurizer backend 'dali' needs NVIDIA DALI" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_version() -> None:
    result = feedserve("version")
    assert result.returncode == 0 and result.stdout.strip()
