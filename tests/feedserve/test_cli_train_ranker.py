"""``feedserve train ranker``: a tiny demo data set, one epoch, metrics table and files;
expected failures as one clear line without a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from feedserve.data.io import write_dataset
from feedserve.data.synthetic import DemoConfig, generate


def feedserve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "feedserve.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )


@pytest.mark.parametrize("model", ["hstu", "sasrec"])
def test_train_ranker_on_a_tiny_demo_data_set(tmp_path: Path, model: str) -> None:
    write_dataset(generate(DemoConfig(members=24, posts=50, seed=5)), tmp_path / "data")
    out = tmp_path / "run"
    result = feedserve(
        "train", "ranker", "--data", "demo", "--data-dir", str(tmp_path / "data"),
        "--model", model, "--epochs", "1", "--seed", "3", "--batch-size", "8",
        "--negatives", "8", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "HR@10" in result.stdout and "popularity" in result.stdout
    assert "trained 1 epochs" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"] == "demo" and metrics["model"] == model and metrics["users"] == 24
    for name in ("popularity", model):
        assert 0.0 <= metrics[name]["hr@10"] <= metrics[name]["hr@50"] <= 1.0
    assert (out / "model" / "config.json").is_file() and (out / "trainer.pt").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "ml-25m"], "--data must be one of ml-100k, ml-latest-small, demo"),
        (["--model", "bert4rec"], "--model must be hstu or sasrec"),
        (["--data", "demo", "--data-dir", "/nonexistent/data"], "/nonexistent/data"),
        (["--data", "ml-100k", "--data-dir", "/nonexistent/ml"], "/nonexistent/ml"),
    ],
)
def test_errors_are_one_clear_line(args: list[str], message: str) -> None:
    result = feedserve("train", "ranker", *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
