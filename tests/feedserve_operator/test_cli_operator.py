"""`feedserve operator render|crds`, run as a user would (a subprocess)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from feedserve_operator import crds

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "pipeline-dev.yaml"
ENTRY = "from feedserve.cli import app; app()"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", ENTRY, "operator", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)


VALID = """\
apiVersion: feedserve.io/v1alpha1
kind: FeedPipeline
metadata: {name: feed, namespace: feeds}
spec:
  autoscaling: {policy: hpa}
---
apiVersion: feedserve.io/v1alpha1
kind: FeedModel
metadata: {name: enc, namespace: feeds}
spec: {pipeline: feed, role: retrieval-encoder, artifact: "pvc://m", version: 1}
"""

INVALID = """\
apiVersion: feedserve.io/v1alpha1
kind: FeedPipeline
metadata: {name: ok}
spec: {}
---
apiVersion: feedserve.io/v1alpha1
kind: FeedPipeline
metadata: {name: broken}
spec:
  inference: {gpusPerPod: 9}
"""


def test_render_valid_and_example(tmp_path: Path) -> None:
    path = tmp_path / "fp.yaml"
    path.write_text(VALID)
    # the example and a second file in one run: both files' manifests, in order
    result = run("render", "-f", str(path), "-f", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "Job",
            "HorizontalPodAutoscaler"} <= kinds  # fmt: skip
    names = [(d["kind"], d["metadata"]["namespace"], d["metadata"]["name"]) for d in docs]
    assert ("ConfigMap", "feeds", "feed-model-enc") in names
    assert ("Deployment", "feedserve-dev", "feed-dev-inference") in names
    assert ("ConfigMap", "feedserve-dev", "feed-dev-model-ranker") in names
    hpas = [n for n in names if n[0] == "HorizontalPodAutoscaler"]
    assert {n[1] for n in hpas} == {"feeds"}  # the example is coupled: no HPA there
    assert all("ownerReferences" not in d["metadata"] for d in docs)


def test_render_invalid_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(INVALID)
    result = run("render", "-f", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "document 2" in lines[0] and "broken" in lines[0]
    assert "spec.inference.gpusPerPod" in lines[0]


def test_render_unreadable_inputs(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: [unclosed\n")
    other = tmp_path / "other.yaml"
    other.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n")
    result = run("render", "-f", str(bad), "-f", str(tmp_path / "missing.yaml"), "-f", str(other))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "not valid YAML" in result.stderr
    assert "missing.yaml: cannot read" in result.stderr
    assert "kind: expected one of FeedPipeline, FeedModel, got 'Pod'" in result.stderr


def test_crds_print_and_write(tmp_path: Path) -> None:
    result = run("crds")
    assert result.returncode == 0, result.stderr
    assert [d for d in yaml.safe_load_all(result.stdout) if d] == crds.all_crds()
    result = run("crds", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    for kind in crds.KINDS.values():
        assert (tmp_path / kind.file_name).read_text() == crds.to_yaml(crds.crd_for(kind.kind))


def test_run_needs_a_scope_and_says_so() -> None:
    out = run("run")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "--namespace" in out.stderr and "--all-namespaces" in out.stderr
