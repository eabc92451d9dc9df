"""Every Triton model: ``config.pbtxt`` agrees with ``SIGNATURES``, and ``1/model.py`` honours it.

``model.py`` runs here under a fake ``triton_python_backend_utils`` (the real one exists only
inside tritonserver) against the artifacts built by the real pipeline, in embedded mode.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from google.protobuf import json_format, text_format  # type: ignore[import-untyped]
from tritonclient.grpc import model_config_pb2

from feedserve.models.gr_serving import RankRequest
from feedserve.models.post_table import read_snapshot
from feedserve.models.signatures import SIGNATURES, ModelSignature
from feedserve.prompts import special_tokens
from feedserve.settings import ModelSettings
from feedserve.store import EmbeddingRecord, open_embedding_log

REPO = Path(__file__).resolve().parents[2]
MODEL_REPO = REPO / "model_repo"
MODEL_NAMES = sorted(p.parent.name for p in MODEL_REPO.glob("*/config.pbtxt"))

CONFIG_NUMPY: dict[str, type[np.generic]] = {
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP32": np.float32,
    "TYPE_STRING": np.object_,
}


# --- config.pbtxt vs SIGNATURES --------------------------------------------------------------


def load_config(name: str) -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig()
    text_format.Parse((MODEL_REPO / name / "config.pbtxt").read_text(), config)
    return config


def type_name(data_type: int) -> str:
    return str(model_config_pb2.DataType.Name(data_type))


def signature_dtype(data_type: int) -> str:
    """Config type → the signature's Triton datatype (``TYPE_STRING`` is ``BYTES``)."""
    name = type_name(data_type).removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


def config_mismatches(config: model_config_pb2.ModelConfig, sig: ModelSignature) -> list[str]:
    problems = []
    if config.name != sig.name:
        problems.append(f"name {config.name!r} != {sig.name!r}")
    if config.backend != "python":
        problems.append(f"backend {config.backend!r}")
    if config.max_batch_size != sig.max_batch_size:
        problems.append(f"max_batch_size {config.max_batch_size} != {sig.max_batch_size}")
    if not config.HasField("dynamic_batching"):
        problems.append("no dynamic_batching")
    for kind, got, want in (
        ("input", config.input, sig.inputs),
        ("output", config.output, sig.outputs),
    ):
        got_names = [t.name for t in got]
        want_names = [t.name for t in want]
        if got_names != want_names:
            problems.append(f"{kind} names {got_names} != {want_names}")
            continue
        for cfg_t, spec in zip(got, want, strict=True):
            where = f"{kind} {spec.name}"
            if signature_dtype(cfg_t.data_type) != spec.dtype:
                problems.append(f"{where}: {type_name(cfg_t.data_type)} vs {spec.dtype}")
            if tuple(cfg_t.dims) != spec.dims:
                problems.append(f"{where}: dims {list(cfg_t.dims)} vs {list(spec.dims)}")
            if kind == "input":
                if cfg_t.optional != spec.optional:
                    problems.append(f"{where}: optional {cfg_t.optional} vs {spec.optional}")
                if cfg_t.allow_ragged_batch != spec.ragged:
                    problems.append(
                        f"{where}: allow_ragged_batch {cfg_t.allow_ragged_batch} vs {spec.ragged}"
                    )
    return problems


def test_every_signature_has_a_model_dir() -> None:
    assert sorted(SIGNATURES) == MODEL_NAMES
    for name in MODEL_NAMES:
        assert (MODEL_REPO / name / "1" / "model.py").is_file()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_config_agrees_with_signature(name: str) -> None:
    config = load_config(name)
    assert config_mismatches(config, SIGNATURES[name]) == []
    assert config.max_batch_size > 0
    assert all(g.count >= 1 for g in config.instance_group)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: setattr(c.input[0], "data_type", model_config_pb2.TYPE_INT32),
        lambda c: c.input[0].dims.append(4),
        lambda c: setattr(c.input[0], "optional", not c.input[0].optional),
        lambda c: setattr(c.input[0], "allow_ragged_batch", not c.input[0].allow_ragged_batch),
        lambda c: setattr(c.output[0], "name", "renamed"),
        lambda c: c.input.add(name="extra", data_type=model_config_pb2.TYPE_FP32, dims=[1]),
        lambda c: setattr(c, "max_batch_size", c.max_batch_size + 1),
        lambda c: setattr(c, "backend", "onnxruntime"),
        lambda c: c.ClearField("dynamic_batching"),
    ],
)
def test_the_agreement_check_catches_drift(
    mutate: Callable[[model_config_pb2.ModelConfig], None],
) -> None:
    for name in MODEL_NAMES:
        config = load_config(name)
        mutate(config)
        assert config_mismatches(config, SIGNATURES[name]), name


def test_bytes_travel_as_type_string() -> None:
    config = load_config("retrieval_encoder")
    text = next(t for t in config.input if t.name == "text")
    assert type_name(text.data_type) == "TYPE_STRING"
    assert SIGNATURES["retrieval_encoder"].input("text").dtype == "BYTES"


# --- a fake triton_python_backend_utils ------------------------------------------------------


class FakeTensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name = name
        self._array = array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class FakeRequest:
    def __init__(self, inputs: dict[str, np.ndarray]) -> None:
        self.tensors = {n: FakeTensor(n, a) for n, a in inputs.items()}
        self.reads: list[str] = []


class FakeTritonError(Exception):
    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self._msg = msg

    def message(self) -> str:
        return self._msg


class FakeInferenceResponse:
    def __init__(
        self, output_tensors: list[FakeTensor], error: FakeTritonError | None = None
    ) -> None:
        self._outputs = list(output_tensors)
        self._error = error

    def output_tensors(self) -> list[FakeTensor]:
        return self._outputs

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> FakeTritonError | None:
        return self._error

    def outputs(self) -> dict[str, np.ndarray]:
        return {t.name(): t.as_numpy() for t in self._outputs}


class FakeLogger:
    lines: ClassVar[list[tuple[str, str]]] = []

    @classmethod
    def log_info(cls, msg: str) -> None:
        cls.lines.append(("info", msg))

    @classmethod
    def log_warn(cls, msg: str) -> None:
        cls.lines.append(("warn", msg))

    @classmethod
    def log_error(cls, msg: str) -> None:
        cls.lines.append(("error", msg))

    @classmethod
    def log_verbose(cls, msg: str) -> None:
        cls.lines.append(("verbose", msg))


def get_input_tensor_by_name(request: FakeRequest, name: str) -> FakeTensor | None:
    request.reads.append(name)
    return request.tensors.get(name)


def fake_pb_utils() -> types.ModuleType:
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor = FakeTensor  # type: ignore[attr-defined]
    module.InferenceResponse = FakeInferenceResponse  # type: ignore[attr-defined]
    module.TritonError = FakeTritonError  # type: ignore[attr-defined]
    module.Logger = FakeLogger  # type: ignore[attr-defined]
    module.get_input_tensor_by_name = get_input_tensor_by_name  # type: ignore[attr-defined]
    return module


# --- loading model.py --------------------------------------------------------------------------


def private_artifacts(built: Any, root: Path) -> Path:
    """The built artifacts behind symlinks, with a nearline log of this test's own."""
    root.mkdir(parents=True, exist_ok=True)
    for entry in Path(built.artifacts_dir).iterdir():
        if entry.name != "nearline":
            (root / entry.name).symlink_to(entry)
    return root


def initialize(name: str, artifacts: Path, mp: pytest.MonkeyPatch, poll_s: float = 0.2) -> Any:
    mp.setitem(sys.modules, "triton_python_backend_utils", fake_pb_utils())
    mp.setenv("FEEDSERVE_ARTIFACTS_DIR", str(artifacts))
    mp.setenv("FEEDSERVE_REDIS_URL", "")
    mp.setenv("FEEDSERVE_NEARLINE_POLL_S", str(poll_s))
    mp.setenv("FEEDSERVE_DEVICE", "cpu")
    spec = importlib.util.spec_from_file_location(
        f"_feedserve_model_repo_{name}", MODEL_REPO / name / "1" / "model.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert name == module.MODEL
    config = load_config(name)
    model = module.TritonPythonModel()
    model.initialize(
        {
            "model_config": json_format.MessageToJson(config),
            "model_instance_kind": "CPU",
            "model_instance_name": f"{name}_0",
            "model_instance_device_id": "0",
            "model_repository": str(MODEL_REPO / name),
            "model_version": "1",
            "model_name": name,
        }
    )
    assert ("info", f"{name} ready") in FakeLogger.lines
    return model


@pytest.fixture(scope="module")
def models(built: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    grad, threads = torch.is_grad_enabled(), torch.get_num_threads()
    artifacts = private_artifacts(built, tmp_path_factory.mktemp("model_repo") / "artifacts")
    with pytest.MonkeyPatch.context() as mp:
        loaded = {name: initialize(name, artifacts, mp) for name in MODEL_NAMES}
    yield loaded
    torch.set_grad_enabled(grad)  # the handlers switch autograd off process-wide
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def snapshot(built: Any) -> tuple[np.ndarray, np.ndarray]:
    snap = read_snapshot(Path(built.artifacts_dir) / "index")
    return snap.ids, np.asarray(snap.embeddings)


# --- requests ----------------------------------------------------------------------------------


def config_dtype(name: str, tensor: str) -> type[np.generic]:
    t = next(t for t in load_config(name).input if t.name == tensor)
    return CONFIG_NUMPY[type_name(t.data_type)]


def make_request(name: str, **values: Any) -> FakeRequest:
    """A request with batch dim 1, each input cast to the dtype its config declares."""
    inputs = {}
    for tensor, value in values.items():
        dtype = config_dtype(name, tensor)
        arr = np.array([[value]], dtype=object) if dtype is np.object_ else np.asarray(value)
        inputs[tensor] = arr.astype(dtype).reshape(1, -1)
    return FakeRequest(inputs)


def encoder_inputs(models: dict[str, Any], text: str) -> dict[str, Any]:
    tokenizer = models["retrieval_encoder"].adapter.handler.encoder.tokenizer
    return {"input_ids": tokenizer.encode(text), "text": text.encode("utf-8")}


def index_inputs(
    query: np.ndarray, k: int, exclude: list[int], blocked: list[int] | None = None
) -> dict[str, Any]:
    return {"query": query, "k": [k], "exclude_ids": exclude, "blocked_author_ids": blocked or []}


def ranker_inputs(rng: np.random.Generator, ids: np.ndarray, length: int, k: int) -> dict[str, Any]:
    return {
        "history_post_ids": rng.choice(ids, length),
        "history_actions": rng.integers(2, 7, length),
        "history_timestamps": np.sort(rng.integers(1_767_225_600, 1_769_817_600, length)),
        "candidate_ids": rng.choice(ids, k, replace=False),
        "request_time": [1_769_817_600],
    }


def full_request(
    name: str, models: dict[str, Any], snapshot: tuple[np.ndarray, np.ndarray]
) -> FakeRequest:
    """A valid request carrying every input the config declares."""
    ids, emb = snapshot
    rng = np.random.default_rng(0)
    if name == "retrieval_encoder":
        values = encoder_inputs(models, "Staff data engineer who likes streaming systems")
    elif name == "post_index":
        values = index_inputs(emb[3], 10, [int(ids[7]), int(ids[8])])
    else:
        values = ranker_inputs(rng, ids, 12, 20)
    declared = {t.name for t in load_config(name).input}
    # post_index takes its query as an embedding or as post ids, never both
    alternatives = {"query_post_ids"} if name == "post_index" else set()
    assert set(values) == declared - alternatives
    return make_request(name, **values)


def execute(model: Any, requests: list[FakeRequest]) -> list[FakeInferenceResponse]:
    responses = model.execute(requests)
    assert len(responses) == len(requests)
    assert all(isinstance(r, FakeInferenceResponse) for r in responses)
    return list(responses)


def ok(response: FakeInferenceResponse) -> dict[str, np.ndarray]:
    err = response.error()
    assert err is None, err.message() if err else ""
    return response.outputs()


def failed(response: FakeInferenceResponse, name: str, fragment: str) -> None:
    err = response.error()
    assert err is not None, "expected an error response"
    assert err.message().startswith(f"{name}: "), err.message()
    assert fragment in err.message(), err.message()
    assert response.output_tensors() == []


# --- model.py against its config -------------------------------------------------------------


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_reads_declared_inputs_and_returns_declared_outputs(
    name: str, models: dict[str, Any], snapshot: tuple[np.ndarray, np.ndarray]
) -> None:
    config = load_config(name)
    request = full_request(name, models, snapshot)
    (response,) = execute(models[name], [request])
    outputs = ok(response)
    declared_inputs = [t.name for t in config.input]
    assert sorted(set(request.reads)) == sorted(declared_inputs)  # all read, nothing else
    assert len(request.reads) == len(declared_inputs)  # each read once
    assert [t.name() for t in response.output_tensors()] == [t.name for t in config.output]
    for out in config.output:
        arr = outputs[out.name]
        assert arr.dtype == CONFIG_NUMPY[type_name(out.data_type)], out.name
        assert arr.ndim == 1 + len(out.dims), out.name
        assert arr.shape[0] == 1, out.name  # the batch dimension is back
        for got, want in zip(arr.shape[1:], out.dims, strict=True):
            assert want == -1 or got == want, out.name


def test_encoder_outputs(models: dict[str, Any], snapshot: tuple[np.ndarray, np.ndarray]) -> None:
    text = "Hiring senior platform engineers for our Kubernetes team"
    values = encoder_inputs(models, text)
    both, ids_only, text_only = execute(
        models["retrieval_encoder"],
        [
            make_request("retrieval_encoder", **values),
            make_request("retrieval_encoder", input_ids=values["input_ids"]),
            make_request("retrieval_encoder", text=values["text"]),
        ],
    )
    emb = ok(both)["embedding"]
    assert emb.shape == (1, snapshot[1].shape[1])
    assert np.linalg.norm(emb[0]) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(ok(ids_only)["embedding"], emb, atol=1e-5)
    np.testing.assert_allclose(ok(text_only)["embedding"], emb, atol=1e-5)
    other = execute(
        models["retrieval_encoder"], [make_request("retrieval_encoder", text=b"weekend recipes")]
    )[0]
    assert float(ok(other)["embedding"][0] @ emb[0]) < 0.99


def test_encoder_knows_the_bucket_tokens(models: dict[str, Any]) -> None:
    """export_encoder added every bucket token to the tokenizer and the embedding matrix."""
    encoder = models["retrieval_encoder"].adapter.handler.encoder
    tok = encoder.tokenizer
    assert encoder.config.special_tokens == special_tokens()
    weight = encoder.model.get_input_embeddings().weight.detach().numpy()
    assert weight.shape[0] == tok.vocab_size
    bucket_rows = [tok.token_id(t) for t in special_tokens()]
    assert all(row is not None for row in bucket_rows)
    first = min(int(r) for r in bucket_rows if r is not None)
    assert sorted(bucket_rows) == list(range(first, tok.vocab_size))  # appended at the end
    # new rows start at the mean of the base vocabulary
    np.testing.assert_allclose(
        weight[first:],
        np.broadcast_to(weight[:first].mean(axis=0), weight[first:].shape),
        atol=1e-5,
    )
    ids = tok.encode("[post] engagement: <views_p99> <likes_p0> <shares_p50>")
    assert {tok.token_id(t) for t in ("<views_p99>", "<likes_p0>", "<shares_p50>")} <= set(
        ids.tolist()
    )
    edge = [int(ids[0]), tok.vocab_size - 1, int(ids[-1])]  # the last id is still in range
    for response in execute(
        models["retrieval_encoder"],
        [make_request("retrieval_encoder", input_ids=i) for i in (ids, edge)],
    ):
        emb = ok(response)["embedding"]
        assert np.linalg.norm(emb[0]) == pytest.approx(1.0, abs=1e-5)


def test_index_outputs(models: dict[str, Any], snapshot: tuple[np.ndarray, np.ndarray]) -> None:
    ids, emb = snapshot
    k = 25
    exclude = [int(ids[11]), int(ids[12])]
    query = emb[40] + 0.3 * emb[11]
    (response,) = execute(
        models["post_index"], [make_request("post_index", **index_inputs(query, k, exclude))]
    )
    out = ok(response)
    got_ids, got_scores = out["post_ids"][0], out["scores"][0]
    assert got_ids.shape == got_scores.shape == (k,)
    assert set(got_ids.tolist()) <= set(ids.tolist())
    assert len(set(got_ids.tolist())) == k
    assert not set(got_ids.tolist()) & set(exclude)
    assert (np.diff(got_scores) <= 1e-6).all()  # best first
    assert got_ids[0] == ids[40]
    # exact: the brute-force top-k over the snapshot
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    scores = unit @ query.astype(np.float32)
    scores[np.isin(ids, exclude)] = -np.inf
    order = np.argsort(-scores, kind="stable")[:k]
    np.testing.assert_array_equal(got_ids, ids[order])
    np.testing.assert_allclose(got_scores, scores[order], atol=1e-5)


def test_ranker_outputs(models: dict[str, Any], snapshot: tuple[np.ndarray, np.ndarray]) -> None:
    ids, _ = snapshot
    values = ranker_inputs(np.random.default_rng(1), ids, 15, 30)
    (response,) = execute(
        models["generative_ranker"], [make_request("generative_ranker", **values)]
    )
    scores = ok(response)["scores"]
    assert scores.shape == (1, 30)
    assert np.isfinite(scores).all() and np.ptp(scores) > 0
    service = models["generative_ranker"].adapter.handler.service
    want = service.score(
        [
            RankRequest(
                values["history_post_ids"],
                values["history_actions"],
                values["history_timestamps"],
                values["candidate_ids"],
                values["request_time"][0],
            )
        ]
    )[0]
    np.testing.assert_allclose(scores[0], want, rtol=1e-5, atol=1e-5)


# --- per-request errors ----------------------------------------------------------------------


def assert_same(got: np.ndarray, want: np.ndarray, tol: float, key: str) -> None:
    if got.dtype == np.object_:  # BYTES outputs (the encoder's embedding space)
        assert got.tolist() == want.tolist(), key
    else:
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=key)


def neighbour_still_succeeds(
    name: str, models: dict[str, Any], good: FakeRequest, bad: list[tuple[FakeRequest, str]]
) -> None:
    """Bad requests fail alone: the good one in the same batch matches its solo result."""
    (solo,) = execute(
        models[name], [FakeRequest({n: t.as_numpy() for n, t in good.tensors.items()})]
    )
    batch = [bad[0][0], good, *(b for b, _ in bad[1:])]
    responses = execute(models[name], batch)
    failed(responses[0], name, bad[0][1])
    for response, (_, fragment) in zip(responses[2:], bad[1:], strict=True):
        failed(response, name, fragment)
    got, want = ok(responses[1]), ok(solo)
    assert got.keys() == want.keys()
    for key in want:
        assert_same(got[key], want[key], 1e-5, key)
    for request in batch:
        assert set(request.reads) <= {t.name for t in load_config(name).input}


def test_encoder_bad_requests(models: dict[str, Any]) -> None:
    name = "retrieval_encoder"
    vocab = models[name].adapter.handler.encoder.tokenizer.vocab_size
    good = make_request(name, **encoder_inputs(models, "product manager, fintech"))
    neighbour_still_succeeds(
        name,
        models,
        good,
        [
            (FakeRequest({}), "either input_ids or text"),  # both optional inputs missing
            (make_request(name, input_ids=[101, vocab, 102]), "out of range"),
            (make_request(name, input_ids=[101, -1, 102]), "out of range"),
            (make_request(name, input_ids=np.zeros(0, np.int64)), "empty"),
        ],
    )


def test_index_bad_requests(
    models: dict[str, Any], snapshot: tuple[np.ndarray, np.ndarray]
) -> None:
    name = "post_index"
    _, emb = snapshot
    dim = emb.shape[1]
    good = make_request(name, **index_inputs(emb[5], 7, []))
    neighbour_still_succeeds(
        name,
        models,
        good,
        [
            (make_request(name, k=[5]), "send either query or query_post_ids"),
            (make_request(name, query=emb[1], query_post_ids=[1], k=[5]), "not both"),
            (make_request(name, query_post_ids=[10**12], k=[5]), "none of query_post_ids"),
            (make_request(name, query=emb[1]), "missing required input 'k'"),
            (make_request(name, **index_inputs(emb[1], 0, [])), "k must be"),
            (make_request(name, **index_inputs(emb[1], 10**6, [])), "k must be"),
            (make_request(name, **index_inputs(np.ones(dim - 1), 5, [])), f"{dim} values"),
        ],
    )


def test_index_exclude_ids_is_optional(
    models: dict[str, Any], snapshot: tuple[np.ndarray, np.ndarray]
) -> None:
    _, emb = snapshot
    request = make_request("post_index", query=emb[2], k=[4])
    out = ok(execute(models["post_index"], [request])[0])
    assert out["post_ids"].shape == (1, 4)
    assert sorted(request.reads) == sorted(t.name for t in load_config("post_index").input)


def test_index_query_by_post_ids_and_blocked_authors(
    built: Any, models: dict[str, Any], snapshot: tuple[np.ndarray, np.ndarray]
) -> None:
    """Session context: the mean embedding of some posts is the query, those posts excluded;
    blocked authors' posts never come back."""
    ids, emb = snapshot
    snap = read_snapshot(Path(built.artifacts_dir) / "index")
    seeds = [int(ids[0]), int(ids[1])]
    request = make_request("post_index", query_post_ids=seeds, k=[10])
    got = ok(execute(models["post_index"], [request])[0])["post_ids"][0].tolist()
    mean = emb[:2].mean(axis=0)
    scores = emb @ (mean / np.linalg.norm(mean))
    want = [int(ids[i]) for i in np.argsort(-scores) if int(ids[i]) not in seeds][:10]
    assert got == want
    author_of = dict(zip(ids.tolist(), snap.author_ids.tolist(), strict=True))
    blocked = sorted({author_of[p] for p in got[:3]})
    request = make_request("post_index", **index_inputs(mean, 10, [], blocked))
    got = ok(execute(models["post_index"], [request])[0])["post_ids"][0].tolist()
    assert len(got) == 10 and not {author_of[p] for p in got} & set(blocked)


def test_ranker_bad_requests(
    models: dict[str, Any], snapshot: tuple[np.ndarray, np.ndarray]
) -> None:
    name = "generative_ranker"
    ids, _ = snapshot
    rng = np.random.default_rng(2)
    good = make_request(name, **ranker_inputs(rng, ids, 10, 8))
    mismatched = ranker_inputs(rng, ids, 10, 8)
    mismatched["history_actions"] = mismatched["history_actions"][:-1]
    bad_action = ranker_inputs(rng, ids, 4, 3)
    bad_action["history_actions"] = [2, 3, 9, 2]
    missing = ranker_inputs(rng, ids, 4, 3)
    del missing["candidate_ids"]
    neighbour_still_succeeds(
        name,
        models,
        good,
        [
            (make_request(name, **mismatched), "differ in length"),
            (make_request(name, **bad_action), "action codes"),
            (make_request(name, **missing), "missing required input 'candidate_ids'"),
        ],
    )


# --- ragged dynamic batches ------------------------------------------------------------------


def solo_vs_batched(name: str, models: dict[str, Any], requests: list[FakeRequest]) -> None:
    """One execute call over requests of different lengths equals each request alone."""
    batched = [ok(r) for r in execute(models[name], requests)]
    for request, got in zip(requests, batched, strict=True):
        again = FakeRequest({n: t.as_numpy() for n, t in request.tensors.items()})
        want = ok(execute(models[name], [again])[0])
        for key in want:
            assert got[key].shape == want[key].shape, key
            assert_same(got[key], want[key], 1e-4, key)


def test_encoder_ragged_batch(models: dict[str, Any]) -> None:
    texts = ["ml", "data engineering at scale", "a much longer prompt " * 12, "sales leadership"]
    requests = [
        make_request("retrieval_encoder", input_ids=encoder_inputs(models, t)["input_ids"])
        for t in texts
    ]
    requests.insert(2, make_request("retrieval_encoder", text=b"text next to token ids"))
    solo_vs_batched("retrieval_encoder", models, requests)


def test_index_ragged_batch(
    models: dict[str, Any], snapshot: tuple[np.ndarray, np.ndarray]
) -> None:
    ids, emb = snapshot
    requests = [
        make_request("post_index", **index_inputs(emb[0], 3, [])),
        make_request("post_index", **index_inputs(emb[1], 40, ids[:30].tolist())),
        make_request("post_index", query=emb[2], k=[1]),
        make_request("post_index", **index_inputs(emb[3], 12, [int(ids[3])])),
    ]
    solo_vs_batched("post_index", models, requests)
    out = ok(execute(models["post_index"], requests)[1])
    assert out["post_ids"].shape == (1, 40)
    assert not set(out["post_ids"][0].tolist()) & set(ids[:30].tolist())


def test_ranker_ragged_batch(
    models: dict[str, Any], snapshot: tuple[np.ndarray, np.ndarray]
) -> None:
    ids, _ = snapshot
    rng = np.random.default_rng(3)
    requests = [
        make_request("generative_ranker", **ranker_inputs(rng, ids, length, k))
        for length, k in ((3, 5), (128, 40), (0, 2), (60, 1), (7, 17))
    ]
    solo_vs_batched("generative_ranker", models, requests)
    shapes = [ok(r)["scores"].shape for r in execute(models["generative_ranker"], requests)]
    assert shapes == [(1, 5), (1, 40), (1, 2), (1, 1), (1, 17)]


# --- nearline ----------------------------------------------------------------------------------


def test_index_serves_posts_from_the_nearline_log(
    built: Any, tmp_path: Path, snapshot: tuple[np.ndarray, np.ndarray]
) -> None:
    ids, emb = snapshot
    artifacts = private_artifacts(built, tmp_path / "artifacts")
    with pytest.MonkeyPatch.context() as mp:
        grad = torch.is_grad_enabled()
        try:
            model = initialize("post_index", artifacts, mp, poll_s=0.001)
        finally:
            torch.set_grad_enabled(grad)
    log = open_embedding_log(ModelSettings(artifacts_dir=artifacts, redis_url=""))
    new_post = int(ids.max()) + 1
    vec = -emb[0]
    log.append(
        [EmbeddingRecord("upsert", new_post, vec), EmbeddingRecord("delete", int(ids[1]), None)]
    )
    time.sleep(0.01)  # past the poll period
    first = ok(execute(model, [make_request("post_index", **index_inputs(vec, 3, []))])[0])
    assert first["post_ids"][0, 0] == new_post
    deleted = ok(execute(model, [make_request("post_index", **index_inputs(emb[1], 50, []))])[0])
    assert int(ids[1]) not in deleted["post_ids"][0].tolist()
    assert json.loads((artifacts / "index" / "index.json").read_text())["count"] == len(ids)
