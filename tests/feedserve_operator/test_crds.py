"""The CRDs are generated from the spec model: committed YAML in sync, structural, and the
validator (schema + CEL twins) rejects what the API server would, naming the field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from feedserve_operator import crds
from feedserve_operator.spec import FeedModelSpec, FeedPipelineSpec

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "pipeline-dev.yaml"


def schema_of(kind: str) -> dict[str, Any]:
    return crds.crd_for(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def nodes(schema: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every schema node (path, node) below ``schema``."""
    out = [(path, schema)]
    for name, sub in schema.get("properties", {}).items():
        out += nodes(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        out += nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        out += nodes(schema["additionalProperties"], f"{path}.*")
    return out


def pipeline(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "feedserve.io/v1alpha1", "kind": "FeedPipeline",
            "metadata": {"name": "feed"}, "spec": spec}  # fmt: skip


def model(**spec: Any) -> dict[str, Any]:
    base = {"pipeline": "feed", "role": "post-index", "artifact": "pvc://m/post_index",
            "version": 1}  # fmt: skip
    return {"apiVersion": "feedserve.io/v1alpha1", "kind": "FeedModel",
            "metadata": {"name": "idx"}, "spec": {**base, **spec}}  # fmt: skip


@pytest.mark.parametrize("directory", [crds.CRD_DIR, crds.CHART_CRD_DIR], ids=["operator", "chart"])
@pytest.mark.parametrize("kind", list(crds.KINDS))
def test_committed_yaml_matches_the_model(kind: str, directory: Path) -> None:
    path = directory / crds.KINDS[kind].file_name
    expected = crds.to_yaml(crds.crd_for(kind))
    assert path.exists() and path.read_text() == expected, (
        f"{path} is out of date with spec.py: regenerate it with "
        "`.venv/bin/python -m feedserve_operator.crds --write`"
    )
    assert path.read_text().startswith("# GENERATED")
    assert yaml.safe_load(path.read_text()) == crds.crd_for(kind)


@pytest.mark.parametrize("kind", list(crds.KINDS))
def test_schemas_are_structural(kind: str) -> None:
    schema = schema_of(kind)
    text = yaml.safe_dump(schema)
    assert (
        "$ref" not in text
        and "anyOf" not in text
        and "title" not in str([list(n) for _, n in nodes(schema)])
    )
    for path, node in nodes(schema):
        assert "type" in node, f"{kind}{path} has no type"
        assert node.get("additionalProperties") is not False, path
        assert "$defs" not in node and "const" not in node, path
        if node.get("type") == "object" and path not in ("", ".metadata"):
            assert "properties" in node or isinstance(node.get("additionalProperties"), dict), path
    props = schema["properties"]
    assert set(props) == {"apiVersion", "kind", "metadata", "spec", "status"}
    assert schema["required"] == ["spec"]


def test_enums_bounds_required_defaults_and_nullable() -> None:
    spec = schema_of("FeedPipeline")["properties"]["spec"]["properties"]
    assert spec["autoscaling"]["properties"]["policy"]["enum"] == ["hpa", "coupled"]
    assert spec["featurizers"]["properties"]["backend"]["enum"] == ["celery", "dali"]
    gpus = spec["inference"]["properties"]["gpusPerPod"]
    assert (gpus["minimum"], gpus["maximum"], gpus["default"]) == (0, 8, 1)
    models = spec["inference"]["properties"]["models"]
    assert (models["minItems"], models["maxItems"]) == (1, 32)
    assert spec["redis"]["properties"]["prefix"]["maxLength"] == 32
    assert spec["featurizers"]["properties"]["image"]["pattern"].startswith("^[a-z0-9]")
    # default_factory defaults are emitted too, so the API server fills in a complete spec
    assert spec["featurizers"]["properties"]["replicas"]["default"] == {"min": 1, "max": 8}
    inference_resources = spec["inference"]["default"]["resources"]
    assert inference_resources == {"requests": {"cpu": "4", "memory": "16Gi"}}
    limits = spec["featurizers"]["properties"]["resources"]["properties"]["limits"]
    assert limits["nullable"] is True and "default" not in limits
    assert spec["workflow"]["nullable"] is True and "steps" in spec["workflow"]["required"]
    step = spec["workflow"]["properties"]["steps"]["items"]["properties"]
    assert step["inputs"]["additionalProperties"] == {"type": "string"}
    assert step["deadline_share"]["exclusiveMinimum"] is True
    assert step["deadline_share"]["minimum"] == 0
    fm = schema_of("FeedModel")["properties"]["spec"]
    assert fm["required"] == ["pipeline", "role", "artifact", "version"]
    assert fm["properties"]["role"]["enum"] == [
        "retrieval-encoder", "post-index", "generative-ranker"]  # fmt: skip
    assert fm["properties"]["rollout"]["properties"]["canaryVersion"]["nullable"] is True
    assert "description" in fm["properties"]["version"]
    status = schema_of("FeedModel")["properties"]["status"]["properties"]
    assert status["servedWeights"]["additionalProperties"] == {"type": "integer"}


def test_names_columns_and_status_subresource() -> None:
    fp, fm = crds.crd_for("FeedPipeline"), crds.crd_for("FeedModel")
    assert [c["metadata"]["name"] for c in crds.all_crds()] == [
        "feedpipelines.feedserve.io", "feedmodels.feedserve.io"]  # fmt: skip
    for crd, plural, short in ((fp, "feedpipelines", "fp"), (fm, "feedmodels", "fm")):
        names = crd["spec"]["names"]
        assert names["plural"] == plural and names["shortNames"] == [short]
        assert names["categories"] == ["feedserve"]
        assert crd["spec"]["scope"] == "Namespaced" and crd["spec"]["group"] == "feedserve.io"
        version = crd["spec"]["versions"][0]
        assert version["name"] == "v1alpha1" and version["storage"] and version["served"]
        assert version["subresources"] == {"status": {}}
    cols = {c["name"]: c for c in fp["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert cols["Policy"]["jsonPath"] == ".spec.autoscaling.policy"
    assert cols["Featurizers"]["jsonPath"] == ".status.featurizers.ready"
    assert cols["Inference"]["jsonPath"] == ".status.inference.ready"
    assert cols["Gateway"]["jsonPath"] == ".status.gateway.ready"
    assert cols["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert cols["Age"]["type"] == "date"
    cols = {c["name"]: c for c in fm["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert set(cols) == {"Pipeline", "Role", "Version", "Canary", "Ready", "Age"}
    assert cols["Canary"]["jsonPath"] == ".spec.rollout.canaryWeight"


def test_every_cel_rule_has_a_python_check() -> None:
    rules = [r for crd in crds.all_crds() for r in crds.emitted_rules(crd)]
    assert "self.min <= self.max" in rules
    assert "self.canaryWeight == 0 || has(self.canaryVersion)" in rules
    assert set(rules) <= set(crds.CEL_CHECKS)
    assert set(crds.CEL_CHECKS) == {r.rule for rs in crds.RULES.values() for r in rs}


@pytest.mark.parametrize(
    ("kind", "obj", "field"),
    [
        ("FeedPipeline", pipeline(autoscaling={"policy": "fastest"}), "spec.autoscaling.policy"),
        ("FeedPipeline", pipeline(inference={"gpusPerPod": 9}), "spec.inference.gpusPerPod"),
        ("FeedPipeline", pipeline(featurizers={"replicas": {"min": 5, "max": 2}}),
         "spec.featurizers.replicas.min"),
        ("FeedPipeline", pipeline(inference={"replicas": {"min": 6}}),
         "spec.inference.replicas.min"),  # max defaults to 4 before the rule runs
        ("FeedPipeline", pipeline(featurizers={"backend": "spark"}), "spec.featurizers.backend"),
        ("FeedPipeline", pipeline(gateway={"image": "Bad Image!"}), "spec.gateway.image"),
        ("FeedPipeline", pipeline(redis={"prefix": ""}), "spec.redis.prefix"),
        ("FeedPipeline", pipeline(inference={"models": []}), "spec.inference.models"),
        ("FeedPipeline", pipeline(inference={"gpuz": 1}), "spec.inference.gpuz"),
        ("FeedPipeline", pipeline(gateway={"replicas": "two"}), "spec.gateway.replicas"),
        ("FeedModel", model(rollout={"canaryWeight": 20}), "spec.rollout.canaryVersion"),
        ("FeedModel", model(role="reranker"), "spec.role"),
        ("FeedModel", model(version=0), "spec.version"),
        ("FeedModel", model(triton={"instances": 17}), "spec.triton.instances"),
    ],
)  # fmt: skip
def test_validate_rejects_naming_the_field(kind: str, obj: dict[str, Any], field: str) -> None:
    problems = crds.validate(kind, obj)
    assert problems, f"{obj} should be rejected"
    assert any(p.startswith(f"{field}:") for p in problems), problems


def test_missing_required_feedmodel_fields() -> None:
    obj = model()
    for name in ("artifact", "version", "role", "pipeline"):
        del obj["spec"][name]
    problems = crds.validate("FeedModel", obj)
    for name in ("artifact", "version", "role", "pipeline"):
        assert f"spec.{name}: Required value" in problems
    no_spec = {k: v for k, v in model().items() if k != "spec"}
    assert crds.validate("FeedModel", no_spec) == ["spec: Required value"]


def test_cel_messages_and_valid_objects() -> None:
    msg = crds.validate("FeedModel", model(rollout={"canaryWeight": 20}))
    assert msg == ["spec.rollout.canaryVersion: Invalid value: canaryWeight > 0 needs "
                   "canaryVersion (self.canaryWeight == 0 || has(self.canaryVersion))"]  # fmt: skip
    assert crds.validate("FeedModel", model(rollout={"canaryWeight": 20, "canaryVersion": 2})) == []
    assert crds.validate("FeedPipeline", pipeline()) == []
    assert crds.validate("FeedPipeline", pipeline(inference={"replicas": {"min": 0, "max": 1}},
                                                  autoscaling={"policy": "hpa"})) == []  # fmt: skip
    # the schema and the spec model agree on a fully defaulted object
    full = FeedPipelineSpec().model_dump(by_alias=True, mode="json", exclude_none=True)
    assert crds.validate("FeedPipeline", pipeline(**full)) == []
    assert crds.validate("FeedPipeline", {**pipeline(), "apiVersion": "v1"})[0].startswith(
        "apiVersion:"
    )
    assert crds.validate("Nope", {})[0].startswith("kind:")


def test_defaults_keep_the_input_unchanged() -> None:
    obj = model()
    before = copy.deepcopy(obj)
    crds.validate("FeedModel", obj)
    assert obj == before


def test_example_is_valid() -> None:
    docs = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    kinds = [d["kind"] for d in docs]
    assert kinds == ["FeedPipeline", "FeedModel", "FeedModel"]
    for doc in docs:
        assert crds.validate(doc["kind"], doc) == [], doc["metadata"]["name"]
        model_cls = FeedPipelineSpec if doc["kind"] == "FeedPipeline" else FeedModelSpec
        model_cls.model_validate(doc["spec"])
    assert docs[0]["spec"]["inference"]["gpusPerPod"] == 1


def test_main_writes_and_prints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert crds.main(["--write", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "feedmodels.feedserve.io.yaml", "feedpipelines.feedserve.io.yaml"]  # fmt: skip
    capsys.readouterr()
    assert crds.main([]) == 0
    printed = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert printed == crds.all_crds()
    assert crds.main(["--bogus"]) == 2
