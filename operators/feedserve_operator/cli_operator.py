"""``feedserve operator``: what the operator would apply, offline (no cluster needed).

- ``render -f FILE [-f FILE ...]``: reads FeedPipeline and FeedModel documents (multi-document
  YAML allowed), checks each against the CRD schema and the spec model, and prints the
  manifests the operator would apply (a pipeline's children, a model's config) as
  multi-document YAML. A FeedModel of a pipeline in the same input whose inference pool runs
  on KServe also shows in its model's InferenceService (version and canary traffic). An
  invalid document: one line per problem on stderr, naming the file, the document and the
  field; exit code 2.
- ``crds [--out DIR]``: prints the generated CustomResourceDefinitions, or writes them.
- ``run``: the operator itself (kopf): in a pod with its service account, or against
  ``--server`` (e.g. ``kubectl proxy``) for development.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from pydantic import ValidationError

from feedserve.workflow.spec import WorkflowError
from feedserve_operator import crds, render_kserve
from feedserve_operator.render import render_model, render_pipeline
from feedserve_operator.spec import API_VERSION, FeedModelSpec, FeedPipelineSpec

operator_app = typer.Typer(
    name="operator",
    help="The Kubernetes operator: run it, or render its manifests and CRDs offline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_all(objs: list[dict[str, Any]]) -> str:
    return yaml.dump_all(objs, Dumper=_NoAliases, sort_keys=False, width=100)


class InvalidDocument(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _documents(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidDocument([f"{path}: cannot read: {exc.strerror}"]) from None
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise InvalidDocument([f"{path}: not valid YAML: {detail}"]) from None
    number = 0
    for doc in docs:
        if doc is None:
            continue
        number += 1
        yield f"{path} document {number}", doc


def _pydantic_problems(where: str, exc: ValidationError) -> list[str]:
    out = []
    for e in exc.errors():
        field = ".".join(str(p) for p in ("spec", *e["loc"]))
        out.append(f"{where}: {field}: {e['msg']}")
    return out


def render_document(where: str, doc: Any, namespace: str) -> list[dict[str, Any]]:
    """The manifests for one FeedPipeline/FeedModel document; ``InvalidDocument`` naming the
    document and the field when it is not valid."""
    if not isinstance(doc, Mapping):
        raise InvalidDocument([f"{where}: expected a mapping, got {type(doc).__name__}"])
    kind = doc.get("kind")
    if kind not in crds.KINDS:
        raise InvalidDocument(
            [f"{where}: kind: expected one of {', '.join(crds.KINDS)}, got {kind!r}"]
        )
    raw_meta = doc.get("metadata")
    meta: Mapping[str, Any] = raw_meta if isinstance(raw_meta, Mapping) else {}
    name = str(meta.get("name") or "")
    label = f"{where} ({kind} {name or '?'})"
    schema_problems = [f"{label}: {p}" for p in crds.validate(str(kind), doc)]
    problems: list[str] = []
    if "apiVersion" not in doc:
        problems.append(f"{label}: apiVersion: Required value (must be {API_VERSION})")
    if not name:
        problems.append(f"{label}: metadata.name: Required value")
    model = FeedPipelineSpec if kind == "FeedPipeline" else FeedModelSpec
    try:
        spec = model.model_validate(doc.get("spec") or {})
    except ValidationError as exc:
        # the spec model is the source of truth: its messages for spec fields, the schema's
        # for the rest of the object
        problems += _pydantic_problems(label, exc)
        schema_problems = [p for p in schema_problems if not p.startswith(f"{label}: spec")]
    problems += schema_problems
    if problems:
        raise InvalidDocument(problems)
    ns = str(meta.get("namespace") or namespace)
    if isinstance(spec, FeedPipelineSpec):
        try:
            return render_pipeline(name, ns, spec)
        except WorkflowError as exc:
            raise InvalidDocument([f"{label}: spec.workflow: {p}" for p in exc.problems]) from None
    assert isinstance(spec, FeedModelSpec)
    return render_model(name, ns, spec)


@operator_app.command()
def render(
    files: Annotated[
        list[Path],
        typer.Option("--file", "-f", help="FeedPipeline/FeedModel YAML (repeatable)"),
    ],
    namespace: Annotated[
        str, typer.Option("--namespace", "-n", help="for documents that name none")
    ] = "default",
) -> None:
    """Print the manifests the operator would apply for these custom resources."""
    out: list[dict[str, Any]] = []
    problems: list[str] = []
    models: list[tuple[str, FeedModelSpec]] = []
    for path in files:
        try:
            for where, doc in _documents(path):
                try:
                    out += render_document(where, doc, namespace)
                except InvalidDocument as exc:
                    problems += exc.problems
                    continue
                if doc.get("kind") == "FeedModel":
                    ns = str((doc.get("metadata") or {}).get("namespace") or namespace)
                    models.append((ns, FeedModelSpec.model_validate(doc.get("spec") or {})))
        except InvalidDocument as exc:
            problems += exc.problems
    if problems:
        for p in problems:
            typer.echo(f"error: {p}", err=True)
        raise typer.Exit(2)
    typer.echo(dump_all(render_kserve.with_models(out, models)), nl=False)


@operator_app.command("crds")
def crds_command(
    out: Annotated[
        Path | None, typer.Option("--out", help="write one YAML file per CRD into DIR")
    ] = None,
) -> None:
    """Print (or write) the generated CustomResourceDefinitions."""
    if out is None:
        typer.echo("---\n".join(crds.to_yaml(c) for c in crds.all_crds()), nl=False)
        return
    for path in crds.write(out):
        typer.echo(f"wrote {path}")


@operator_app.command("run")
def run_command(
    namespaces: Annotated[
        list[str] | None,
        typer.Option("--namespace", "-n", help="namespace (pattern) to watch; repeatable"),
    ] = None,
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="watch the whole cluster")
    ] = False,
    server: Annotated[
        str | None,
        typer.Option(help="API server URL without auth (kubectl proxy); default: in-cluster"),
    ] = None,
    liveness: Annotated[
        str | None, typer.Option(help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    ] = None,
) -> None:
    """Run the operator until SIGTERM/SIGINT (settings: FEEDSERVE_OPERATOR_* variables)."""
    if not namespaces and not all_namespaces:
        typer.echo("error: name a --namespace or pass --all-namespaces", err=True)
        raise typer.Exit(2)
    try:
        import kopf
    except ImportError:
        typer.echo("error: the operator needs kopf: pip install 'feedserve[operator]'", err=True)
        raise typer.Exit(2) from None
    import asyncio
    import logging

    from feedserve_operator.handlers import Operator, OperatorSettings, register
    from feedserve_operator.kube import KubeApi

    registry = kopf.OperatorRegistry()
    if server is not None:
        url = server

        @kopf.on.login(registry=registry)
        def login(**_: Any) -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(server=url)

    register(registry, Operator(KubeApi(server) if server else None, OperatorSettings()))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = kopf.OperatorSettings()
    # exact namespace names need no cluster-wide listing of namespaces and CRDs (least
    # privilege: a Role per namespace is enough); patterns and -A do
    exact = not all_namespaces and not any(set(ns) & set("*?[]!") for ns in namespaces or ())
    settings.scanning.disabled = exact
    asyncio.run(
        kopf.operator(
            registry=registry,
            settings=settings,
            clusterwide=all_namespaces,
            namespaces=namespaces or (),
            liveness_endpoint=liveness,
            standalone=True,
        )
    )
