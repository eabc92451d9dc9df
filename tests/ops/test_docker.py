"""The container images (ops/docker/*.Dockerfile) against what they package and what runs them.

Each Dockerfile is read with a small parser (comments, ``\\`` continuations, stages, ARG
defaults) and checked against the repository, without building anything:

- the files it copies exist and are not excluded by the root ``.dockerignore``;
- its RUN scripts parse as POSIX sh;
- the final stage runs as the numeric non-root uid the operator's pods use, with HOME and
  TMPDIR under /tmp (a read-only root filesystem) and exec-form commands;
- its command is the one ``feedserve_operator.render`` gives the container (gateway,
  featurizer worker, tritonserver), or a ``feedserve`` command line that parses (operator),
  and the modules and models those commands name exist;
- it exposes the ports render.py uses;
- it installs the project's wheel with its one extra, and what it installs beside it is
  copied verbatim from pyproject.toml; those distributions and their requirements are enough
  to import what the container runs: checked in a subprocess that sees only them;
- the Makefile's ``images`` target, run against stand-in ``docker`` commands, builds the image
  names render.py (and the chart) refer to, and skips with exit status 0 without an engine.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import feedserve
from feedserve_operator.render import (
    MODEL_REPO_DIR,
    RUN_AS,
    TRITON_GRPC,
    TRITON_HTTP,
    TRITON_METRICS,
    render_pipeline,
)
from feedserve_operator.spec import FeaturizerPool, FeedPipelineSpec, GatewaySpec, InferencePool

REPO = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO / "ops" / "docker"
IMAGES = ("gateway", "featurizer", "operator", "triton")
# the pyproject extra each image installs
EXTRA = {
    "gateway": "gateway",
    "featurizer": "featurizer",
    "operator": "operator",
    "triton": "models",
}
# the container of render.py's default FeedPipeline that runs each image's default command
CONTAINER = {"gateway": "gateway", "featurizer": "featurizer", "triton": "tritonserver"}
PYTHON_BASE = "python:3.11-slim"
WHEEL_EXTRAS = re.compile(r"feedserve-\*\.whl\)\[([^\]]+)\]")
QUOTED_REQUIREMENT = re.compile(r'"([A-Za-z0-9][A-Za-z0-9._-]*(?:\[[^\]]*\])?(?:[<>=!~]=?)[^"]*)"')
VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


# --- a Dockerfile parser ---------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    value: str  # continuation lines joined
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON (exec) form's arguments, or None for the shell form."""
        if not self.value.startswith("["):
            return None
        try:
            parsed = json.loads(self.value)
        except json.JSONDecodeError:
            return None
        if isinstance(parsed, list) and all(isinstance(x, str) for x in parsed):
            return parsed
        return None


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)
    args: dict[str, str] = field(default_factory=dict)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for ins in self.all("ENV"):
            tokens = shlex.split(ins.value)
            if tokens and "=" not in tokens[0]:  # the legacy `ENV KEY value` form
                out[tokens[0]] = " ".join(tokens[1:])
                continue
            for token in tokens:
                key, _, value = token.partition("=")
                out[key] = value
        return out

    def command(self) -> list[str]:
        """ENTRYPOINT + CMD (exec forms), as a container runtime runs them."""
        out: list[str] = []
        for keyword in ("ENTRYPOINT", "CMD"):
            ins = self.last(keyword)
            if ins is not None:
                form = ins.exec_form()
                assert form is not None, f"line {ins.line}: {keyword} is not in exec form"
                out += form
        return out


@dataclass
class Dockerfile:
    path: Path
    args: dict[str, str]  # global ARG defaults (before the first FROM)
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def expand(self, text: str, stage: Stage | None = None) -> str:
        """``text`` with ``$VAR``/``${VAR}`` replaced by ARG defaults (the stage's, then global)."""
        scope = {**self.args, **(stage.args if stage else {})}
        return VARIABLE.sub(lambda m: scope.get(m.group(1) or m.group(2), m.group(0)), text)

    def base(self, stage: Stage) -> str:
        return self.expand(stage.base)


def logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """(first line number, instruction text): comments and blank lines dropped, ``\\``
    continuations joined (comment lines inside a continuation are dropped, as Docker does)."""
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not parts:
            if not stripped or stripped.startswith("#"):
                continue
            start = number
        elif not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            parts.append(stripped[:-1].strip())
            continue
        parts.append(stripped)
        yield start, " ".join(parts)
        parts = []
    if parts:
        yield start, " ".join(parts)


def _arg(value: str) -> tuple[str, str]:
    name, _, default = value.partition("=")
    default = shlex.split(default)[0] if default.strip() else ""
    return name.strip(), default


def parse_dockerfile(path: Path) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for number, line in logical_lines(path.read_text()):
        keyword, _, value = line.partition(" ")
        keyword, value = keyword.upper(), value.strip()
        if keyword == "FROM":
            tokens = [t for t in value.split() if not t.startswith("--")]
            name = tokens[2] if len(tokens) >= 3 and tokens[1].lower() == "as" else None
            stages.append(Stage(base=tokens[0], name=name))
        elif not stages:
            assert keyword == "ARG", f"{path.name}:{number}: {keyword} before the first FROM"
            name, default = _arg(value)
            global_args[name] = default
        else:
            stage = stages[-1]
            if keyword == "ARG":
                name, default = _arg(value)
                stage.args[name] = default or global_args.get(name, "")
            stage.instructions.append(Instruction(keyword, value, number))
    assert stages, f"{path.name}: no FROM"
    return Dockerfile(path, global_args, stages)


@functools.cache
def dockerfile(image: str) -> Dockerfile:
    return parse_dockerfile(DOCKER_DIR / f"{image}.Dockerfile")


def copy_paths(ins: Instruction) -> tuple[list[str], str, dict[str, str]]:
    """(sources, destination, flags) of a COPY/ADD."""
    form = ins.exec_form()
    tokens = form if form is not None else shlex.split(ins.value)
    flags = dict(t[2:].partition("=")[::2] for t in tokens if t.startswith("--"))
    paths = [t for t in tokens if not t.startswith("--")]
    return paths[:-1], paths[-1], flags


def run_script(ins: Instruction) -> str:
    """A RUN's shell script, without its BuildKit flags (--mount=..., --network=...)."""
    return re.sub(r"^(?:--\S+\s+)+", "", ins.value)


def install_run(image: str) -> tuple[Stage, str]:
    """The stage and script of the RUN that installs the project's wheel with its extras."""
    df = dockerfile(image)
    found = [
        (stage, run_script(ins))
        for stage in df.stages
        for ins in stage.all("RUN")
        if "pip install" in ins.value and WHEEL_EXTRAS.search(ins.value)
    ]
    assert len(found) == 1, f"{image}: expected one RUN installing feedserve-*.whl[EXTRAS]"
    return found[0]


def installed_extras(image: str) -> set[str]:
    stage, script = install_run(image)
    match = WHEEL_EXTRAS.search(script)
    assert match is not None
    return {e.strip() for e in dockerfile(image).expand(match.group(1), stage).split(",")}


def side_requirements(image: str) -> list[str]:
    """The requirements the install RUN names beside the wheel (pip itself left out)."""
    _, script = install_run(image)
    reqs: list[str] = QUOTED_REQUIREMENT.findall(script)
    return [r for r in reqs if canonicalize_name(Requirement(r).name) != "pip"]


# --- the repository's side -------------------------------------------------------------------


@functools.cache
def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def project_requirements(extras: set[str]) -> list[Requirement]:
    """feedserve's own requirements with ``extras``, from pyproject.toml (not from whatever
    metadata an editable install left behind)."""
    project = pyproject()["project"]
    specs = list(project["dependencies"])
    optional: dict[str, list[str]] = project["optional-dependencies"]
    for extra in extras:
        assert extra in optional, f"pyproject.toml has no extra {extra!r}"
        specs += optional[extra]
    return [Requirement(s) for s in specs]


def all_pyproject_requirements() -> set[str]:
    project = pyproject()["project"]
    out = set(project["dependencies"])
    for specs in project["optional-dependencies"].values():
        out |= set(specs)
    return out


@functools.cache
def rendered_containers() -> dict[str, dict[str, Any]]:
    """Container name -> container, in the Deployments of a default FeedPipeline."""
    out: dict[str, dict[str, Any]] = {}
    for obj in render_pipeline("feed", "default", FeedPipelineSpec()):
        if obj["kind"] == "Deployment":
            for container in obj["spec"]["template"]["spec"]["containers"]:
                out[container["name"]] = container
    return out


def container_ports(*names: str) -> set[int]:
    return {
        int(p["containerPort"])
        for name in names
        for p in rendered_containers()[name].get("ports", [])
    }


def exposed(image: str) -> set[int]:
    ports: set[int] = set()
    for ins in dockerfile(image).final.all("EXPOSE"):
        for token in dockerfile(image).expand(ins.value).split():
            ports.add(int(token.split("/")[0]))
    return ports


def flag_value(command: list[str], flag: str) -> str | None:
    """The value of ``--flag=value`` or ``--flag value`` in a command line."""
    for i, token in enumerate(command):
        if token.startswith(f"{flag}="):
            return token.split("=", 1)[1]
        if token == flag and i + 1 < len(command):
            return command[i + 1]
    return None


def import_target(target: str) -> Any:
    """``module`` or ``module:attribute``, imported."""
    module, _, attribute = target.partition(":")
    obj = importlib.import_module(module)
    return getattr(obj, attribute) if attribute else obj


# --- .dockerignore ---------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def dockerignore_patterns() -> list[str]:
    path = REPO / ".dockerignore"
    assert path.is_file(), "no .dockerignore at the repository root (the build context)"
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves ``path`` (relative to the context root) out of the context: the
    last matching pattern wins; a pattern matching a parent directory excludes its contents."""
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _pattern_regex(pattern.lstrip("!").strip("/"))
        if any(regex.match(p) for p in prefixes):
            result = not negate
    return result


# --- tests: the Dockerfiles themselves -------------------------------------------------------


def test_every_dockerfile_is_checked() -> None:
    found = sorted(p.name.removesuffix(".Dockerfile") for p in DOCKER_DIR.glob("*.Dockerfile"))
    assert found == sorted(IMAGES)


@pytest.mark.parametrize("image", IMAGES)
def test_copied_files_exist_and_are_in_the_build_context(image: str) -> None:
    patterns = dockerignore_patterns()
    df = dockerfile(image)
    checked = 0
    for stage in df.stages:
        for ins in stage.all("COPY") + stage.all("ADD"):
            sources, _, flags = copy_paths(ins)
            if "from" in flags:  # from another stage, not from the context
                continue
            for source in sources:
                rel = df.expand(source, stage).removeprefix("./").rstrip("/")
                matches = list(REPO.glob(rel)) if any(c in rel for c in "*?[") else [REPO / rel]
                assert matches and all(m.exists() for m in matches), (
                    f"{image}.Dockerfile:{ins.line}: {source} is not in the repository"
                )
                assert not ignored(rel, patterns), (
                    f"{image}.Dockerfile:{ins.line}: {source} is excluded by .dockerignore"
                )
                checked += 1
    assert checked > 0


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    patterns = dockerignore_patterns()
    for path in (".venv", "var", ".git", ".mypy_cache", "ops/results", "tests/ops/test_docker.py"):
        assert ignored(path, patterns), f"{path} is sent to the Docker engine"
    for path in ("pyproject.toml", "README.md", "platform/feedserve/cli.py", "model_repo"):
        assert not ignored(path, patterns), f"{path} is excluded"


@pytest.mark.parametrize("image", IMAGES)
def test_run_scripts_parse_as_posix_sh(image: str) -> None:
    for stage in dockerfile(image).stages:
        for ins in stage.all("RUN"):
            if ins.exec_form() is not None:
                continue
            proc = subprocess.run(
                ["sh", "-n", "-c", run_script(ins)], capture_output=True, text=True, check=False
            )
            assert proc.returncode == 0, f"{image}.Dockerfile:{ins.line}: {proc.stderr}"


@pytest.mark.parametrize("image", IMAGES)
def test_final_stage_runs_as_the_pods_numeric_non_root_user(image: str) -> None:
    user = dockerfile(image).final.last("USER")
    assert user is not None, f"{image}: the final stage sets no USER (it would run as root)"
    match = re.fullmatch(r"(\d+)(?::(\d+))?", user.value)
    assert match, f"{image}: USER {user.value} is not numeric (runAsNonRoot cannot verify it)"
    uid, gid = int(match.group(1)), match.group(2)
    assert uid != 0
    assert uid == RUN_AS, f"{image}: USER {uid}, the operator's pods run as {RUN_AS}"
    assert gid is None or int(gid) == RUN_AS


@pytest.mark.parametrize("image", IMAGES)
def test_final_stage_works_on_a_read_only_root_filesystem(image: str) -> None:
    final = dockerfile(image).final
    env = final.env()
    assert env.get("HOME") == "/tmp"
    assert env.get("TMPDIR") == "/tmp"
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env.get("PATH", "").startswith("/opt/venv/bin:"), "the venv is not first on PATH"
    assert final.command(), f"{image}: no CMD/ENTRYPOINT"
    assert final.command()[0] != "sh", f"{image}: the command goes through a shell"


@pytest.mark.parametrize("image", IMAGES)
def test_oci_labels(image: str) -> None:
    df = dockerfile(image)
    labels: dict[str, str] = {}
    for ins in df.final.all("LABEL"):
        for token in shlex.split(ins.value):
            key, _, value = token.partition("=")
            labels[key] = df.expand(value, df.final)
    assert labels.get("org.opencontainers.image.title") == f"feedserve-{image}"
    assert labels.get("org.opencontainers.image.version") == feedserve.__version__
    assert (
        labels.get("org.opencontainers.image.licenses") == pyproject()["project"]["license"]["text"]
    )
    assert labels.get("org.opencontainers.image.description")


@pytest.mark.parametrize("image", IMAGES)
def test_builds_a_wheel_and_installs_one_extra(image: str) -> None:
    df = dockerfile(image)
    assert len(df.stages) >= 2, f"{image}: not a multi-stage build"
    scripts = [run_script(i) for s in df.stages for i in s.all("RUN")]
    assert any("pip wheel" in s and "--wheel-dir /wheels" in s for s in scripts)
    assert installed_extras(image) == {EXTRA[image]}
    if image != "triton":
        assert {df.base(s) for s in df.stages} == {PYTHON_BASE}
        venv = [
            i
            for i in df.final.all("COPY")
            if "from" in copy_paths(i)[2] and copy_paths(i)[1] == "/opt/venv"
        ]
        assert venv, f"{image}: the final stage does not copy the builder's /opt/venv"
    else:
        assert df.base(df.stages[0]) == PYTHON_BASE  # the wheel


@pytest.mark.parametrize("image", IMAGES)
def test_pinned_requirements_are_copied_from_pyproject(image: str) -> None:
    known = all_pyproject_requirements()
    for req in side_requirements(image):
        assert req in known, f"{image}: {req!r} is not a requirement in pyproject.toml"
    script = "\n".join(run_script(i) for s in dockerfile(image).stages for i in s.all("RUN"))
    models: list[str] = pyproject()["project"]["optional-dependencies"]["models"]
    (torch_pin,) = [r for r in models if Requirement(r).name == "torch"]
    if "models" in installed_extras(image) or "torch" in script:
        # torch first and pinned, as the Makefile installs it
        assert f'"{torch_pin}"' in script, f"{image}: torch is not pinned to {torch_pin}"


def test_triton_installs_torch_before_the_models_extra() -> None:
    _, script = install_run("triton")
    match = WHEEL_EXTRAS.search(script)
    assert match is not None
    assert 0 <= script.find('"torch==') < match.start()


# --- tests: the images against render.py and the code they run ------------------------------


@pytest.mark.parametrize("image", sorted(CONTAINER))
def test_default_command_is_what_the_operator_runs(image: str) -> None:
    expected = rendered_containers()[CONTAINER[image]]["command"]
    assert dockerfile(image).final.command() == expected


def test_gateway_app_factory_exists() -> None:
    command = dockerfile("gateway").final.command()
    assert command[:3] == ["python", "-m", "uvicorn"]
    assert "--factory" in command
    target = next(t for t in command[3:] if not t.startswith("-"))
    factory = import_target(target)
    assert callable(factory), f"{target} is not callable"


def test_featurizer_worker_and_consumer_modules_exist() -> None:
    command = dockerfile("featurizer").final.command()
    assert command[:3] == ["python", "-m", "celery"]
    app_module = flag_value(command, "-A")
    assert app_module is not None
    app = import_target(f"{app_module}:app")
    assert type(app).__name__ == "Celery"
    consumer = rendered_containers()["event-consumer"]["command"]
    assert consumer[:2] == ["python", "-m"]
    assert callable(import_target(f"{consumer[2]}:main"))


def test_operator_command_is_a_feedserve_command_line() -> None:
    import typer.main

    command = dockerfile("operator").final.command()
    scripts: dict[str, str] = pyproject()["project"]["scripts"]
    assert command[0] in scripts, f"{command[0]} is not a console script in pyproject.toml"
    assert callable(import_target(scripts[command[0]]))
    cli = importlib.import_module(scripts[command[0]].partition(":")[0])
    assert command[1:3] == ["operator", "run"]
    # typer's (click's) own parsing of the arguments: unknown options would raise
    group: Any = typer.main.get_command(cli.app)
    run = group.commands["operator"].commands["run"]
    ctx = run.make_context("run", list(command[3:]))
    assert ctx.params["all_namespaces"] is True
    liveness = ctx.params["liveness"]
    assert liveness is not None and urlparse(liveness).path == "/healthz"


def test_triton_serves_the_model_repository_render_mounts() -> None:
    df = dockerfile("triton")
    command = df.final.command()
    assert command[0] == "tritonserver"
    assert flag_value(command, "--model-repository") == MODEL_REPO_DIR
    assert flag_value(command, "--http-port") == str(TRITON_HTTP)
    assert flag_value(command, "--grpc-port") == str(TRITON_GRPC)
    assert flag_value(command, "--metrics-port") == str(TRITON_METRICS)
    copies = {
        copy_paths(i)[1].rstrip("/"): copy_paths(i)[0]
        for i in df.final.all("COPY")
        if "from" not in copy_paths(i)[2]
    }
    assert copies.get(MODEL_REPO_DIR) == ["model_repo/"]
    loaded = [t.split("=", 1)[1] for t in command if t.startswith("--load-model=")]
    assert loaded == InferencePool().models
    for model in loaded:
        assert (REPO / "model_repo" / model / "config.pbtxt").is_file(), model
        assert (REPO / "model_repo" / model / "1" / "model.py").is_file(), model


def test_exposed_ports_are_the_ones_render_uses() -> None:
    assert exposed("gateway") == container_ports("gateway") == {GatewaySpec().port}
    assert exposed("featurizer") == container_ports("featurizer", "event-consumer") == set()
    triton = {TRITON_HTTP, TRITON_GRPC, TRITON_METRICS}
    assert exposed("triton") == container_ports("tritonserver") == triton
    liveness = flag_value(dockerfile("operator").final.command(), "--liveness")
    assert liveness is not None
    assert exposed("operator") == {urlparse(liveness).port}


def test_triton_image_is_built_on_ngc_triton() -> None:
    df = dockerfile("triton")
    assert df.base(df.final).startswith("nvcr.io/nvidia/tritonserver:")


# --- tests: the image's Python packages are enough for what it runs --------------------------


def model_py_imports() -> list[str]:
    """The modules model_repo/*/1/model.py import (Triton's own utilities left out)."""
    import ast

    out: set[str] = set()
    for path in sorted(REPO.glob("model_repo/*/1/model.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                out.add(node.module)
            elif isinstance(node, ast.Import):
                out |= {alias.name for alias in node.names}
    return sorted(
        m for m in out if m.split(".")[0] not in {"__future__", "triton_python_backend_utils"}
    )


def entry_targets(image: str) -> list[str]:
    """What the container runs, as import targets (``pkg.*``: every module of the package)."""
    if image == "gateway":
        command = dockerfile("gateway").final.command()
        return ["uvicorn", command[3], "feedserve.gateway.*"]
    if image == "featurizer":
        command = dockerfile("featurizer").final.command()
        consumer = rendered_containers()["event-consumer"]["command"][2]
        scripts: dict[str, str] = pyproject()["project"]["scripts"]
        return [
            "celery",
            f"{flag_value(command, '-A')}:app",
            f"{consumer}:main",
            "feedserve_featurizers.*",
            scripts["feedserve"],  # the offline Jobs: feedserve run offline STEP
            "feedserve.cli_workflow",
            "feedserve.workflow.*",
        ]
    if image == "operator":
        scripts = pyproject()["project"]["scripts"]
        return ["kopf", "kubernetes", scripts["feedserve"], "feedserve_operator.*"]
    assert image == "triton"
    return [*model_py_imports(), "feedserve.models.*"]


def distribution_closure(requirements: list[Requirement]) -> set[str]:
    """Canonical names of the distributions pip installs for ``requirements``: their
    transitive requirements, read from the metadata of this environment's installs."""
    names: set[str] = {"pip", "setuptools"}  # what `python -m venv` seeds (3.11)
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = list(requirements)
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        key = (name, frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        names.add(name)
        try:
            specs = importlib.metadata.requires(req.name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for spec in specs:
            sub = Requirement(spec)
            marker: Marker | None = sub.marker
            if marker is None or any(marker.evaluate({"extra": e}) for e in ("", *req.extras)):
                todo.append(sub)
    return names


def image_site_packages(dest: Path, names: set[str]) -> list[str]:
    """Symlink into ``dest`` what the distributions ``names`` installed here (packages,
    modules, .pth files, dist-info); returns the names not installed in this environment.
    feedserve itself comes from the source tree (its dist-info only)."""
    missing: list[str] = []
    dest.mkdir(parents=True)
    for name in sorted(names):
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
            continue
        files = dist.files
        if files is None:
            missing.append(name)
            continue
        for file in files:
            parts = PurePosixPath(str(file)).parts
            if not parts or parts[0] in ("..", "__pycache__"):
                continue
            top = parts[0]
            if name == "feedserve" and not top.endswith(".dist-info"):
                continue
            source = Path(str(dist.locate_file(top)))
            target = dest / top
            if source.is_dir() and not (source / "__init__.py").exists() and len(parts) > 2:
                # a namespace directory shared by distributions: link only this one's part
                target.mkdir(exist_ok=True)
                source, target = source / parts[1], target / parts[1]
            if not target.exists() and not target.is_symlink() and source.exists():
                target.symlink_to(source)
    return missing


PROBE = r"""
import importlib, json, pkgutil, site, sys
site_dir, source_dirs, targets = json.loads(sys.argv[1])
sys.path[1:1] = source_dirs
site.addsitedir(site_dir)
failures = {}

def record(name):
    exc = sys.exc_info()[1]
    failures[name] = f"{type(exc).__name__}: {exc}"

for target in targets:
    try:
        if target.endswith(".*"):
            package = importlib.import_module(target[:-2])
            for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".", record):
                try:
                    importlib.import_module(info.name)
                except Exception:
                    record(info.name)
        else:
            module, _, attribute = target.partition(":")
            obj = importlib.import_module(module)
            if attribute:
                getattr(obj, attribute)
    except Exception:
        record(target)
print(json.dumps(failures))
"""


EXTRA_ONLY_MODULES: dict[str, str] = {
    # the KServe transformer (operator: inference.kserve.transformer) needs the kserve extra:
    # the documented FEEDSERVE_EXTRAS=featurizer,kserve build
    "feedserve_featurizers.kserve_transformer": "kserve",
    # a featurizers.backend: dali pool: FEEDSERVE_EXTRAS=featurizer,dali (README)
    "feedserve_featurizers.dali_backend": "dali",
}
"""Modules of a package an image imports only when it is built with the named extra."""


@pytest.mark.parametrize(
    ("image", "extras", "more"),
    [
        ("gateway", None, []),
        ("featurizer", None, []),
        # the embed_posts offline Job needs the models extra: the documented build-arg
        ("featurizer", {"featurizer", "models"}, ["feedserve.release"]),
        ("featurizer", {"featurizer", "kserve"}, ["feedserve_featurizers.kserve_transformer:main"]),
        ("operator", None, []),
        ("triton", None, []),
    ],
    ids=["gateway", "featurizer", "featurizer+models", "featurizer+kserve", "operator", "triton"],
)
def test_installed_distributions_import_what_the_container_runs(
    image: str, extras: set[str] | None, more: list[str], tmp_path: Path
) -> None:
    requirements = project_requirements(extras or installed_extras(image))
    requirements += [Requirement(r) for r in side_requirements(image)]
    names = distribution_closure(requirements) | {"feedserve"}
    site_dir = tmp_path / "site-packages"
    missing = image_site_packages(site_dir, names)
    sources = [
        str(REPO / d) for d in pyproject()["tool"]["setuptools"]["packages"]["find"]["where"]
    ]
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    proc = subprocess.run(
        [
            sys.executable, "-E", "-S", "-B", "-c", PROBE,
            json.dumps([str(site_dir), sources, entry_targets(image) + more]),
        ],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    failures: dict[str, str] = json.loads(proc.stdout.strip().splitlines()[-1])
    built_with = extras or installed_extras(image)
    for module, extra in EXTRA_ONLY_MODULES.items():
        if extra not in built_with:
            failures.pop(module, None)
    assert not failures, (
        f"{image} (extras {sorted(extras or installed_extras(image))}): cannot import "
        f"{json.dumps(failures, indent=2)}\nnot installed in this environment: {missing}"
    )


# --- tests: the Makefile's images target -----------------------------------------------------


def make_images(tmp_path: Path, docker_info_rc: int | None) -> tuple[str, list[list[str]]]:
    """Run `make images` with only a stand-in `docker` on PATH (none when ``docker_info_rc``
    is None; else `docker info` exits with it and `docker build` only records its arguments).
    Returns the output and the recorded docker calls."""
    make = shutil.which("make")
    sed = shutil.which("sed")
    assert make is not None and sed is not None, "make and sed are needed"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "sed").symlink_to(sed)  # $(shell sed ...) reads the package version
    log = tmp_path / "docker-calls"
    if docker_info_rc is not None:
        docker = bindir / "docker"
        docker.write_text(
            "#!/bin/sh\n"
            f'printf "%s\\n" "$*" >> "{log}"\n'
            f'if [ "$1" = info ]; then exit {docker_info_rc}; fi\n'
            "exit 0\n"
        )
        docker.chmod(docker.stat().st_mode | stat.S_IXUSR)
    proc = subprocess.run(
        [make, "--no-print-directory", "-C", str(REPO), "images"],
        capture_output=True, text=True, env={"PATH": str(bindir), "HOME": str(tmp_path)},
        timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = [shlex.split(line) for line in log.read_text().splitlines()] if log.exists() else []
    return proc.stdout, calls


def test_make_images_skips_without_docker(tmp_path: Path) -> None:
    out, calls = make_images(tmp_path, None)
    assert "skipped" in out
    assert calls == []


def test_make_images_skips_when_no_engine_answers(tmp_path: Path) -> None:
    out, calls = make_images(tmp_path, 1)
    assert "skipped" in out
    assert calls == [["info"]], "docker was asked more than `docker info`"


def test_make_images_builds_the_images_the_operator_and_chart_name(tmp_path: Path) -> None:
    _, calls = make_images(tmp_path, 0)
    builds = [c for c in calls if c[:1] == ["build"]]
    built: dict[str, str] = {}
    for call in builds:
        assert call[-1] == ".", f"the build context is not the repository root: {call}"
        dockerfile_path, tag = flag_value(call, "-f"), flag_value(call, "-t")
        assert dockerfile_path is not None and tag is not None
        assert (REPO / dockerfile_path).is_file(), dockerfile_path
        built[tag] = dockerfile_path
    version = feedserve.__version__
    assert built == {f"feedserve/{x}:{version}": f"ops/docker/{x}.Dockerfile" for x in IMAGES}
    # the images render.py's defaults name
    assert FeaturizerPool().image in built
    assert GatewaySpec().image in built
    assert InferencePool().image in built
    # the operator image the Helm chart deploys
    values_path = REPO / "charts" / "feedserve" / "values.yaml"
    if values_path.is_file():
        values = yaml.safe_load(values_path.read_text())
        chart = yaml.safe_load((values_path.parent / "Chart.yaml").read_text())
        image = values["operator"]["image"]
        assert f"{image['repository']}:{image.get('tag') or chart['appVersion']}" in built
