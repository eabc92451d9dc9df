"""Member and candidate hydration on an in-memory store loaded with the built demo data."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from tokenizers import Tokenizer

from feedserve.contracts import (
    COUNT_KINDS,
    Action,
    Demographics,
    Education,
    Member,
    Position,
    Post,
    PostFormat,
    Seniority,
)
from feedserve.data.io import read_dataset
from feedserve.data.synthetic import DemoDataset
from feedserve.prompts import special_tokens
from feedserve.settings import FeaturizerSettings
from feedserve.store import EngagementEvent, MemoryFeatureStore
from feedserve.triton_client import InferenceClient
from feedserve_featurizers.client import InProcessFeaturizer
from feedserve_featurizers.hydrate import (
    WIRE_DTYPES,
    FeaturizerContext,
    SessionContext,
    hydrate_candidates,
    hydrate_member,
    member_prompt,
    post_prompt_ids,
)
from feedserve_featurizers.tensors import history_tensors

UNKNOWN_MEMBER = 10**9
UNKNOWN_POST = 10**12
TENSOR_KEYS = ("history_post_ids", "history_actions", "history_timestamps")


@dataclass
class World:
    ds: DemoDataset
    ctx: FeaturizerContext
    store: MemoryFeatureStore
    decoder: Tokenizer
    now: int


@pytest.fixture(scope="module")
def dataset(built: Any) -> DemoDataset:
    return read_dataset(Path(built.data_dir))


@pytest.fixture
def world(built: Any, dataset: DemoDataset) -> Iterator[World]:
    """A fresh store per test (loading the demo data takes milliseconds)."""
    store = MemoryFeatureStore()
    store.bulk_load(dataset.members, dataset.posts, dataset.interactions)
    settings = FeaturizerSettings(artifacts_dir=Path(built.artifacts_dir))
    ctx = FeaturizerContext.load(settings, store=store)
    decoder = Tokenizer.from_file(str(Path(built.artifacts_dir) / "encoder" / "tokenizer.json"))
    yield World(dataset, ctx, store, decoder, int(dataset.interactions["ts"].max()) + 60)


def decode(world: World, ids: np.ndarray) -> str:
    return str(world.decoder.decode(ids.tolist(), skip_special_tokens=False))


def starts_with(world: World, ids: np.ndarray, text: str) -> bool:
    """``ids`` begin with [CLS] and the tokens of ``text``."""
    head = world.ctx.tokenizer.encode(text)[:-1]  # drop [SEP]
    return ids[: len(head)].tolist() == head.tolist()


def bucket_ids(world: World) -> dict[int, str]:
    out = {}
    for token in special_tokens():
        token_id = world.ctx.tokenizer.token_id(token)
        assert token_id is not None, token
        out[token_id] = token
    return out


def engaged_member(world: World) -> Member:
    """A member with a profile and several engagements."""
    for m in world.ds.members:
        h = world.store.get_history(m.member_id)
        if (h["action"] != int(Action.impression)).sum() >= 5:
            return m
    raise AssertionError("the demo data has no engaged member")


def test_bucket_tokens_are_single_added_tokens(world: World) -> None:
    tok = world.ctx.tokenizer
    cls_sep = tok.encode("")
    assert len(cls_sep) == 2
    ids = bucket_ids(world)
    assert len(ids) == len(special_tokens())  # distinct ids
    assert min(ids) >= tok.vocab_size - len(ids)  # added after the base vocabulary
    for token_id, token in ids.items():
        assert tok.encode(token).tolist() == [cls_sep[0], token_id, cls_sep[1]]
        # a token embedded in text stays one token
        assert token_id in tok.encode(f"views{token}likes").tolist()


def test_known_member(world: World) -> None:
    member = engaged_member(world)
    out = hydrate_member(world.ctx, member.member_id, None, world.now)
    settings = world.ctx.settings
    assert out["member_id"] == member.member_id
    assert out["known"] is True
    ids = out["input_ids"]
    assert isinstance(ids, np.ndarray) and ids.dtype == WIRE_DTYPES["input_ids"]
    assert 2 < len(ids) <= settings.member_prompt_tokens
    # the prompt fit its budget: these are all its tokens, nothing was cut
    history = world.store.get_history(member.member_id)
    prompt = member_prompt(world.ctx, member, history)
    assert world.ctx.tokenizer.count_tokens(prompt) <= settings.member_prompt_tokens
    np.testing.assert_array_equal(ids, world.ctx.tokenizer.encode(prompt))
    assert starts_with(world, ids, "[member] title:")
    assert ids[-1] == world.ctx.tokenizer.encode("")[-1]  # [SEP]: nothing was cut off
    assert member.title.lower().split()[0] in decode(world, ids)
    assert not set(ids.tolist()) & set(bucket_ids(world))  # member prompts carry no counts
    # ranker tensors: the same function as training, on the stored history
    want = history_tensors(history, settings.ranker_history_len)
    for key in TENSOR_KEYS:
        arr = out[key]
        assert isinstance(arr, np.ndarray)
        assert arr.dtype == WIRE_DTYPES.get(key, np.int64), key
        np.testing.assert_array_equal(arr, want[key])
    hp = out["history_post_ids"]
    assert isinstance(hp, np.ndarray) and hp.shape == (settings.ranker_history_len,)
    assert hp[-1] != 0
    seen = out["seen_ids"]
    assert isinstance(seen, np.ndarray) and seen.dtype == np.int64
    assert seen.tolist() == sorted(set(seen.tolist()))
    assert set(history["post_id"][-10:].tolist()) <= set(seen.tolist())
    popular = out["popular_ids"]
    assert isinstance(popular, np.ndarray)
    assert popular.tolist() == world.store.popular_posts(settings.popular_candidates)
    fresh = out["fresh_ids"]
    assert isinstance(fresh, np.ndarray)
    assert fresh.tolist() == world.store.recent_posts(settings.fresh_candidates)


def test_without_the_prompt_everything_else_is_the_same(world: World) -> None:
    """The member embedding read from the store: the request does not render the prompt."""
    member = engaged_member(world)
    full = hydrate_member(world.ctx, member.member_id, None, world.now)
    lean = hydrate_member(world.ctx, member.member_id, None, world.now, with_prompt=False)
    lean_ids = lean.pop("input_ids")
    assert isinstance(lean_ids, np.ndarray) and lean_ids.size == 0
    assert lean_ids.dtype == WIRE_DTYPES["input_ids"]
    full.pop("input_ids")
    assert full.keys() == lean.keys()
    for key, value in full.items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(lean[key]), err_msg=key)


def test_the_prompt_is_handed_over_before_the_rest(world: World) -> None:
    """``on_prompt`` gets the final prompt tokens (wire dtype) once, before the network
    candidates are read. The in-process featurizer (one process with the models) does not
    hand it over."""
    member = engaged_member(world)
    order: list[str] = []
    got: list[np.ndarray] = []
    reads = world.store.posts_by_authors

    def spy(author_ids: Any, limit: int) -> list[int]:
        order.append("network read")
        return reads(author_ids, limit)

    world.store.posts_by_authors = spy  # type: ignore[method-assign]

    def on_prompt(ids: np.ndarray) -> None:
        order.append("prompt")
        got.append(ids)

    out = hydrate_member(world.ctx, member.member_id, None, world.now, on_prompt=on_prompt)
    assert order == ["prompt", "network read"]
    assert got[0].dtype == WIRE_DTYPES["input_ids"]
    np.testing.assert_array_equal(got[0], np.asarray(out["input_ids"]))
    none: list[np.ndarray] = []
    hydrate_member(world.ctx, member.member_id, None, world.now, False, none.append)
    assert none == []  # no prompt made, none handed over

    async def in_process() -> tuple[dict[str, Any], list[np.ndarray]]:
        calls: list[np.ndarray] = []
        featurizer = InProcessFeaturizer(world.ctx, cast(InferenceClient, None), None)
        result = await featurizer.hydrate_member(
            member.member_id, None, world.now, True, calls.append
        )
        return result, calls

    result, calls = asyncio.run(in_process())
    assert calls == [] and np.asarray(result["input_ids"]).size  # in one process: not early


def test_network_candidates_come_from_connections_and_follows(world: World) -> None:
    member = next(m for m in world.ds.members if m.connections and m.follows)
    out = hydrate_member(world.ctx, member.member_id, None, world.now)
    network = out["network_ids"]
    assert isinstance(network, np.ndarray) and network.dtype == np.int64
    authors = {p.post_id: p.author_id for p in world.ds.posts}
    assert len(network) > 0
    assert all(authors[int(p)] in {*member.connections, *member.follows} for p in network)
    # a member who only follows: the network source is exactly the followed authors' posts
    follower = member.model_copy(update={"connections": [], "follows": member.follows[:1]})
    world.store.put_members([follower])
    out = hydrate_member(world.ctx, member.member_id, None, world.now)
    expected = world.store.posts_by_authors(
        member.follows[:1], world.ctx.settings.network_candidates
    )
    assert np.asarray(out["network_ids"]).tolist() == expected and expected


def test_blocked_authors_are_passed_on(world: World) -> None:
    member = world.ds.members[0].model_copy(update={"blocked_authors": [9, 3, 9]})
    world.store.put_members([member])
    out = hydrate_member(world.ctx, member.member_id, None, world.now)
    assert np.asarray(out["blocked_author_ids"]).tolist() == [3, 9]


def test_unknown_member(world: World) -> None:
    out = hydrate_member(world.ctx, UNKNOWN_MEMBER, None, world.now)
    assert out["known"] is False
    ids = out["input_ids"]
    assert isinstance(ids, np.ndarray) and ids.shape == (0,)
    assert ids.dtype == WIRE_DTYPES["input_ids"]
    for key in TENSOR_KEYS:
        arr = out[key]
        assert isinstance(arr, np.ndarray)
        assert arr.shape == (world.ctx.settings.ranker_history_len,)
        assert not arr.any()
    seen = out["seen_ids"]
    assert isinstance(seen, np.ndarray) and seen.shape == (0,)
    assert len(out["popular_ids"]) > 0  # type: ignore[arg-type]  # cold start still gets candidates


def test_session_engagements_are_the_newest_history(world: World) -> None:
    member = engaged_member(world)
    stored = world.store.get_history(member.member_id)
    engaged = [p.post_id for p in world.ds.posts[-3:-1]]
    session = SessionContext(engaged_post_ids=engaged, seen_post_ids=[7, 8])
    out = hydrate_member(world.ctx, member.member_id, session, world.now)
    hp, ha, ht = (out[k] for k in TENSOR_KEYS)
    assert isinstance(hp, np.ndarray) and isinstance(ha, np.ndarray) and isinstance(ht, np.ndarray)
    assert hp[-2:].tolist() == engaged
    assert ha[-2:].tolist() == [int(Action.click)] * 2
    assert ht[-1] == ht[-2] == max(world.now, int(stored["ts"][-1]))  # both at "now"
    assert ht[-2] >= ht[-3]
    before = hydrate_member(world.ctx, member.member_id, None, world.now)
    last_stored = before["history_post_ids"][-1]  # type: ignore[index]
    assert hp[-3] == last_stored  # shifted left by the session events
    seen = set(out["seen_ids"].tolist())  # type: ignore[attr-defined]
    assert {*engaged, 7, 8} <= seen
    assert set(stored["post_id"][-5:].tolist()) <= seen
    assert len(world.store.get_history(member.member_id)) == len(stored)  # store untouched


def test_session_events_never_go_back_in_time(world: World) -> None:
    member = engaged_member(world)
    session = SessionContext(engaged_post_ids=[world.ds.posts[0].post_id])
    out = hydrate_member(world.ctx, member.member_id, session, now=0)  # a skewed clock
    ht = out["history_timestamps"]
    stored = world.store.get_history(member.member_id)
    assert isinstance(ht, np.ndarray) and ht[-1] == stored["ts"][-1]  # the last stored ts
    assert out["request_time"] == 0


def test_unknown_member_with_a_session(world: World) -> None:
    post_id = world.ds.posts[5].post_id
    session = SessionContext(engaged_post_ids=[post_id])
    out = hydrate_member(world.ctx, UNKNOWN_MEMBER, session, world.now)
    assert out["input_ids"].shape == (0,)  # type: ignore[attr-defined]  # no profile, no prompt
    hp = out["history_post_ids"]
    assert isinstance(hp, np.ndarray) and hp[-1] == post_id and hp[-2] == 0


def test_candidates_of_unknown_ids_are_dropped(world: World) -> None:
    posts = {p.post_id: p for p in world.ds.posts}
    asked = [world.ds.posts[3].post_id, UNKNOWN_POST, world.ds.posts[0].post_id, UNKNOWN_POST + 1]
    out = hydrate_candidates(world.ctx, asked)
    ids = out["post_ids"]
    assert isinstance(ids, np.ndarray) and ids.dtype == np.int64
    assert ids.tolist() == [asked[0], asked[2]]  # order kept
    assert out["author_ids"].tolist() == [posts[p].author_id for p in ids.tolist()]  # type: ignore[attr-defined]
    assert out["created_at"].tolist() == [posts[p].created_at for p in ids.tolist()]  # type: ignore[attr-defined]
    assert out["formats"] == [posts[p].format.value for p in ids.tolist()]
    assert out["topics"] == [posts[p].topic for p in ids.tolist()]
    empty = hydrate_candidates(world.ctx, [UNKNOWN_POST])
    assert empty["post_ids"].shape == (0,)  # type: ignore[attr-defined]
    assert empty["formats"] == []


def test_post_prompt_ids_carry_one_bucket_token_per_count(world: World) -> None:
    post = world.ds.posts[10]
    ids = post_prompt_ids(world.ctx, post.post_id)
    assert ids.dtype == np.int64
    assert len(ids) <= world.ctx.settings.post_prompt_tokens
    buckets = bucket_ids(world)
    found = [buckets[i] for i in ids.tolist() if i in buckets]
    counts = world.store.get_counts([post.post_id])[0]
    assert found == [world.ctx.buckets.token(kind, counts.get(kind)) for kind in COUNT_KINDS]
    assert starts_with(world, ids, "[post] format:")
    assert post.topic.lower().split()[0] in decode(world, ids)


def test_post_prompt_ids_of_unknown_post(world: World) -> None:
    with pytest.raises(KeyError):
        post_prompt_ids(world.ctx, UNKNOWN_POST)


# --- demographics never reach a prompt or a tensor --------------------------------------------

MARKERS = {
    "gender": "ZZGENDERZZ",
    "age_band": "ZZAGEBANDZZ",
    "ethnicity": "ZZETHNICITYZZ",
    "location": "ZZLOCATIONZZ",
}


def make_member(member_id: int, marker: str) -> Member:
    return Member(
        member_id=member_id,
        name="Zzname Zzauthor",
        headline="ZZHEADLINEZZ building data platforms",
        title="Staff Data Engineer",
        industry="Software",
        seniority=Seniority.senior,
        location=f"{MARKERS['location']}{marker}",
        skills=["Python", "Kafka"],
        positions=[Position(title="Data Engineer", company="Acme", start_year=2019)],
        education=[Education(school="Tech University", degree="MSc", field="Computing")],
        connections=[1, 2, 3],
        demographics=Demographics(
            age_band=f"{MARKERS['age_band']}{marker}",
            gender=f"{MARKERS['gender']}{marker}",
            ethnicity=f"{MARKERS['ethnicity']}{marker}",
        ),
    )


def strings_in(value: object) -> list[str]:
    """Every string (and decoded bytes) anywhere in a hydrated result."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, bytes):
        return [value.decode("utf-8", "replace")]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in strings_in(k) + strings_in(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in strings_in(v)]
    if isinstance(value, np.ndarray) and value.dtype.kind in "OUS":
        return [s for v in value.ravel().tolist() for s in strings_in(v)]
    return []


def test_no_demographic_value_reaches_prompts_or_tensors(world: World) -> None:
    ids = (900_001, 900_002)
    world.store.put_members([make_member(ids[0], "A"), make_member(ids[1], "B")])
    own_post = Post(
        post_id=UNKNOWN_POST + 7,
        author_id=ids[0],
        format=PostFormat.text,
        topic="data engineering",
        text="Notes on streaming joins.",
        created_at=world.now - 100,
    )
    world.store.put_posts([own_post])
    events = [
        EngagementEvent(
            event_id=f"demo-{member_id}-{i}",
            member_id=member_id,
            post_id=post.post_id,
            action=Action.like,
            ts=world.now - 1_000 + 10 * i,
        )
        for member_id in ids
        for i, post in enumerate(world.ds.posts[:6])
    ]
    world.store.apply_events(events)
    session = SessionContext(engaged_post_ids=[world.ds.posts[20].post_id])
    results = [hydrate_member(world.ctx, m, session, world.now) for m in ids]
    a, b = results

    text = decode(world, a["input_ids"]).lower()  # type: ignore[arg-type]
    assert "zzheadlinezz" in text  # control: an allowed field does show up, decoded
    assert "zzname" not in text  # the name is not on the member prompt allow-list
    for marker in MARKERS.values():
        assert marker.lower() not in text, marker
        for result in results:
            assert not any(marker in s for s in strings_in(result)), marker

    # twins that differ only in demographics (and location) get identical features
    assert set(a) == set(b)
    for key in a:
        if key == "member_id":
            continue
        if isinstance(a[key], np.ndarray):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)  # type: ignore[arg-type]
        else:
            assert a[key] == b[key], key

    # the author's demographics do not reach the post prompt either (their name may)
    post_text = decode(world, post_prompt_ids(world.ctx, own_post.post_id)).lower()
    assert "zzheadlinezz" in post_text and "zzname" in post_text
    for marker in MARKERS.values():
        assert marker.lower() not in post_text, marker
