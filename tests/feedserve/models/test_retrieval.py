"""Contrastive bi-encoder training on a toy problem, evaluation metrics, demo-data pairs.

The toy: 40 posts, each about one topic word; a member prompt names the topic only through an
*associated* word (a fixed random word pairing), so an untrained encoder ranks at chance and the
model has to learn the association. The encoder is a tiny random BERT (2 layers, 32 wide) with
MiniLM's tokenizer files: fast on CPU, nothing downloads.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from feedserve.contracts import Action
from feedserve.data.synthetic import DemoConfig, DemoDataset, generate
from feedserve.models.encoder import (
    ENCODER_CONFIG,
    TextEncoder,
    compute_fingerprint,
    default_base_model,
    export_encoder,
)
from feedserve.models.retrieval import (
    TRAIN_REPORT,
    RetrievalReport,
    RetrievalTrainConfig,
    demo_eval_queries,
    demo_training_pairs,
    evaluate_retrieval,
    ranking_metrics,
    train_retrieval,
)
from feedserve.prompts import BucketTable, approx_token_count

N_POSTS = 40
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)
BUCKETS = ("<views_p0>", "<views_p50>", "<views_p99>")
MEMBER_TEMPLATES = (
    "[member] activity: like ({w})",
    "[member] interested in {w}",
    "[member] skills: {w} | activity: click",
    "[member] headline: all about {w}",
)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from a second thread, and on a busy machine OpenMP threads
    waiting for each other make them an order of magnitude slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_bert(path: Path) -> Path:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    path.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        src = default_base_model() / name
        if src.is_file():
            shutil.copy(src, path / name)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(str(path))
    return path


def toy_words() -> tuple[list[str], list[str]]:
    """40 post topic words and 40 associated member words: distinct single word pieces."""
    vocab = json.loads((default_base_model() / "tokenizer.json").read_text())["model"]["vocab"]
    words = sorted(w for w, i in vocab.items() if w.isalpha() and len(w) >= 5 and 3000 < i < 9000)
    rng = np.random.default_rng(0)
    picked = [str(w) for w in rng.choice(words, 2 * N_POSTS, replace=False)]
    return picked[:N_POSTS], picked[N_POSTS:]


@pytest.fixture(scope="module")
def toy() -> dict[str, object]:
    topics, assoc = toy_words()
    post_texts = {
        i + 1: f"[post] engagement: {BUCKETS[i % 3]} | topic: {topics[i]}" for i in range(N_POSTS)
    }
    pairs = [
        (template.format(w=assoc[i]), i + 1)
        for template in MEMBER_TEMPLATES
        for i in range(N_POSTS)
    ]
    queries = [MEMBER_TEMPLATES[1].format(w=assoc[i]) for i in range(N_POSTS)]
    return {
        "post_texts": post_texts,
        "pairs": pairs,
        "queries": queries,
        "targets": list(range(1, N_POSTS + 1)),
    }


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tiny_bert(tmp_path_factory.mktemp("tiny-bert"))
    out = tmp_path_factory.mktemp("encoder")
    export_encoder(out, list(BUCKETS), base=base, max_length=64)
    return out


def toy_recall(encoder_dir: Path, toy: dict[str, object]) -> dict[str, float]:
    return evaluate_retrieval(
        TextEncoder(encoder_dir),
        toy["queries"],  # type: ignore[arg-type]
        toy["targets"],  # type: ignore[arg-type]
        toy["post_texts"],  # type: ignore[arg-type]
        [set() for _ in range(N_POSTS)],
        ks=(1, 10),
    )


TRAIN_CFG = RetrievalTrainConfig(
    steps=40,
    batch_size=16,
    lr=3e-3,
    weight_decay=0.0,
    warmup=0.05,
    temperature=None,
    hard_negatives=2,
    mine_every=10,
    member_tokens=32,
    post_tokens=32,
    checkpoint_every=10,
    keep_checkpoints=2,
    seed=3,
)


@pytest.fixture(scope="module")
def trained(
    encoder_dir: Path, toy: dict[str, object], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, RetrievalReport]:
    out = tmp_path_factory.mktemp("trained")
    report = train_retrieval(
        encoder_dir,
        toy["pairs"],  # type: ignore[arg-type]
        toy["post_texts"],  # type: ignore[arg-type]
        TRAIN_CFG,
        out,
        progress=False,
    )
    return out, report


def test_training_improves_recall_over_the_untrained_encoder(
    encoder_dir: Path, trained: tuple[Path, RetrievalReport], toy: dict[str, object]
) -> None:
    out, report = trained
    before = toy_recall(encoder_dir, toy)
    after = toy_recall(out, toy)
    assert before["recall@10"] <= 0.5  # chance is 10/40
    assert after["recall@10"] >= before["recall@10"] + 0.3, (before, after)
    assert after["mrr"] > before["mrr"]
    assert report.steps == TRAIN_CFG.steps and len(report.losses) == report.steps
    assert np.mean(report.losses[-10:]) < np.mean(report.losses[:10])
    assert report.mined_refreshes == TRAIN_CFG.steps // TRAIN_CFG.mine_every


def test_output_loads_with_a_new_fingerprint(
    encoder_dir: Path, trained: tuple[Path, RetrievalReport]
) -> None:
    out, report = trained
    enc = TextEncoder(out)
    base = TextEncoder(encoder_dir)
    assert enc.fingerprint == report.fingerprint != base.fingerprint == report.base_fingerprint
    assert enc.fingerprint == compute_fingerprint(out, enc.config.special_tokens, "mean")
    assert enc.config.special_tokens == list(BUCKETS)
    assert enc.tokenizer.vocab_size == base.tokenizer.vocab_size
    assert enc.tokenizer.token_id("<views_p99>") == base.tokenizer.token_id("<views_p99>")
    saved = json.loads((out / TRAIN_REPORT).read_text())
    assert saved["fingerprint"] == report.fingerprint and saved["config"]["steps"] == 40
    assert (out / ENCODER_CONFIG).is_file()


def test_checkpoints_are_written_and_pruned(trained: tuple[Path, RetrievalReport]) -> None:
    out, report = trained
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["step-20", "step-30"]  # 10 was pruned, 40 is the final model
    assert [Path(c).name for c in report.checkpoints] == names
    ckpt = TextEncoder(out / "checkpoints" / "step-30")
    assert ckpt.fingerprint not in (report.fingerprint, report.base_fingerprint)


def test_learnable_temperature_moves(trained: tuple[Path, RetrievalReport]) -> None:
    _, report = trained
    assert report.learnable_temperature
    assert report.temperature != pytest.approx(TRAIN_CFG.temperature_init, abs=1e-4)
    assert TRAIN_CFG.temperature_min <= report.temperature <= TRAIN_CFG.temperature_max


def test_same_seed_same_loss(encoder_dir: Path, toy: dict[str, object], tmp_path: Path) -> None:
    cfg = RetrievalTrainConfig(
        steps=4, batch_size=8, lr=1e-3, hard_negatives=1, mine_every=2, seed=5
    )
    pairs, posts = toy["pairs"], toy["post_texts"]
    a = train_retrieval(encoder_dir, pairs, posts, cfg, tmp_path / "a", progress=False)  # type: ignore[arg-type]
    b = train_retrieval(encoder_dir, pairs, posts, cfg, tmp_path / "b", progress=False)  # type: ignore[arg-type]
    assert a.losses == b.losses and a.final_loss == b.final_loss
    assert a.fingerprint == b.fingerprint
    cfg.seed = 6
    c = train_retrieval(encoder_dir, pairs, posts, cfg, tmp_path / "c", progress=False)  # type: ignore[arg-type]
    assert c.losses != a.losses


def test_frozen_layers_stay_put_and_bucket_rows_learn(
    encoder_dir: Path, toy: dict[str, object], tmp_path: Path
) -> None:
    from transformers import AutoModel

    cfg = RetrievalTrainConfig(
        steps=6, batch_size=16, lr=1e-2, weight_decay=0.1, freeze_layers=1, hard_negatives=0
    )
    report = train_retrieval(
        encoder_dir,
        toy["pairs"],  # type: ignore[arg-type]
        toy["post_texts"],  # type: ignore[arg-type]
        cfg,
        tmp_path,
        progress=False,
    )
    before = dict(AutoModel.from_pretrained(str(encoder_dir)).named_parameters())
    after = dict(AutoModel.from_pretrained(str(tmp_path)).named_parameters())
    enc = TextEncoder(encoder_dir)
    special = [enc.tokenizer.token_id(t) for t in BUCKETS]
    assert all(s is not None for s in special)
    rows = torch.tensor([int(s) for s in special if s is not None])
    others = torch.ones(before["embeddings.word_embeddings.weight"].shape[0], dtype=torch.bool)
    others[rows] = False
    for name, value in before.items():
        new = after[name]
        if name == "embeddings.word_embeddings.weight":
            assert torch.equal(new[others], value[others]), "non-special rows moved"
            assert not torch.allclose(new[rows], value[rows]), "bucket rows did not learn"
        elif name.startswith(("embeddings.", "encoder.layer.0.")):
            assert torch.equal(new, value), f"frozen {name} moved"
        elif name.startswith("encoder.layer.1.") and name.endswith(".weight"):
            assert not torch.equal(new, value), f"trainable {name} did not move"
    assert 0 < report.trainable_parameters < report.frozen_parameters
    assert not report.learnable_temperature and report.temperature == pytest.approx(0.05)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        RetrievalTrainConfig(batch_size=1)
    with pytest.raises(ValueError, match="temperature"):
        RetrievalTrainConfig(temperature=0.0)
    with pytest.raises(ValueError, match="freeze_layers"):
        RetrievalTrainConfig(freeze_layers=-1)
    with pytest.raises(ValueError, match="cold_text_rate"):
        RetrievalTrainConfig(cold_text_rate=1.5)


def test_logq_correction_and_new_post_texts(
    encoder_dir: Path, toy: dict[str, object], tmp_path: Path
) -> None:
    """Both options run; cold texts are required when the rate is set."""
    posts: dict[int, str] = toy["post_texts"]  # type: ignore[assignment]
    pairs: list[tuple[str, int]] = toy["pairs"]  # type: ignore[assignment]
    new = {pid: text.replace("p99", "p0").replace("p50", "p0") for pid, text in posts.items()}
    cfg = RetrievalTrainConfig(
        steps=3, batch_size=16, logq_correction=True, cold_text_rate=0.5, hard_negatives=1
    )
    with pytest.raises(ValueError, match="cold_post_texts"):
        train_retrieval(encoder_dir, pairs, posts, cfg, tmp_path / "a", progress=False)
    report = train_retrieval(
        encoder_dir, pairs, posts, cfg, tmp_path / "b", progress=False, cold_post_texts=new
    )
    assert report.steps == 3 and all(np.isfinite(report.losses))


def test_unknown_positive_is_an_error(encoder_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="no post text"):
        train_retrieval(
            encoder_dir, [("a", 1), ("b", 2)], {1: "x"}, RetrievalTrainConfig(), tmp_path
        )


# --------------------------------------------------------------------------- metrics


def test_ranking_metrics() -> None:
    ranks = np.array([1, 5, 0, 50])
    m = ranking_metrics(ranks, ks=(10, 100))
    assert m["recall@10"] == 0.5
    assert m["recall@100"] == 0.75
    assert m["ndcg@10"] == pytest.approx((1 + 1 / np.log2(6)) / 4)
    assert m["mrr"] == pytest.approx((1 + 1 / 5 + 1 / 50) / 4)
    assert ranking_metrics(np.zeros(0, dtype=np.int64))["recall@10"] == 0.0


def test_evaluate_retrieval_excludes_history(encoder_dir: Path) -> None:
    enc = TextEncoder(encoder_dir)
    posts = {1: "alpha", 2: "alpha", 3: "gamma delta"}
    q = ["alpha"]
    first = evaluate_retrieval(enc, q, [2], posts, [set()], ks=(1, 2))
    excluded = evaluate_retrieval(enc, q, [2], posts, [{1}], ks=(1,))
    assert first["recall@2"] == 1.0
    assert excluded["recall@1"] == 1.0 and excluded["mrr"] == 1.0


# --------------------------------------------------------------------------- demo data pairs


@pytest.fixture(scope="module")
def demo() -> DemoDataset:
    return generate(DemoConfig(members=40, posts=120, seed=3))


def engaged_rows(ds: DemoDataset, member_id: int) -> np.ndarray:
    hist = ds.histories()[member_id]
    return hist[hist["action"] != int(Action.impression)]


def test_demo_training_pairs_and_eval_queries(demo: DemoDataset) -> None:
    buckets = BucketTable.fit(demo.engagement_counts())
    pairs, post_texts = demo_training_pairs(
        demo, buckets, approx_token_count, 96, 64, max_pairs_per_member=5, seed=0
    )
    assert set(post_texts) == {p.post_id for p in demo.posts}
    assert all("<views_p" in text for text in post_texts.values())
    assert pairs and all(pid in post_texts for _, pid in pairs)
    with_history = [m.member_id for m in demo.members if len(engaged_rows(demo, m.member_id)) >= 2]
    assert len(pairs) <= 5 * len(with_history)
    again, _ = demo_training_pairs(
        demo, buckets, approx_token_count, 96, 64, max_pairs_per_member=5, seed=0
    )
    assert again == pairs  # deterministic by seed

    queries, targets, exclude = demo_eval_queries(demo, approx_token_count, 96)
    assert queries and len(queries) == len(targets) == len(exclude)
    last_engaged = {int(engaged_rows(demo, m)["post_id"][-1]) for m in with_history}
    assert set(targets) <= last_engaged
    for target, seen in zip(targets, exclude, strict=True):
        assert seen and target not in seen  # history strictly before the held-out post


def test_demo_pair_prompts_use_only_the_past(demo: DemoDataset) -> None:
    """A member with engagements: the pair for their first engaged post has no activity, and
    every pair's prompt is the prompt of the engagements strictly before that post."""
    from feedserve.models.retrieval import _activity, _demo_engagements, _split_last
    from feedserve.prompts import render_member_prompt

    buckets = BucketTable.fit(demo.engagement_counts())
    pairs, _ = demo_training_pairs(
        demo, buckets, approx_token_count, 96, 64, max_pairs_per_member=None, seed=0
    )
    made = set(pairs)
    posts = {p.post_id: p for p in demo.posts}
    members = {m.member_id: m for m in demo.members}
    checked = 0
    for member_id, rows in _demo_engagements(demo).items():
        if len(rows) < 3:
            continue
        last, rest, _ = _split_last(rows)
        for j in range(len(rest)):
            pid = int(rest["post_id"][j])
            if pid in rest["post_id"][:j]:
                continue  # only a post's first engagement makes a pair
            history = rest[rest["ts"] < rest["ts"][j]]
            assert last not in history["post_id"]
            want = render_member_prompt(
                members[member_id],
                _activity(history, posts),
                budget=96,
                count_tokens=approx_token_count,
            )
            assert (want, pid) in made
            checked += 1
    assert checked > 20


def test_infonce_masks_duplicate_positives_and_excluded_posts() -> None:
    from feedserve.models.retrieval import _symmetric_infonce

    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    p = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)  # columns: posts 10, 20, 30
    cols = np.array([10, 20, 30])
    col_of = {10: 0, 20: 1, 30: 2}
    positives = np.array([10, 10, 20])  # members 0 and 1 share a positive
    excludes = [frozenset({30}), frozenset(), frozenset({10})]
    scale = torch.tensor(10.0)
    got = _symmetric_infonce(q, p, positives, cols, col_of, excludes, scale)

    logits = scale * q @ p.T
    ce = torch.nn.functional.cross_entropy
    row0 = ce(logits[0, [0, 1]][None], torch.tensor([0]))  # post 30 excluded for member 0
    row1 = ce(logits[1][None], torch.tensor([0]))
    row2 = ce(logits[2, [1, 2]][None], torch.tensor([0]))  # post 10 excluded for member 2
    loss_q = (row0 + row1 + row2) / 3
    back = scale * p[[0, 0, 1]] @ q.T  # positive post of each pair against the members
    # pair 0 (post 10): member 1 shares it, member 2 excludes it -> only member 0 competes
    # pair 1 (post 10): likewise only member 1; pair 2 (post 20): all three members
    r0 = ce(back[0, [0]][None], torch.tensor([0]))
    r1 = ce(back[1, [1]][None], torch.tensor([0]))
    r2 = ce(back[2][None], torch.tensor([2]))
    loss_p = (r0 + r1 + r2) / 3
    torch.testing.assert_close(got, (loss_q + loss_p) / 2)
    # log q correction shifts the member -> post logits per column
    log_q = torch.tensor([0.0, -1.0, -2.0])
    shifted = _symmetric_infonce(q, p, positives, cols, col_of, excludes, scale, log_q)
    assert not torch.allclose(shifted, got)
