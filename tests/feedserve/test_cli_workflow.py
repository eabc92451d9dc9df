"""``feedserve workflow show|check|jobs`` and ``feedserve run offline``: real subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from feedserve.workflow.spec import DEFAULT_WORKFLOW


def feedserve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "feedserve.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "FEEDSERVE_REDIS_URL": "", "COLUMNS": "200", **(env or {})},
    )


def test_show_prints_every_step_and_draws_png_and_svg(tmp_path: Path) -> None:
    png, svg = tmp_path / "wf.png", tmp_path / "wf.svg"
    proc = feedserve("workflow", "show", "--out", str(png))
    assert proc.returncode == 0, proc.stderr
    for step in ("hydrate_member", "embed_member", "retrieve_ebr", "merge", "rank"):
        assert step in proc.stdout
    assert "request path" in proc.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    proc = feedserve(
        "workflow", "show", "--mode", "embed_member=offline+nearline", "--out", str(svg)
    )
    assert proc.returncode == 0, proc.stderr
    assert "<svg" in svg.read_text()[:2000]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("embed_member"))
    assert "offline+nearline" in line and "on engagements" in line


def test_check_names_the_step_without_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    text = DEFAULT_WORKFLOW.read_text().replace(
        "inputs: {member: MemberFeatures, candidates: CandidateSet}",
        "inputs: {member: MemberFeatures, candidates: Candidates}",
    )
    bad.write_text(text)
    proc = feedserve("workflow", "check", str(bad))
    assert proc.returncode == 2
    assert "step 'rank': input 'candidates' is declared Candidates" in proc.stderr
    assert "Traceback" not in proc.stderr
    ok = feedserve("workflow", "check", str(DEFAULT_WORKFLOW))
    assert ok.returncode == 0 and "ok (12 steps" in ok.stdout
    missing = feedserve("workflow", "check", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_jobs_are_a_cronjob_for_scheduled_offline_steps() -> None:
    proc = feedserve(
        "workflow", "jobs", "--mode", "embed_member=offline+nearline", "--namespace", "feeds"
    )
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    kinds = {d["metadata"]["labels"]["feedserve.io/workflow-step"]: d["kind"] for d in docs}
    assert kinds == {"embed_member": "CronJob", "embed_posts": "Job"}
    cron = next(d for d in docs if d["kind"] == "CronJob")
    assert cron["spec"]["schedule"] == "0 3 * * *"
    assert cron["metadata"]["namespace"] == "feeds"
    args = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:4] == ["feedserve", "run", "offline", "embed_member"]
    online = feedserve("workflow", "jobs")
    assert [d["kind"] for d in yaml.safe_load_all(online.stdout) if d] == ["Job"]


def test_run_offline_refuses_what_it_cannot_run(tmp_path: Path) -> None:
    proc = feedserve("run", "offline", "rank")
    assert proc.returncode == 2 and "runs online" in proc.stderr
    proc = feedserve("run", "offline", "no_such_step")
    assert proc.returncode == 2 and "no step 'no_such_step'" in proc.stderr
    mode_file = DEFAULT_WORKFLOW.read_text().replace("    mode: online\n", "    mode: offline\n", 1)
    path = tmp_path / "offline.yaml"
    path.write_text(mode_file)
    proc = feedserve("run", "offline", "embed_member", "--workflow", str(path))
    assert proc.returncode == 2 and "FEEDSERVE_REDIS_URL" in proc.stderr  # embedded
    assert "Traceback" not in proc.stderr
