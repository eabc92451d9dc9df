"""Dataset directory format: round trip, byte-for-byte determinism and clear errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from feedserve.data.io import (
    FILES,
    FORMAT,
    INTERACTIONS_HEADER,
    MANIFEST,
    VERSION,
    DatasetError,
    read_dataset,
    write_dataset,
)
from feedserve.data.synthetic import DemoConfig, DemoDataset, generate

CFG = DemoConfig(members=150, posts=400, seed=21)


@pytest.fixture(scope="module")
def ds() -> DemoDataset:
    return generate(CFG)


@pytest.fixture
def written(ds: DemoDataset, tmp_path: Path) -> Path:
    out = tmp_path / "demo"
    write_dataset(ds, out)
    return out


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _edit_manifest(directory: Path, **changes: Any) -> None:
    path = directory / MANIFEST
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest.update(changes)
    path.write_text(json.dumps(manifest), encoding="utf-8")


def _drop_checksum(directory: Path, key: str) -> None:
    path = directory / MANIFEST
    manifest = json.loads(path.read_text(encoding="utf-8"))
    del manifest["files"][key]["sha256"]
    path.write_text(json.dumps(manifest), encoding="utf-8")


# --- writing and round trip ---------------------------------------------------------------------


def test_layout_and_manifest(written: Path, ds: DemoDataset) -> None:
    assert sorted(p.name for p in written.iterdir()) == sorted([MANIFEST, *FILES.values()])
    manifest = json.loads((written / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["format"] == FORMAT == "feedserve-demo"
    assert manifest["version"] == VERSION == 1
    assert manifest["seed"] == CFG.seed
    assert manifest["config"] == dataclasses.asdict(CFG)
    assert manifest["topics"] == ds.topics
    assert manifest["counts"] == {
        "members": len(ds.members),
        "posts": len(ds.posts),
        "interactions": len(ds.interactions),
    }
    assert {k: v["path"] for k, v in manifest["files"].items()} == FILES
    assert all(len(v["sha256"]) == 64 for v in manifest["files"].values())


def test_file_contents(written: Path, ds: DemoDataset) -> None:
    lines = (written / "members.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(ds.members)
    assert json.loads(lines[0]) == ds.members[0].model_dump(mode="json")
    posts = (written / "posts.jsonl").read_text(encoding="utf-8").splitlines()
    assert json.loads(posts[-1]) == ds.posts[-1].model_dump(mode="json")
    csv = (written / "interactions.csv").read_text(encoding="ascii").splitlines()
    assert csv[0] == INTERACTIONS_HEADER == "member_id,post_id,action,ts,dwell_ms"
    assert len(csv) == len(ds.interactions) + 1
    m, p, action, ts, dwell = csv[1].split(",")
    row = ds.interactions[0]
    assert (int(m), int(p), int(ts), int(dwell)) == (
        row["member_id"],
        row["post_id"],
        row["ts"],
        row["dwell_ms"],
    )
    assert action == "impression"
    assert {line.split(",")[2] for line in csv[1:]} <= {
        "impression",
        "click",
        "like",
        "comment",
        "share",
        "dwell",
    }
    aff = np.load(written / "affinities.npy", allow_pickle=False)
    assert aff.dtype == np.float32 and np.array_equal(aff, ds.affinities)


def test_non_ascii_written_as_utf8(written: Path) -> None:
    text = (written / "members.jsonl").read_text(encoding="utf-8")
    assert not text.isascii() and "\\u" not in text


def test_round_trip(written: Path, ds: DemoDataset) -> None:
    back = read_dataset(written)
    assert back == ds
    assert back.config == ds.config
    assert back.members == ds.members and back.posts == ds.posts
    assert np.array_equal(back.interactions, ds.interactions)
    assert back.interactions.dtype == ds.interactions.dtype
    assert back.affinities.dtype == np.float32
    for kind, counts in ds.engagement_counts().items():
        assert np.array_equal(back.engagement_counts()[kind], counts)


def test_read_accepts_manifest_path(written: Path, ds: DemoDataset) -> None:
    assert read_dataset(written / MANIFEST) == ds


def test_round_trip_empty_log(ds: DemoDataset, tmp_path: Path) -> None:
    empty = dataclasses.replace(ds, interactions=ds.interactions[:0])
    write_dataset(empty, tmp_path / "e")
    back = read_dataset(tmp_path / "e")
    assert back == empty and len(back.interactions) == 0


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    write_dataset(generate(CFG), tmp_path / "a")
    write_dataset(generate(CFG), tmp_path / "b")
    assert _files(tmp_path / "a") == _files(tmp_path / "b")


def test_different_seed_different_bytes(written: Path, tmp_path: Path) -> None:
    write_dataset(generate(dataclasses.replace(CFG, seed=CFG.seed + 1)), tmp_path / "c")
    a, c = _files(written), _files(tmp_path / "c")
    for name in FILES.values():
        assert a[name] != c[name], name


def test_overwrite_leaves_no_temp_files(ds: DemoDataset, written: Path) -> None:
    other = generate(DemoConfig(members=20, posts=30, seed=1))
    write_dataset(other, written)
    assert read_dataset(written) == other
    assert not [p for p in written.iterdir() if p.name.startswith(".")]


# --- errors -------------------------------------------------------------------------------------


def test_dataset_error_is_value_error() -> None:
    assert issubclass(DatasetError, ValueError)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"manifest\.json: missing"):
        read_dataset(tmp_path / "nope")


def test_missing_data_file(written: Path) -> None:
    (written / "members.jsonl").unlink()
    with pytest.raises(DatasetError, match=r"members\.jsonl: missing"):
        read_dataset(written)


@pytest.mark.parametrize("name", ["posts.jsonl", "interactions.csv", "affinities.npy"])
def test_missing_each_file(written: Path, name: str) -> None:
    (written / name).unlink()
    with pytest.raises(DatasetError, match=name.replace(".", r"\.")):
        read_dataset(written)


def test_malformed_manifest_json(written: Path) -> None:
    (written / MANIFEST).write_text("{not json", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"manifest\.json: malformed manifest"):
        read_dataset(written)


def test_wrong_format(written: Path) -> None:
    _edit_manifest(written, format="something-else")
    with pytest.raises(DatasetError, match="format is 'something-else'"):
        read_dataset(written)


def test_wrong_version(written: Path) -> None:
    _edit_manifest(written, version=99)
    with pytest.raises(DatasetError, match="unsupported version 99"):
        read_dataset(written)


def test_invalid_config_in_manifest(written: Path) -> None:
    _edit_manifest(written, config={"members": 1, "posts": 1, "seed": 0})
    with pytest.raises(DatasetError, match="invalid config"):
        read_dataset(written)


def test_manifest_missing_section(written: Path) -> None:
    path = written / MANIFEST
    manifest = json.loads(path.read_text(encoding="utf-8"))
    del manifest["files"]
    path.write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(DatasetError, match="'files' missing"):
        read_dataset(written)


def test_checksum_mismatch_names_file(written: Path) -> None:
    path = written / "posts.jsonl"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DatasetError, match=r"posts\.jsonl: checksum mismatch"):
        read_dataset(written)


def test_malformed_member_line(written: Path) -> None:
    path = written / "members.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[2] = '{"member_id": 3, "name": "x"}'
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    _drop_checksum(written, "members")
    with pytest.raises(DatasetError, match=r"members\.jsonl:3: invalid member"):
        read_dataset(written)


def test_member_ids_out_of_order(written: Path) -> None:
    path = written / "members.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[0], lines[1] = lines[1], lines[0]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    _drop_checksum(written, "members")
    with pytest.raises(DatasetError, match=r"members\.jsonl:1: member ids must be"):
        read_dataset(written)


def test_malformed_csv_row(written: Path) -> None:
    path = written / "interactions.csv"
    lines = path.read_text(encoding="ascii").splitlines()
    lines[5] = "1,2,teleport,3,0"
    path.write_text("\n".join(lines) + "\n", encoding="ascii")
    _drop_checksum(written, "interactions")
    with pytest.raises(DatasetError, match=r"interactions\.csv:6: malformed row"):
        read_dataset(written)


def test_csv_bad_header(written: Path) -> None:
    path = written / "interactions.csv"
    text = path.read_text(encoding="ascii")
    path.write_text("a,b,c,d,e" + text[text.index("\n") :], encoding="ascii")
    _drop_checksum(written, "interactions")
    with pytest.raises(DatasetError, match=r"interactions\.csv:1: header"):
        read_dataset(written)


def test_csv_unknown_post(written: Path, ds: DemoDataset) -> None:
    path = written / "interactions.csv"
    lines = path.read_text(encoding="ascii").splitlines()
    lines[3] = f"1,{len(ds.posts) + 1},like,{ds.config.start_ts},0"
    path.write_text("\n".join(lines) + "\n", encoding="ascii")
    _drop_checksum(written, "interactions")
    with pytest.raises(DatasetError, match=r"interactions\.csv:\d+: post_id outside"):
        read_dataset(written)


def test_csv_row_count_mismatch(written: Path) -> None:
    path = written / "interactions.csv"
    lines = path.read_text(encoding="ascii").splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n", encoding="ascii")
    _drop_checksum(written, "interactions")
    with pytest.raises(DatasetError, match=r"interactions\.csv: .*manifest says"):
        read_dataset(written)


def test_bad_affinities(written: Path) -> None:
    np.save(written / "affinities.npy", np.zeros((3, 3), dtype=np.float64))
    _drop_checksum(written, "affinities")
    with pytest.raises(DatasetError, match=r"affinities\.npy: expected float32"):
        read_dataset(written)


def test_garbage_affinities(written: Path) -> None:
    (written / "affinities.npy").write_bytes(b"not an array")
    _drop_checksum(written, "affinities")
    with pytest.raises(DatasetError, match=r"affinities\.npy: not a valid \.npy"):
        read_dataset(written)
