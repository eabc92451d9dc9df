"""Workflow spec: the default feed workflow, the derived graph, and validation errors that each
name the step they are about."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from feedserve.workflow.ops import SIGNATURES
from feedserve.workflow.spec import (
    DEFAULT_WORKFLOW,
    Mode,
    OpSignature,
    Workflow,
    WorkflowError,
    check,
    load,
    load_default,
    parse,
)

ALL = frozenset({Mode.online, Mode.offline, Mode.nearline, Mode.offline_nearline})
ONLINE = frozenset({Mode.online})
MATERIALIZED = frozenset({Mode.offline, Mode.nearline, Mode.offline_nearline})


def sig(
    name: str,
    inputs: Mapping[str, str],
    outputs: Mapping[str, str],
    modes: frozenset[Mode] = ALL,
    remote: bool = False,
) -> OpSignature:
    return OpSignature(name, dict(inputs), dict(outputs), modes, remote=remote)


SIGS: dict[str, OpSignature] = {
    s.name: s
    for s in (
        sig("load", {"member_id": "MemberId"}, {"member": "MemberFeatures"}),
        sig("load_online", {"member_id": "MemberId"}, {"member": "MemberFeatures"}, ONLINE),
        sig("embed", {"member": "MemberFeatures"}, {"emb": "Embedding"}, remote=True),
        sig("embed_batch", {"member": "MemberFeatures"}, {"emb": "Embedding"}, MATERIALIZED),
        sig("embed_raw", {"raw": "MemberFeatures"}, {"emb": "Embedding"}),
        sig("sources", {"member": "MemberFeatures", "emb": "Embedding"}, {"cands": "Candidates"}),
        sig("pick", {"cands": "Candidates", "count": "Count"}, {"page": "Page"}, ONLINE),
        sig("fanout", {"cands": "Candidates"}, {"best": "Candidates", "rest": "Candidates"}),
        sig("ping", {"pong": "Candidates"}, {"ping": "Candidates"}),
        sig("pong", {"ping": "Candidates"}, {"pong": "Candidates"}),
        sig("from_emb", {"emb": "Embedding"}, {"cands": "Candidates"}, ONLINE),
    )
}


def base() -> dict[str, Any]:
    """A small valid workflow: load -> embed -> sources -> pick."""
    return {
        "name": "tiny",
        "inputs": {"member_id": "MemberId", "count": "Count"},
        "outputs": ["page"],
        "steps": [
            {
                "name": "load",
                "inputs": {"member_id": "MemberId"},
                "outputs": {"member": "MemberFeatures"},
            },
            {
                "name": "embed",
                "inputs": {"member": "MemberFeatures"},
                "outputs": {"emb": "Embedding"},
            },
            {
                "name": "sources",
                "inputs": {"member": "MemberFeatures", "emb": "Embedding"},
                "outputs": {"cands": "Candidates"},
            },
            {
                "name": "pick",
                "inputs": {"cands": "Candidates", "count": "Count"},
                "outputs": {"page": "Page"},
            },
        ],
    }


def step(data: dict[str, Any], name: str) -> dict[str, Any]:
    for s in data["steps"]:
        if s["name"] == name:
            assert isinstance(s, dict)
            return s
    raise KeyError(name)


def build(data: dict[str, Any], signatures: Mapping[str, OpSignature] = SIGS) -> Workflow:
    return check(parse(copy.deepcopy(data)), signatures)


def problems(data: dict[str, Any], signatures: Mapping[str, OpSignature] = SIGS) -> list[str]:
    with pytest.raises(WorkflowError) as info:
        build(data, signatures)
    assert info.value.problems
    return info.value.problems


def assert_names(found: list[str], name: str, fragment: str) -> None:
    """Some problem is about step ``name`` (it starts by naming it) and says ``fragment``."""
    prefix = f"step {name!r}"
    hits = [p for p in found if p.startswith(prefix) and fragment in p]
    assert hits, f"no problem naming {prefix} with {fragment!r} in {found}"


def offline_embed(data: dict[str, Any], **fields: Any) -> dict[str, Any]:
    s = step(data, "embed")
    s.update({"mode": "offline", "key": "member_id"})
    s.update(fields)
    return data


# --- the default workflow ----------------------------------------------------------------------


def test_default_workflow_validates() -> None:
    wf = load_default()
    assert wf.spec.name == "feed"
    assert set(wf.order) == {s.name for s in wf.spec.steps}
    position = {n: i for i, n in enumerate(wf.order)}
    for name in wf.order:
        for dep in wf.deps(name):
            assert position[dep] < position[name], f"{dep} must come before {name}"
    assert wf.producer["member_id"] == ""  # request input
    assert wf.producer["member_embedding"] == "embed_member"
    assert wf.deps("retrieve_ebr") == ["hydrate_member", "embed_member", "embed_posts"]
    assert wf.step("embed_member").mode is Mode.online
    assert wf.materialized_steps() == ["embed_posts"]


def test_default_workflow_validates_against_the_registered_signatures() -> None:
    wf = load(DEFAULT_WORKFLOW, SIGNATURES)
    assert wf.order == load_default().order


def test_default_online_steps_and_closures() -> None:
    wf = load_default()
    online = wf.online_steps()
    assert set(online) == {s.name for s in wf.spec.steps}
    assert online == [n for n in wf.order if n in online]  # in dependency order
    assert wf.closure("embed_member") == ["hydrate_member", "embed_member"]
    assert wf.closure("embed_posts") == ["embed_posts"]
    rank = wf.closure("rank")
    assert rank[-1] == "rank"
    assert "post_rank_rules" not in rank
    assert {"hydrate_member", "embed_member", "embed_posts", "merge"} <= set(rank)


def test_with_mode_makes_embed_member_a_materialized_read() -> None:
    wf = load_default()
    offline = wf.with_mode("embed_member", Mode.offline_nearline)
    step_ = offline.step("embed_member")
    assert step_.mode is Mode.offline_nearline
    assert step_.mode.materialized and not step_.mode.in_request
    assert step_.key == "member_id" and step_.trigger == "engagements"
    assert offline.materialized_steps() == ["embed_member", "embed_posts"]
    assert "embed_member" in offline.online_steps()  # read by the request path
    assert wf.step("embed_member").mode is Mode.online  # the original is unchanged


def test_online_steps_do_not_follow_a_materialized_step_upstream() -> None:
    data = base()
    offline_embed(data)
    s = step(data, "sources")
    s.update({"op": "from_emb", "inputs": {"emb": "Embedding"}})
    wf = build(data)
    assert wf.online_steps() == ["embed", "sources", "pick"]  # load only feeds the batch job
    assert wf.closure("embed") == ["load", "embed"]
    assert wf.materialized_steps() == ["embed"]


def test_with_mode_revalidates() -> None:
    wf = load_default()
    with pytest.raises(WorkflowError) as info:
        wf.with_mode("embed_member", Mode.remote)  # no 'remote' block in feed.yaml
    assert_names(info.value.problems, "embed_member", "needs a 'remote' block")
    with pytest.raises(WorkflowError) as info:
        wf.with_mode("rank", Mode.offline)
    assert_names(info.value.problems, "rank", "cannot run offline")


def test_base_fixture_is_valid() -> None:
    wf = build(base())
    assert wf.order == ("load", "embed", "sources", "pick")
    assert wf.online_steps() == ["load", "embed", "sources", "pick"]


def test_valid_offline_and_nearline_variants() -> None:
    data = offline_embed(base(), schedule="*/15 0-6 * * 1,3")
    assert build(data).step("embed").schedule == "*/15 0-6 * * 1,3"
    data = offline_embed(base(), mode="nearline", trigger="engagements")
    assert build(data).step("embed").mode is Mode.nearline


# --- validation errors ---------------------------------------------------------------------------


def test_unknown_op() -> None:
    data = base()
    step(data, "embed")["op"] = "nope"
    found = problems(data)
    assert_names(found, "embed", "unknown op 'nope'")


def test_step_name_is_the_default_op() -> None:
    data = base()
    step(data, "embed")["name"] = "embedding"  # no op 'embedding'
    assert_names(problems(data), "embedding", "unknown op 'embedding'")


def test_unknown_output_type() -> None:
    data = base()
    step(data, "embed")["outputs"] = {"emb": "Blob"}
    assert_names(problems(data), "embed", "output 'emb' has unknown type 'Blob'")


def test_unknown_workflow_input_type() -> None:
    data = base()
    data["inputs"]["count"] = "Number"
    step(data, "pick")["inputs"]["count"] = "Number"
    found = problems(data)
    assert any(p.startswith("workflow input 'count': unknown type 'Number'") for p in found)


def test_input_produced_by_no_step() -> None:
    data = base()
    step(data, "embed")["op"] = "embed_raw"
    step(data, "embed")["inputs"] = {"raw": "MemberFeatures"}
    assert_names(problems(data), "embed", "input 'raw' is produced by no step")


def test_type_mismatch_between_producer_and_consumer() -> None:
    data = base()
    step(data, "sources")["inputs"]["emb"] = "Candidates"
    found = problems(data)
    assert_names(found, "sources", "input 'emb' is declared Candidates but 'embed' produces")
    assert_names(found, "sources", "takes 'emb' as Embedding")


def test_output_produced_twice() -> None:
    data = base()
    data["steps"].append(
        {
            "name": "load_again",
            "op": "load",
            "inputs": {"member_id": "MemberId"},
            "outputs": {"member": "MemberFeatures"},
        }
    )
    assert_names(problems(data), "load_again", "output 'member' is already produced by 'load'")


def test_output_shadowing_a_workflow_input() -> None:
    data = base()
    data["inputs"]["emb"] = "Embedding"
    assert_names(problems(data), "embed", "already produced by the workflow inputs")


def test_dependency_cycle_lists_the_cycle() -> None:
    data = base()
    data["steps"] += [
        {"name": "ping", "inputs": {"pong": "Candidates"}, "outputs": {"ping": "Candidates"}},
        {"name": "pong", "inputs": {"ping": "Candidates"}, "outputs": {"pong": "Candidates"}},
    ]
    found = problems(data)
    cycles = [p for p in found if p.startswith("dependency cycle: ")]
    assert len(cycles) == 1, found
    names = cycles[0].removeprefix("dependency cycle: ").split(" -> ")
    assert names[0] == names[-1]
    assert sorted(names[:-1]) == ["ping", "pong"]


def test_dependency_cycle_through_after() -> None:
    data = base()
    step(data, "load")["after"] = ["pick"]
    found = problems(data)
    cycles = [p for p in found if p.startswith("dependency cycle: ")]
    assert len(cycles) == 1, found
    names = cycles[0].removeprefix("dependency cycle: ").split(" -> ")
    assert names[0] == names[-1]
    assert {"load", "pick"} <= set(names) <= {"embed", "load", "pick", "sources"}
    depends_on = {
        ("load", "pick"),
        ("pick", "sources"),
        ("sources", "load"),
        ("sources", "embed"),
        ("embed", "load"),
    }
    for a, b in itertools.pairwise(names):
        assert (a, b) in depends_on, f"{a} does not depend on {b}"


def test_after_naming_an_unknown_step() -> None:
    data = base()
    step(data, "pick")["after"] = ["ghost"]
    assert_names(problems(data), "pick", "'after' names unknown step 'ghost'")


def test_after_on_a_known_step_is_a_dependency() -> None:
    data = base()
    step(data, "embed")["after"] = ["load"]
    wf = build(data)
    assert wf.deps("embed") == ["load"]
    data = base()
    data["steps"].append(  # listed last: only 'after' puts it before load
        {"name": "pong", "inputs": {"ping": "Candidates"}, "outputs": {"pong": "Candidates"}}
    )
    data["inputs"]["ping"] = "Candidates"
    step(data, "load")["after"] = ["pong"]
    wf = build(data)
    assert wf.deps("load") == ["pong"]
    assert wf.order.index("pong") < wf.order.index("load")


def test_online_step_never_waits_on_an_offline_step() -> None:
    data = offline_embed(base())
    step(data, "pick")["after"] = ["embed"]
    assert_names(problems(data), "pick", "online steps never wait on offline step 'embed'")


def test_offline_step_needing_a_request_only_op() -> None:
    data = offline_embed(base())
    step(data, "load")["op"] = "load_online"
    assert_names(
        problems(data), "embed", "needs step 'load', whose op 'load_online' runs only in a request"
    )


def test_offline_step_needing_a_request_only_value() -> None:
    data = offline_embed(base())
    data["inputs"]["raw"] = "MemberFeatures"
    s = step(data, "embed")
    s.update({"op": "embed_raw", "inputs": {"raw": "MemberFeatures"}})
    step(data, "sources")["inputs"] = {"member": "MemberFeatures", "emb": "Embedding"}
    assert_names(problems(data), "embed", "needs 'raw', which exists only in a request")


def test_nearline_step_needs_a_trigger() -> None:
    data = offline_embed(base(), mode="nearline")
    assert_names(problems(data), "embed", "mode nearline needs a 'trigger'")
    data = offline_embed(base(), mode="offline+nearline")
    assert_names(problems(data), "embed", "mode offline+nearline needs a 'trigger'")


def test_engagement_trigger_needs_a_member_key() -> None:
    data = offline_embed(base(), mode="nearline", trigger="engagements", key="count")
    assert_names(problems(data), "embed", "key must be a MemberId")


def test_materialized_embedding_needs_a_key() -> None:
    data = offline_embed(base(), key="")
    assert_names(problems(data), "embed", "mode offline stores Embedding: it needs a 'key'")


def test_materialized_key_must_be_a_workflow_input() -> None:
    data = offline_embed(base(), key="member")
    assert_names(problems(data), "embed", "key 'member' is not a workflow input")


def test_materialized_output_that_cannot_be_stored() -> None:
    data = base()
    step(data, "sources").update({"mode": "offline", "key": "member_id"})
    assert_names(problems(data), "sources", "offline output 'cands' (Candidates) cannot be stored")


def test_op_that_cannot_run_in_the_mode() -> None:
    data = base()
    step(data, "pick").update({"mode": "offline", "key": "member_id"})
    assert_names(problems(data), "pick", "op 'pick' cannot run offline (it runs: online)")


def test_on_miss_compute_needs_an_op_that_runs_online() -> None:
    data = offline_embed(base(), op="embed_batch")
    assert_names(problems(data), "embed", "cannot compute a miss online; set on_miss: fallback")
    data = offline_embed(base(), op="embed_batch", on_miss="fallback", fallback={"emb": "empty"})
    assert build(data).step("embed").on_miss == "fallback"


def test_on_miss_fallback_needs_a_fallback() -> None:
    data = offline_embed(base(), on_miss="fallback")
    assert_names(problems(data), "embed", "on_miss: fallback needs a 'fallback'")


def test_fallback_naming_a_non_output() -> None:
    data = base()
    step(data, "embed")["fallback"] = {"emb": "empty", "other": "empty"}
    assert_names(problems(data), "embed", "fallback names 'other', which is not an output")


def test_fallback_naming_a_non_input() -> None:
    data = base()
    step(data, "sources")["fallback"] = {"cands": "nowhere"}
    assert_names(
        problems(data), "sources", "must be 'empty' or one of the step's inputs, not 'nowhere'"
    )


def test_fallback_mixing_types() -> None:
    data = base()
    step(data, "sources")["fallback"] = {"cands": "emb"}
    assert_names(problems(data), "sources", "mixes types Candidates and Embedding")


def test_fallback_missing_an_output() -> None:
    data = base()
    data["steps"].append(
        {
            "name": "fanout",
            "inputs": {"cands": "Candidates"},
            "outputs": {"best": "Candidates", "rest": "Candidates"},
            "fallback": {"best": "cands"},
        }
    )
    assert_names(problems(data), "fanout", "fallback gives no value for rest")
    step(data, "fanout")["fallback"] = {"best": "cands", "rest": "empty"}
    assert build(data).step("fanout").fallback == {"best": "cands", "rest": "empty"}


def test_remote_step_needs_a_remote_block() -> None:
    data = base()
    step(data, "embed")["mode"] = "remote"
    assert_names(problems(data), "embed", "a remote step needs a 'remote' block")
    step(data, "embed")["remote"] = {"url": "http://kserve"}
    assert build(data).step("embed").mode is Mode.remote


def test_remote_step_with_an_op_without_a_remote_form() -> None:
    data = base()
    step(data, "pick").update({"mode": "remote", "remote": {"url": "http://kserve"}})
    assert_names(problems(data), "pick", "op 'pick' has no remote (v2 tensor) form")


@pytest.mark.parametrize("schedule", ["0 3 * *", "0 3 * * * *", "0 3 * * x", "every day"])
def test_bad_cron_schedule(schedule: str) -> None:
    data = offline_embed(base(), schedule=schedule)
    assert_names(problems(data), "embed", "is not a 5-field cron expression")


def test_workflow_output_not_produced() -> None:
    data = base()
    data["outputs"].append("nothing")
    found = problems(data)
    assert "workflow output 'nothing' is produced by no step" in found


def test_op_signature_mismatches_name_the_step() -> None:
    data = base()
    step(data, "sources")["inputs"] = {"emb": "Embedding", "extra": "Count"}
    data["inputs"]["extra"] = "Count"
    step(data, "pick")["outputs"] = {"page": "Page", "more": "Page"}
    found = problems(data)
    assert_names(found, "sources", "op 'sources' needs input 'member' (MemberFeatures)")
    assert_names(found, "sources", "op 'sources' takes no input 'extra' (Count)")
    assert_names(found, "pick", "op 'pick' produces {'page': 'Page'}")


def test_every_problem_is_reported_at_once() -> None:
    data = base()
    step(data, "embed")["op"] = "nope"
    step(data, "pick")["after"] = ["ghost"]
    found = problems(data)
    assert_names(found, "embed", "unknown op")
    assert_names(found, "pick", "unknown step 'ghost'")
    with pytest.raises(WorkflowError) as info:
        build(data)
    assert "'embed'" in str(info.value) and "'ghost'" in str(info.value)


# --- parse: pydantic errors name the step --------------------------------------------------------


def parse_problems(data: Any) -> list[str]:
    with pytest.raises(WorkflowError) as info:
        parse(data)
    assert info.value.problems
    return info.value.problems


def test_parse_bad_mode_names_the_step() -> None:
    data = base()
    step(data, "embed")["mode"] = "sometimes"
    found = parse_problems(data)
    assert any(p.startswith("step 'embed': mode:") for p in found), found


def test_parse_zero_timeout_names_the_step() -> None:
    data = base()
    step(data, "sources")["timeout_ms"] = 0
    found = parse_problems(data)
    assert any(p.startswith("step 'sources': timeout_ms:") for p in found), found


def test_parse_deadline_share_over_one_names_the_step() -> None:
    data = base()
    step(data, "sources")["deadline_share"] = 1.5
    found = parse_problems(data)
    assert any(p.startswith("step 'sources': deadline_share:") for p in found), found


def test_parse_unknown_field_names_the_step() -> None:
    data = base()
    step(data, "pick")["retries"] = 3
    found = parse_problems(data)
    assert any(p.startswith("step 'pick': retries:") and "not permitted" in p for p in found)


def test_parse_bad_remote_block_names_the_step() -> None:
    data = base()
    step(data, "embed").update({"mode": "remote", "remote": {"url": ""}})
    found = parse_problems(data)
    assert any(p.startswith("step 'embed': remote.url:") for p in found), found


def test_parse_unnamed_step_is_named_by_position() -> None:
    data = base()
    del step(data, "embed")["name"]
    found = parse_problems(data)
    assert any(p.startswith("step '#2': name:") for p in found), found


def test_parse_bad_step_name() -> None:
    data = base()
    step(data, "embed")["name"] = "Embed Member"
    found = parse_problems(data)
    assert any(p.startswith("step 'Embed Member': name:") for p in found), found


def test_parse_duplicate_step_names() -> None:
    data = base()
    data["steps"].append(copy.deepcopy(step(data, "embed")))
    found = parse_problems(data)
    assert any("step name 'embed' is used twice" in p for p in found), found


@pytest.mark.parametrize("data", [None, [1, 2], "feed", {"name": "x"}])
def test_parse_malformed_documents(data: Any) -> None:
    assert parse_problems(data)


def test_parse_step_that_is_not_a_mapping() -> None:
    data = base()
    data["steps"].append("embed")
    found = parse_problems(data)
    assert any(p.startswith("step '#5'") for p in found), found


# --- load ----------------------------------------------------------------------------------------


def test_load_a_file(tmp_path: Path) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(base()))
    wf = load(path, SIGS)
    assert wf.spec.name == "tiny"
    assert wf.order == ("load", "embed", "sources", "pick")


def test_load_names_the_file_in_errors(tmp_path: Path) -> None:
    data = base()
    step(data, "embed")["op"] = "nope"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(WorkflowError) as info:
        load(path, SIGS)
    assert str(path) in str(info.value)
    assert_names(info.value.problems, "embed", "unknown op 'nope'")


def test_load_pydantic_error_through_a_file(tmp_path: Path) -> None:
    data = base()
    step(data, "embed")["timeout_ms"] = 0
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(WorkflowError) as info:
        load(path, SIGS)
    assert any(p.startswith("step 'embed': timeout_ms:") for p in info.value.problems)


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(WorkflowError) as info:
        load(tmp_path / "missing.yaml")
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith("cannot read")
    assert "missing.yaml" in str(info.value)


def test_load_a_directory(tmp_path: Path) -> None:
    with pytest.raises(WorkflowError) as info:
        load(tmp_path)
    assert info.value.problems[0].startswith("cannot read")


def test_load_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: feed\nsteps: [\n  - {name: a\n")
    with pytest.raises(WorkflowError) as info:
        load(path)
    assert info.value.problems[0].startswith("not valid YAML")


def test_load_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    with pytest.raises(WorkflowError):
        load(path)


def test_load_a_file_that_is_not_text(tmp_path: Path) -> None:
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"name: \xff\xfe\x00feed\n")
    with pytest.raises(WorkflowError) as info:
        load(path)
    assert info.value.problems[0].startswith("not UTF-8 text")


def test_spec_has_a_json_schema_to_embed_in_a_custom_resource() -> None:
    """A FeedPipeline can carry a workflow: the spec model gives the OpenAPI schema."""
    from feedserve.workflow.spec import WorkflowSpec

    schema = WorkflowSpec.model_json_schema()
    assert set(schema["required"]) >= {"name", "inputs", "outputs", "steps"}
    modes = schema["$defs"]["Mode"]["enum"]
    assert modes == ["online", "remote", "offline", "nearline", "offline+nearline"]
    step = schema["$defs"]["StepSpec"]
    assert step["additionalProperties"] is False
    assert step["properties"]["timeout_ms"]["anyOf"][0]["minimum"] == 1
