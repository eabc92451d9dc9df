"""``feedserve workflow …`` (show, check, jobs) and ``feedserve run offline STEP``."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
import yaml
from rich.console import Console

from feedserve.workflow.spec import Mode, Workflow, WorkflowError, load_configured

if TYPE_CHECKING:
    from feedserve.settings import FeaturizerSettings
    from feedserve.workflow.runner import BatchReport

workflow_app = typer.Typer(help="The feed workflow: steps, modes, graph.", no_args_is_help=True)
run_app = typer.Typer(help="Run workflow steps outside the request path.", no_args_is_help=True)
console = Console(soft_wrap=True)


class CLIError(Exception):
    """An expected failure: printed as one line, no traceback."""


WorkflowFile = Annotated[
    Path | None,
    typer.Argument(help="workflow file; default: FEEDSERVE_WORKFLOW or the packaged feed.yaml"),
]
ModeOverride = Annotated[
    list[str] | None,
    typer.Option(
        "--mode",
        help="STEP=MODE, e.g. embed_member=offline+nearline (repeatable)",
        show_default=False,
    ),
]


def _load(path: Path | None, overrides: list[str] | None = None) -> Workflow:
    from feedserve.settings import CommonSettings

    wf = load_configured(path or CommonSettings().workflow)
    for item in overrides or []:
        step, _, mode = item.partition("=")
        try:
            wf = wf.with_mode(step.strip(), Mode(mode.strip()))
        except ValueError as exc:
            if isinstance(exc, WorkflowError):
                raise
            modes = ", ".join(m.value for m in Mode)
            raise CLIError(
                f"--mode {item!r}: expected STEP=MODE with MODE one of {modes}"
            ) from None
        except KeyError as exc:
            raise CLIError(str(exc.args[0])) from None
    return wf


@workflow_app.command("show")
def show(
    path: WorkflowFile = None,
    out: Annotated[
        Path | None, typer.Option(help="also draw the graph to this .png or .svg file")
    ] = None,
    mode: ModeOverride = None,
) -> None:
    """Print the workflow's steps, modes and request path; draw it with --out."""
    wf = _load(path, mode)
    console.print(render_text(wf), highlight=False, markup=False)
    if out is not None:
        if out.suffix.lower() not in (".png", ".svg"):
            raise CLIError(f"--out {out}: use a .png or .svg file name")
        from feedserve.workflow.render import draw

        console.print(f"drew {draw(wf, out)}")


def render_text(wf: Workflow) -> str:
    from feedserve.workflow.render import to_text

    return to_text(wf)


@workflow_app.command("check")
def check(path: Annotated[Path, typer.Argument(help="workflow file to validate")]) -> None:
    """Validate a workflow file; every problem is listed with the step it is about."""
    wf = _load(path)
    online = len(wf.online_steps())
    console.print(f"{path}: ok ({len(wf.spec.steps)} steps, {online} on the request path)")


@workflow_app.command("jobs")
def jobs(
    path: WorkflowFile = None,
    pipeline: Annotated[str, typer.Option(help="FeedPipeline name")] = "feed",
    namespace: Annotated[str, typer.Option()] = "default",
    image: Annotated[str, typer.Option(help="featurizer image")] = "feedserve/featurizer:latest",
    mode: ModeOverride = None,
) -> None:
    """Print the Kubernetes Jobs/CronJobs of the offline steps (what the operator applies)."""
    from feedserve.workflow.jobs import offline_jobs

    wf = _load(path, mode)
    manifests = offline_jobs(wf, pipeline=pipeline, namespace=namespace, image=image)
    if not manifests:
        console.print("# no offline steps in this workflow")
    sys.stdout.write(yaml.safe_dump_all(manifests, sort_keys=False))


@run_app.command("offline")
def run_offline(
    step: Annotated[str, typer.Argument(help="an offline step, e.g. embed_member")],
    workflow: Annotated[Path | None, typer.Option(help="workflow file")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="only the first N keys")] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=256)] = 8,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
    out: Annotated[
        Path, typer.Option(help="embed_posts: the index snapshot directory to write")
    ] = Path("var/index"),
) -> None:
    """Compute an offline step for every key (every member) and store the results."""
    from feedserve.settings import FeaturizerSettings

    settings = FeaturizerSettings()
    wf = _load(workflow or settings.workflow)
    try:
        spec = wf.step(step)
    except KeyError:
        raise CLIError(f"no step {step!r}; steps: {', '.join(wf.order)}") from None
    if not spec.mode.batch:
        raise CLIError(
            f"step {step!r} runs {spec.mode.value}; set its mode to offline or offline+nearline "
            "in the workflow file to run it as a batch job"
        )
    if spec.op_name == "embed_posts":  # the post index: re-embed every stored post
        from feedserve.cli import index_build

        artifacts = Path(settings.artifacts_dir)
        index_build(encoder=artifacts / "encoder", data=None, artifacts=artifacts, out=out)
        return
    if settings.embedded:
        raise CLIError(
            "offline jobs write to the shared feature store: set FEEDSERVE_REDIS_URL "
            "(in embedded mode the gateway computes misses itself)"
        )
    report = asyncio.run(_run_offline(settings, wf, step, limit, concurrency, progress))
    rate = report.done / report.seconds if report.seconds else 0.0
    console.print(
        f"{step}: stored {report.stored} value(s) for {report.done} key(s) in "
        f"{report.seconds:.1f}s ({rate:.1f}/s); {report.failed} failed"
    )
    if report.failed:
        for line in report.errors:
            console.print(f"  {line}")
        raise CLIError(f"{report.failed} key(s) failed")


async def _run_offline(
    settings: FeaturizerSettings,
    wf: Workflow,
    step: str,
    limit: int | None,
    concurrency: int,
    progress: bool,
) -> BatchReport:
    from tqdm import tqdm

    from feedserve.triton_client import AsyncTritonClient
    from feedserve.workflow.ops import OpContext
    from feedserve.workflow.runner import RemoteClients, Runner
    from feedserve_featurizers import hydrate
    from feedserve_featurizers.client import InProcessFeaturizer

    ctx = await asyncio.to_thread(hydrate.FeaturizerContext.load, settings)
    keys = await asyncio.to_thread(ctx.store.member_ids)
    keys = keys[:limit] if limit else keys
    triton = AsyncTritonClient(settings.triton_url, 30.0)
    remote = RemoteClients(30.0)
    try:
        featurizer = InProcessFeaturizer(ctx, triton, embedding_log=None)
        runner = Runner(wf, OpContext(featurizer, triton, ctx.store, remote=remote))
        with tqdm(total=len(keys), desc=step, unit="key", disable=not progress) as bar:
            return await runner.compute_keys(
                step, keys, concurrency=concurrency, on_done=bar.update
            )
    finally:
        await remote.close()
        await triton.close()
