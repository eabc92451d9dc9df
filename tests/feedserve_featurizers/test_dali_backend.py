"""The dali featurizer backend: parity with the Python path, selection and start-up failure.

Parity is exact for every tensor (they are all integers: post ids, action codes, unix
seconds, percentile levels); there are no float tensors in the featurizer's batched outputs.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from feedserve.contracts import COUNT_KINDS, Action, EngagementCounts
from feedserve.data.io import read_dataset
from feedserve.prompts import BucketTable
from feedserve.settings import FeaturizerSettings
from feedserve.store import MemoryFeatureStore
from feedserve.store.base import HISTORY_DTYPE
from feedserve_featurizers.batch import (
    BackendUnavailable,
    PythonTensorizer,
    check_backend,
    counts_matrix,
    make_tensorizer,
    pad_left_numpy,
    ranker_events_batch,
)
from feedserve_featurizers.dali_backend import DaliTensorizer, gpu_count
from feedserve_featurizers.hydrate import FeaturizerContext, hydrate_member
from feedserve_featurizers.tensors import TENSOR_NAMES, history_tensors, ranker_events

REPO = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000
ENGAGEMENTS = [int(a) for a in Action if a != Action.impression]


def history(rows: list[tuple[int, int, int]]) -> np.ndarray:
    h = np.zeros(len(rows), dtype=HISTORY_DTYPE)
    for i, row in enumerate(rows):
        h[i] = row
    return h


def random_history(rng: np.random.Generator, n_posts: int, shuffle: bool = False) -> np.ndarray:
    """Sessions as the store records them: an impression of each post, sometimes followed by
    one or two engagements with it (any action), oldest first unless ``shuffle``."""
    rows: list[tuple[int, int, int]] = []
    t = T0
    for post in rng.integers(1, 2_000, size=n_posts):  # small id space: repeated posts
        t += int(rng.integers(0, 50))  # 0: ties in time
        rows.append((int(post), t, int(Action.impression)))
        for _ in range(int(rng.choice([0, 0, 1, 2]))):
            t += int(rng.integers(0, 5))
            rows.append((int(post), t, int(rng.choice(ENGAGEMENTS))))
    h = history(rows)
    if shuffle:
        h = h[rng.permutation(len(h))]
    return h


def edge_histories() -> list[np.ndarray]:
    """Empty, impressions only, one event, unseen (huge / zero / negative) ids, unsorted time,
    every action on one post, and a history far longer than any L used here."""
    rng = np.random.default_rng(5)
    return [
        np.zeros(0, dtype=HISTORY_DTYPE),
        history([(7, T0, int(Action.impression)), (8, T0 + 1, int(Action.impression))]),
        history([(42, T0, int(Action.like))]),
        history([(2**50, T0, int(Action.click)), (2**62, T0 + 1, int(Action.share))]),
        history([(0, T0, int(Action.comment)), (-3, T0 + 2, int(Action.dwell))]),
        history([(5, T0 + 9, int(Action.click)), (6, T0, int(Action.like)), (5, T0 + 1, 4)]),
        history([(9, T0 + i, int(a)) for i, a in enumerate(Action)]),
        history([(3, T0, int(Action.click)), (3, T0, int(Action.share)), (4, T0, 3)]),
        random_history(rng, 3_000),
    ]


def batch_of(seed: int, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = edge_histories()
    out += [random_history(rng, int(rng.integers(0, 600)), shuffle=i % 7 == 0) for i in range(n)]
    return out


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want) == set(TENSOR_NAMES)
    for name in TENSOR_NAMES:
        assert got[name].dtype == want[name].dtype == np.int64, name
        assert got[name].shape == want[name].shape, name
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


@pytest.fixture(scope="module")
def dali() -> DaliTensorizer:
    return DaliTensorizer(length=64, max_batch=32, device="cpu")


# --------------------------------------------------------------------------- history tensors


@pytest.mark.parametrize("length", [1, 3, 64, 1024])
def test_history_batches_equal_the_python_path(dali: DaliTensorizer, length: int) -> None:
    histories = batch_of(length, 60)  # more than max_batch: the batch runs in two pipelines
    want = PythonTensorizer().history_tensors_batch(histories, length)
    for i, h in enumerate(histories):  # the reference is history_tensors, row by row
        one = history_tensors(h, length)
        for name in TENSOR_NAMES:
            np.testing.assert_array_equal(want[name][i], one[name])
    assert_same(dali.history_tensors_batch(histories, length), want)
    assert_same(pad_left_numpy(ranker_events_batch(histories), length), want)


def test_edge_cases_by_value(dali: DaliTensorizer) -> None:
    out = dali.history_tensors_batch(edge_histories(), 4)
    ids, actions, stamps = (out[n] for n in TENSOR_NAMES)
    assert not ids[0].any() and not actions[0].any() and not stamps[0].any()  # empty
    assert not ids[1].any()  # impressions only: nothing for the ranker
    assert ids[2].tolist() == [0, 0, 0, 42] and actions[2].tolist() == [0, 0, 0, 3]
    assert ids[3].tolist() == [0, 0, 2**50, 2**62]  # ids outside the packed-key range
    assert ids[4].tolist() == [0, 0, 0, -3]  # (id 0 is indistinguishable from padding)
    # unsorted: post 6 (earliest) first, post 5 at its first engagement with its strongest
    assert ids[5].tolist() == [0, 0, 6, 5]
    assert stamps[5].tolist() == [0, 0, T0, T0 + 1]
    assert actions[5].tolist() == [0, 0, 3, 4]
    assert ids[6].tolist() == [0, 0, 0, 9] and actions[6].tolist() == [0, 0, 0, 5]
    assert ids[7].tolist() == [0, 0, 3, 4] and actions[7].tolist() == [0, 0, 5, 3]
    assert (ids[8] != 0).all()  # longer than L: full, the last 4 events
    assert stamps[8].tolist() == ranker_events(edge_histories()[8])["ts"][-4:].tolist()


def test_single_member_and_empty_batch(dali: DaliTensorizer) -> None:
    h = batch_of(3, 1)[-1]
    assert_same(dali.history_tensors(h, 64), history_tensors(h, 64))
    for tz in (dali, PythonTensorizer()):
        out = tz.history_tensors_batch([], 16)
        assert {k: v.shape for k, v in out.items()} == {k: (0, 16) for k in TENSOR_NAMES}
        with pytest.raises(ValueError, match="length"):
            tz.history_tensors_batch([h], 0)


def test_ranker_events_batch_equals_ranker_events() -> None:
    histories = batch_of(11, 40)
    events = ranker_events_batch(histories)
    ids, actions, stamps = events.split()
    assert events.lengths.sum() == len(events.post_ids)
    for i, h in enumerate(histories):
        want = ranker_events(h)
        assert ids[i].tolist() == want["post_id"].tolist()
        assert actions[i].tolist() == want["action"].tolist()
        assert stamps[i].tolist() == want["ts"].tolist()


def test_the_pipeline_is_shared_safely_by_threads(dali: DaliTensorizer) -> None:
    """Celery's thread pool calls one tensorizer from several threads at once."""
    batches = [batch_of(100 + i, 20) for i in range(8)]
    wants = [PythonTensorizer().history_tensors_batch(b, 64) for b in batches]
    with ThreadPoolExecutor(max_workers=4) as pool:
        gots = list(pool.map(lambda b: dali.history_tensors_batch(b, 64), batches))
    for got, want in zip(gots, wants, strict=True):
        assert_same(got, want)


@pytest.mark.gpu
@pytest.mark.skipif(gpu_count() == 0, reason="needs a CUDA GPU")
def test_gpu_pipeline_equals_the_python_path() -> None:
    gpu = DaliTensorizer(length=256, device="gpu")
    histories = batch_of(9, 50)
    assert_same(
        gpu.history_tensors_batch(histories, 256),
        PythonTensorizer().history_tensors_batch(histories, 256),
    )
    table = BucketTable.fit({"views": np.arange(100), "likes": np.zeros(100, dtype=np.int64)})
    counts = np.array([[0, 0], [50, 1], [10**9, 3]], dtype=np.int64)
    np.testing.assert_array_equal(
        gpu.count_buckets_batch(table, counts),
        PythonTensorizer().count_buckets_batch(table, counts),
    )


# --------------------------------------------------------------------------- count buckets


def bucket_tables() -> list[BucketTable]:
    rng = np.random.default_rng(3)
    corpus = {
        "views": rng.geometric(0.001, size=5_000),
        "likes": np.where(rng.random(5_000) < 0.6, 0, rng.geometric(0.05, size=5_000)),
        "comments": np.zeros(5_000, dtype=np.int64),  # all zeros: thresholds 0 then 1
        "shares": np.zeros(0, dtype=np.int64),  # empty corpus: every count is the top level
    }
    return [
        BucketTable.fit(corpus),
        BucketTable.fit({"views": [1, 2, 3]}, grid=(0, 50)),
        BucketTable.fit({"views": [1, 2, 3]}, grid=(0,)),  # one level: no comparison at all
    ]


@pytest.mark.parametrize("table", bucket_tables(), ids=["four-kinds", "one-kind", "one-level"])
def test_count_buckets_equal_the_python_path(dali: DaliTensorizer, table: BucketTable) -> None:
    rng = np.random.default_rng(4)
    thresholds = np.array([t for v in table.thresholds.values() for t in v], dtype=np.int64)
    values = np.concatenate(
        [[0, 1, 2**40], thresholds, thresholds + 1, np.maximum(thresholds - 1, 0)]
    )
    counts = rng.choice(values, size=(100, len(table.kinds)))
    counts[0] = 0  # zero counts
    want = PythonTensorizer().count_buckets_batch(table, counts)
    for i, j in np.ndindex(counts.shape):
        assert want[i, j] == table.bucket(table.kinds[j], int(counts[i, j]))
    got = dali.count_buckets_batch(table, counts)
    assert got.dtype == want.dtype == np.int64
    np.testing.assert_array_equal(got, want)
    assert set(np.unique(got).tolist()) <= set(table.grid)


def test_count_buckets_from_store_records(dali: DaliTensorizer) -> None:
    table = bucket_tables()[0]
    records = [
        EngagementCounts(),
        EngagementCounts(views=10_000, likes=3, comments=1, shares=2),
        EngagementCounts(views=7),
    ]
    counts = counts_matrix(table, records)
    assert counts.shape == (3, len(COUNT_KINDS)) and counts.dtype == np.int64
    got = dali.count_buckets_batch(table, counts)
    for i, rec in enumerate(records):
        assert got[i].tolist() == [table.bucket(k, rec.get(k)) for k in table.kinds]


def test_count_buckets_reject_bad_counts(dali: DaliTensorizer) -> None:
    table = bucket_tables()[1]
    for tz in (dali, PythonTensorizer()):
        with pytest.raises(ValueError, match=">= 0"):
            tz.count_buckets_batch(table, np.array([[-1]]))
        with pytest.raises(ValueError, match="shape"):
            tz.count_buckets_batch(table, np.zeros((2, 3), dtype=np.int64))
        with pytest.raises(TypeError, match="integers"):
            tz.count_buckets_batch(table, np.array([[1.5]]))
        assert tz.count_buckets_batch(table, np.zeros((0, 1), dtype=np.int64)).shape == (0, 1)


# --------------------------------------------------------------------------- selection


def test_backend_selection_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert FeaturizerSettings().featurizer_backend == "celery"  # the default: Python
    assert isinstance(make_tensorizer(FeaturizerSettings()), PythonTensorizer)
    monkeypatch.setenv("FEEDSERVE_FEATURIZER_BACKEND", "dali")
    monkeypatch.setenv("FEEDSERVE_DALI_DEVICE", "cpu")
    settings = FeaturizerSettings()
    assert settings.featurizer_backend == "dali"
    tz = make_tensorizer(settings)
    assert isinstance(tz, DaliTensorizer) and tz.device == "cpu"
    monkeypatch.setenv("FEEDSERVE_FEATURIZER_BACKEND", "arrow")
    with pytest.raises(ValueError, match="celery"):
        FeaturizerSettings()


def test_dali_without_the_extra_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # `import nvidia.dali` now fails
    settings = FeaturizerSettings(featurizer_backend="dali")
    for call in (check_backend, make_tensorizer):
        with pytest.raises(BackendUnavailable, match=r"pip install 'feedserve\[dali\]'"):
            call(settings)
    check_backend(FeaturizerSettings())  # celery needs nothing


def test_worker_without_dali_stops_at_start_up_with_one_line() -> None:
    """The Celery worker checks its backend before it takes a task: exit 1, no traceback."""
    code = (
        "import sys; sys.modules['nvidia.dali'] = None; "
        "sys.argv = ['celery', '-A', 'feedserve_featurizers.celery_app', 'worker', "
        "'--pool=solo', '--without-gossip', '--without-mingle', '--without-heartbeat']; "
        "from celery.__main__ import main; main()"
    )
    env = {**os.environ, "FEEDSERVE_FEATURIZER_BACKEND": "dali", "FEEDSERVE_REDIS_URL": ""}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=env,
        check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "feedserve featurizer: featurizer backend 'dali' needs NVIDIA DALI" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_operator_passes_the_pool_backend_to_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    from feedserve_operator.render import featurizer_deployment
    from feedserve_operator.spec import FeedPipelineSpec

    for backend in ("celery", "dali"):
        spec = FeedPipelineSpec.model_validate({"featurizers": {"backend": backend}})
        dep = featurizer_deployment("feed", "ns", spec, 1, None, "hash")
        pod = dep["spec"]["template"]
        assert pod["metadata"]["labels"]["feedserve.io/featurizer-backend"] == backend
        worker = next(c for c in pod["spec"]["containers"] if c["name"] == "featurizer")
        env = {e["name"]: e["value"] for e in worker["env"] if "value" in e}
        for name, value in env.items():  # the worker's settings read what the pod gets
            monkeypatch.setenv(name, value)
        assert FeaturizerSettings().featurizer_backend == backend


# --------------------------------------------------------------------------- hydration


def test_hydrate_member_is_identical_on_both_backends(built: Any) -> None:
    """Every demo member (plus an unknown one) through hydrate_member on each backend."""
    ds = read_dataset(Path(built.data_dir))
    store = MemoryFeatureStore()
    store.bulk_load(ds.members, ds.posts, ds.interactions)
    settings = FeaturizerSettings(artifacts_dir=Path(built.artifacts_dir))
    py_ctx = FeaturizerContext.load(settings, store=store)
    assert isinstance(py_ctx.tensorizer, PythonTensorizer)
    dali_ctx = dataclasses.replace(
        py_ctx, tensorizer=DaliTensorizer(length=settings.ranker_history_len, device="cpu")
    )
    now = int(ds.interactions["ts"].max()) + 60
    members = [*(m.member_id for m in ds.members[:150]), 10**9]
    for member_id in members:
        want = hydrate_member(py_ctx, member_id, None, now, with_prompt=False)
        got = hydrate_member(dali_ctx, member_id, None, now, with_prompt=False)
        assert set(got) == set(want)
        for key, value in want.items():
            if isinstance(value, np.ndarray):
                arr = got[key]
                assert isinstance(arr, np.ndarray) and arr.dtype == value.dtype, key
                np.testing.assert_array_equal(arr, value, err_msg=key)
            else:
                assert got[key] == value, key
    # the whole store as one batch
    histories = [store.get_history(m) for m in members]
    L = settings.ranker_history_len
    assert_same(
        dali_ctx.tensorizer.history_tensors_batch(histories, L),
        PythonTensorizer().history_tensors_batch(histories, L),
    )
