"""Shared fixtures: a small demo data set and the artifacts built from it (once per session)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# torch's OpenMP threads sleep when idle instead of spinning (as the launcher already has
# Triton's model processes do): on 2 cores shared by the test process, the stacks' processes
# and whatever else runs, spinning threads starve the ones doing the work (measured: ranker
# training 4.7 s alone, 19.7 s next to two busy processes with the default policy, 8.1 s with
# PASSIVE; the same alone). Inherited by every process the tests start; set before anything
# imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
REDIS_URL = "redis://127.0.0.1:6379/0"

SMALL_MEMBERS = 300
SMALL_POSTS = 900
SMALL_SEED = 11


@dataclass(frozen=True)
class Built:
    data_dir: Path
    artifacts_dir: Path


@pytest.fixture(scope="session")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from feedserve.data.io import write_dataset
    from feedserve.data.synthetic import DemoConfig, generate

    out = tmp_path_factory.mktemp("data")
    write_dataset(
        generate(DemoConfig(members=SMALL_MEMBERS, posts=SMALL_POSTS, seed=SMALL_SEED)), out
    )
    return out


@pytest.fixture(scope="session")
def built(small_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    """Artifacts from the real build pipeline (encoder, index snapshot, ranker)."""
    from feedserve.build import BuildOptions, build_artifacts

    out = tmp_path_factory.mktemp("artifacts")
    build_artifacts(
        small_data, out, BuildOptions(ranker_epochs=6, progress=False), log=lambda _: None
    )
    yield Built(small_data, out)
