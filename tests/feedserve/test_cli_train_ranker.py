"""``feedserve train ranker``: a tiny demo data set, one epoch, metrics table and files;
expected failures as one clear line without a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

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
        (["--data", "ml-100k", "--export"], "--export needs --data demo"),
        (["--data", "demo", "--export", "--artifacts", "/nonexistent/a"], "feedserve build"),
    ],
)
def test_errors_are_one_clear_line(args: list[str], message: str) -> None:
    result = feedserve("train", "ranker", *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_export_trains_the_served_ranker_as_a_new_version(built: Any, tmp_path: Path) -> None:
    """``--export``: the content-aware served ranker, measured on the served path, exported as
    ``generative_ranker/2`` beside the committed version 1, loadable by the serving handler."""
    from feedserve.models.serving import build_handler
    from feedserve.settings import ModelSettings

    runtime = tmp_path / "runtime"
    result = feedserve(
        "train", "ranker", "--data", "demo", "--data-dir", str(built.data_dir), "--export",
        "--artifacts", str(built.artifacts_dir), "--runtime-dir", str(runtime),
        "--epochs", "1", "--out", str(tmp_path / "run"),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "served path" in result.stdout and "HR@10" in result.stdout
    assert "exported generative_ranker version 2" in result.stdout
    version = runtime / "model_repo" / "generative_ranker" / "2"
    assert (version / "model.py").is_file() and (version / "ranker" / "post_ids.npy").is_file()
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["model"] == "hstu" and metrics["users"] > 0
    grad = torch.is_grad_enabled()
    try:
        handler = build_handler(
            "generative_ranker", ModelSettings(artifacts_dir=built.artifacts_dir), version
        )
    finally:
        torch.set_grad_enabled(grad)  # the handlers switch autograd off process-wide
    ids = np.load(version / "ranker" / "post_ids.npy")
    (out,) = handler.handle(
        [
            {
                "history_post_ids": ids[:3],
                "history_actions": np.array([2, 3, 5]),
                "history_timestamps": np.array([1, 2, 3]) + 1_767_225_600,
                "candidate_ids": ids[3:8],
                "request_time": None,
            }
        ]
    )
    assert isinstance(out, dict) and out["scores"].shape == (5,)
