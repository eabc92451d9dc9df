"""Read and write demo datasets in the documented directory format (``docs/data-format.md``).

A dataset directory holds ``manifest.json`` (written last), ``members.jsonl``, ``posts.jsonl``,
``interactions.csv`` and ``affinities.npy``. Writes go to temporary names first and are renamed
into place, so a reader never sees a half-written file. :func:`read_dataset` checks the
manifest, the checksums and every record, and raises :class:`DatasetError` naming the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from feedserve.contracts import Action, Member, Post
from feedserve.data.synthetic import INTERACTION_DTYPE, DemoConfig, DemoDataset

__all__ = [
    "FILES",
    "FORMAT",
    "INTERACTIONS_HEADER",
    "MANIFEST",
    "VERSION",
    "DatasetError",
    "read_dataset",
    "write_dataset",
]

FORMAT = "feedserve-demo"
VERSION = 1
MANIFEST = "manifest.json"
FILES: dict[str, str] = {
    "members": "members.jsonl",
    "posts": "posts.jsonl",
    "interactions": "interactions.csv",
    "affinities": "affinities.npy",
}
"""Logical name → file name inside the dataset directory."""
INTERACTIONS_HEADER = "member_id,post_id,action,ts,dwell_ms"

_ACTION_NAMES: list[str] = [""] * (max(int(a) for a in Action) + 1)
for _a in Action:
    _ACTION_NAMES[int(_a)] = _a.name


class DatasetError(ValueError):
    """A dataset directory is missing a file, or a file is malformed."""


# --- writing ------------------------------------------------------------------------------------


def _jsonl(records: list[Member] | list[Post]) -> bytes:
    return "".join(r.model_dump_json() + "\n" for r in records).encode("utf-8")


def _csv(rows: np.ndarray) -> bytes:
    names = _ACTION_NAMES
    lines = [INTERACTIONS_HEADER]
    lines.extend(
        f"{m},{p},{names[a]},{t},{d}"
        for m, p, a, t, d in zip(
            rows["member_id"].tolist(),
            rows["post_id"].tolist(),
            rows["action"].tolist(),
            rows["ts"].tolist(),
            rows["dwell_ms"].tolist(),
            strict=True,
        )
    )
    return ("\n".join(lines) + "\n").encode("ascii")


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_dataset(ds: DemoDataset, out_dir: Path) -> None:
    """Write ``ds`` into ``out_dir`` (created if needed); the manifest is written last."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payloads = {
        "members": _jsonl(ds.members),
        "posts": _jsonl(ds.posts),
        "interactions": _csv(ds.interactions),
        "affinities": _npy(ds.affinities),
    }
    files: dict[str, dict[str, Any]] = {}
    for key, data in payloads.items():
        _write_atomic(out_dir / FILES[key], data)
        files[key] = {
            "path": FILES[key],
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
        }
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "seed": ds.config.seed,
        "config": dataclasses.asdict(ds.config),
        "topics": list(ds.topics),
        "counts": {
            "members": len(ds.members),
            "posts": len(ds.posts),
            "interactions": len(ds.interactions),
        },
        "files": files,
    }
    text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    _write_atomic(out_dir / MANIFEST, text.encode("utf-8"))


# --- reading ------------------------------------------------------------------------------------


def _manifest(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DatasetError(f"{path}: missing (not a feedserve demo dataset directory?)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: malformed manifest: {exc}") from exc
    if not isinstance(manifest, dict):
        raise DatasetError(f"{path}: malformed manifest: expected a JSON object")
    if manifest.get("format") != FORMAT:
        raise DatasetError(f"{path}: format is {manifest.get('format')!r}, expected {FORMAT!r}")
    if manifest.get("version") != VERSION:
        raise DatasetError(
            f"{path}: unsupported version {manifest.get('version')!r} (this reader: {VERSION})"
        )
    for key, kind in (("config", dict), ("topics", list), ("counts", dict), ("files", dict)):
        if not isinstance(manifest.get(key), kind):
            raise DatasetError(
                f"{path}: malformed manifest: {key!r} missing or not a {kind.__name__}"
            )
    return manifest


def _count(manifest: dict[str, Any], key: str, path: Path) -> int:
    value = manifest["counts"].get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise DatasetError(f"{path}: malformed manifest: counts.{key} must be an int >= 0")
    return value


def _read_file(root: Path, manifest: dict[str, Any], key: str) -> tuple[Path, bytes]:
    entry = manifest["files"].get(key)
    name = entry.get("path") if isinstance(entry, dict) else None
    if not isinstance(name, str) or not name or Path(name).name != name:
        raise DatasetError(
            f"{root / MANIFEST}: malformed manifest: files.{key}.path must be a plain file name"
        )
    path = root / name
    if not path.is_file():
        raise DatasetError(f"{path}: missing (listed in {MANIFEST} as {key!r})")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {exc}") from exc
    digest = entry.get("sha256")
    if digest is not None and hashlib.sha256(data).hexdigest() != digest:
        raise DatasetError(
            f"{path}: checksum mismatch with {MANIFEST} (file modified, truncated or corrupt)"
        )
    return path, data


def _read_jsonl(path: Path, data: bytes, model: type[Member] | type[Post]) -> list[Any]:
    out: list[Any] = []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8: {exc}") from exc
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(model.model_validate_json(line))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            raise DatasetError(
                f"{path}:{lineno}: invalid {model.__name__.lower()}: "
                f"{where + ': ' if where else ''}{first.get('msg')}"
            ) from exc
    return out


def _check_ids(path: Path, ids: list[int], expected: int, what: str) -> None:
    if len(ids) != expected:
        raise DatasetError(f"{path}: {len(ids)} {what}s, manifest says {expected}")
    if ids != list(range(1, expected + 1)):
        bad = next(i for i, v in enumerate(ids, start=1) if v != i)
        raise DatasetError(
            f"{path}:{bad}: {what} ids must be 1..{expected} in order, found {ids[bad - 1]}"
        )


def _first_bad_line(text: str) -> int | str:
    """1-based line number of the first malformed CSV row (slow path, errors only)."""
    codes = {a.name for a in Action}
    for lineno, line in enumerate(text.splitlines()[1:], start=2):
        if not line.strip():
            continue
        cells = line.split(",")
        if len(cells) != 5 or (cells[2] not in codes and not cells[2].strip().isdigit()):
            return lineno
        for i in (0, 1, 3, 4):
            try:
                int(cells[i])
            except ValueError:
                return lineno
    return "?"


def _read_interactions(path: Path, data: bytes, n_members: int, n_posts: int) -> np.ndarray:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not ASCII: {exc}") from exc
    header, _, body = text.partition("\n")
    if header.strip() != INTERACTIONS_HEADER:
        raise DatasetError(f"{path}:1: header must be {INTERACTIONS_HEADER!r}, got {header!r}")
    # Action names become their codes before the numeric parse (names only occur in column 3).
    for action in Action:
        body = body.replace(f",{action.name},", f",{int(action)},")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data"
            raw = np.loadtxt(io.StringIO(body), delimiter=",", dtype=np.int64, ndmin=2)
    except ValueError as exc:
        raise DatasetError(f"{path}:{_first_bad_line(text)}: malformed row: {exc}") from exc
    if raw.size == 0:
        raw = raw.reshape(0, 5)
    if raw.shape[1] != 5:
        raise DatasetError(f"{path}: expected 5 columns, found {raw.shape[1]}")
    checks = (
        ((raw[:, 0] >= 1) & (raw[:, 0] <= n_members), f"member_id outside 1..{n_members}"),
        ((raw[:, 1] >= 1) & (raw[:, 1] <= n_posts), f"post_id outside 1..{n_posts}"),
        ((raw[:, 2] >= 1) & (raw[:, 2] < len(_ACTION_NAMES)), "unknown action"),
        (raw[:, 3] >= 0, "negative ts"),
        ((raw[:, 4] >= 0) & (raw[:, 4] <= np.iinfo(np.int32).max), "dwell_ms out of range"),
    )
    for ok, message in checks:
        if not ok.all():
            row = int(np.argmin(ok))
            raise DatasetError(f"{path}:{row + 2}: {message}: {','.join(map(str, raw[row]))}")
    rows = np.empty(len(raw), dtype=INTERACTION_DTYPE)
    for col, name in enumerate(INTERACTION_DTYPE.names or ()):
        rows[name] = raw[:, col]
    order = np.lexsort((rows["action"], rows["post_id"], rows["member_id"], rows["ts"]))
    if len(order) and not np.array_equal(order, np.arange(len(order))):
        rows = rows[order]
    return rows


def _read_affinities(path: Path, data: bytes, n_members: int, n_topics: int) -> np.ndarray:
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DatasetError(f"{path}: not a valid .npy array: {exc}") from exc
    if not isinstance(array, np.ndarray) or array.dtype != np.float32:
        raise DatasetError(f"{path}: expected float32, got {getattr(array, 'dtype', type(array))}")
    if array.shape != (n_members, n_topics):
        raise DatasetError(
            f"{path}: expected shape ({n_members}, {n_topics}), got {tuple(array.shape)}"
        )
    return array


def read_dataset(path: Path) -> DemoDataset:
    """Load a dataset directory (or its ``manifest.json``) written by :func:`write_dataset`."""
    path = Path(path)
    root = path.parent if path.name == MANIFEST and path.is_file() else path
    manifest_path = root / MANIFEST
    manifest = _manifest(manifest_path)
    try:
        config = DemoConfig(**manifest["config"])
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{manifest_path}: invalid config: {exc}") from exc
    topics = manifest["topics"]
    if len(topics) != config.topics or not all(isinstance(t, str) for t in topics):
        raise DatasetError(
            f"{manifest_path}: topics must be {config.topics} strings (config.topics)"
        )
    n_members = _count(manifest, "members", manifest_path)
    n_posts = _count(manifest, "posts", manifest_path)
    n_interactions = _count(manifest, "interactions", manifest_path)
    if (n_members, n_posts) != (config.members, config.posts):
        raise DatasetError(
            f"{manifest_path}: counts ({n_members} members, {n_posts} posts) disagree with "
            f"config ({config.members} members, {config.posts} posts)"
        )

    members_path, data = _read_file(root, manifest, "members")
    members: list[Member] = _read_jsonl(members_path, data, Member)
    _check_ids(members_path, [m.member_id for m in members], n_members, "member")

    posts_path, data = _read_file(root, manifest, "posts")
    posts: list[Post] = _read_jsonl(posts_path, data, Post)
    _check_ids(posts_path, [p.post_id for p in posts], n_posts, "post")
    known = set(topics)
    for lineno, post in enumerate(posts, start=1):
        if post.topic not in known:
            raise DatasetError(f"{posts_path}:{lineno}: unknown topic {post.topic!r}")
        if not 1 <= post.author_id <= n_members:
            raise DatasetError(f"{posts_path}:{lineno}: author_id {post.author_id} unknown")

    inter_path, data = _read_file(root, manifest, "interactions")
    interactions = _read_interactions(inter_path, data, n_members, n_posts)
    if len(interactions) != n_interactions:
        raise DatasetError(
            f"{inter_path}: {len(interactions)} rows, manifest says {n_interactions}"
        )

    aff_path, data = _read_file(root, manifest, "affinities")
    affinities = _read_affinities(aff_path, data, n_members, len(topics))

    return DemoDataset(
        config=config,
        topics=list(topics),
        members=members,
        posts=posts,
        interactions=interactions,
        affinities=affinities,
    )
