"""The runtime Triton model repository: the committed configs and code, plus exported versions.

``model_repo/`` in the source tree holds each model's ``config.pbtxt`` and a thin
``1/model.py`` that serves the release in ``FEEDSERVE_ARTIFACTS_DIR``. The runtime repository
(``<runtime_dir>/model_repo``, what tritonserver loads) is refreshed from it at every start
and also keeps the versions that exports added: ``<model>/<N>/model.py`` plus the artifacts
that version serves (``encoder/``, ``index/``). Triton serves the newest version of each
model (its default version policy); ``load_model`` switches a running server over.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

VERSION_INFO = "feedserve_version.json"


def versions(repo: Path, model: str) -> list[int]:
    """Numbered version directories of ``model``, ascending."""
    folder = repo / model
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def prepare_model_repo(source: Path, dest: Path) -> Path:
    """Copy configs and code from ``source`` into ``dest``, keeping exported versions.

    Every version directory in ``dest`` gets the current ``model.py`` (code updates reach
    exported versions too; their artifacts stay as they are).
    """
    models = [p for p in sorted(source.iterdir()) if (p / "config.pbtxt").is_file()]
    if not models:
        raise FileNotFoundError(f"no Triton models (*/config.pbtxt) in {source}")
    for model in models:
        target = dest / model.name
        (target / "1").mkdir(parents=True, exist_ok=True)
        shutil.copy2(model / "config.pbtxt", target / "config.pbtxt")
        code = model / "1" / "model.py"
        for version in versions(dest, model.name):
            shutil.copy2(code, target / str(version) / "model.py")
    return dest


def export_versions(repo: Path, artifacts: Mapping[str, Mapping[str, Path]]) -> int:
    """Add one new version, with the same number, to each model in ``artifacts``.

    ``artifacts`` maps a model name to {folder name in the version: source directory}, e.g.
    ``{"retrieval_encoder": {"encoder": enc_dir}, "post_index": {"index": idx_dir}}``. Models
    exported together share a version number, so a matching encoder and index are easy to
    tell. Each version is assembled in a temporary folder and renamed into place.
    """
    number = 1 + max((max(versions(repo, m), default=1) for m in artifacts), default=1)
    for model, folders in artifacts.items():
        code = repo / model / "1" / "model.py"
        if not code.is_file():
            raise FileNotFoundError(f"{code} is missing: prepare the model repository first")
        tmp = repo / model / f".{number}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        shutil.copy2(code, tmp / "model.py")
        for name, src in folders.items():
            shutil.copytree(src, tmp / name)
        info: dict[str, object] = {
            "version": number,
            "created_at": int(time.time()),
            "artifacts": {name: str(src) for name, src in folders.items()},
        }
        (tmp / VERSION_INFO).write_text(json.dumps(info, indent=2))
        tmp.rename(repo / model / str(number))
    return number
