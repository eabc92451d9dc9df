"""The ``feedserve`` command line."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Literal

if TYPE_CHECKING:
    from feedserve.models.gr_train import GRTrainConfig

import typer
from rich.console import Console
from rich.table import Table

from feedserve import __version__
from feedserve.cli_workflow import CLIError, run_app, workflow_app
from feedserve_operator.cli_autoscale import autoscale_app
from feedserve_operator.cli_operator import operator_app

app = typer.Typer(
    help="feedserve: a disaggregated inference platform for feed recommendation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
featurizer_app = typer.Typer(help="Featurizer pool processes.", no_args_is_help=True)
app.add_typer(featurizer_app, name="featurizer")
index_app = typer.Typer(help="The exhaustive post index.", no_args_is_help=True)
app.add_typer(index_app, name="index")
train_app = typer.Typer(help="Train models.", no_args_is_help=True)
app.add_typer(train_app, name="train")
app.add_typer(workflow_app, name="workflow")
app.add_typer(run_app, name="run")
app.add_typer(operator_app, name="operator")
app.add_typer(autoscale_app, name="autoscale")
console = Console(soft_wrap=True)  # long lines (the curl example) stay copy-pasteable
err = Console(stderr=True)


@app.command()
def version() -> None:
    """Print the feedserve version."""
    console.print(__version__)


@app.command("demo-data")
def demo_data(
    members: Annotated[int, typer.Option(min=2, help="number of members")] = 2000,
    posts: Annotated[int, typer.Option(min=1, help="number of posts")] = 5000,
    seed: Annotated[int, typer.Option(help="random seed (same seed, same files)")] = 7,
    days: Annotated[int, typer.Option(min=1, help="days of interactions")] = 30,
    out: Annotated[Path, typer.Option(help="output directory")] = Path("var/data"),
) -> None:
    """Generate the synthetic professional-network data set (docs/data-format.md)."""
    from feedserve.data.io import write_dataset
    from feedserve.data.synthetic import DemoConfig, generate

    start = time.perf_counter()
    try:
        cfg = DemoConfig(members=members, posts=posts, seed=seed, days=days)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    ds = generate(cfg, progress=True)
    write_dataset(ds, out)
    console.print(
        f"wrote {len(ds.members)} members, {len(ds.posts)} posts, "
        f"{len(ds.interactions)} interactions to {out} in {time.perf_counter() - start:.1f}s"
    )


@app.command()
def build(
    data: Annotated[Path, typer.Option(help="data set directory")] = Path("var/data"),
    out: Annotated[Path, typer.Option(help="artifacts directory")] = Path("var/artifacts"),
    epochs: Annotated[int, typer.Option(min=1, help="ranker training epochs")] = 8,
    seed: Annotated[int, typer.Option(help="training seed")] = 0,
    base_model: Annotated[
        Path | None,
        typer.Option(help="local Hugging Face encoder/decoder directory (default: MiniLM)"),
    ] = None,
    pooling: Annotated[
        str, typer.Option(help="mean (encoders) or last (last-token, for decoders)")
    ] = "mean",
) -> None:
    """Build bucket tables, the encoder, the post index snapshot and the ranker."""
    from feedserve.build import BuildOptions, build_artifacts

    if pooling not in ("mean", "last"):
        raise CLIError(f"--pooling must be mean or last, got {pooling!r}")
    if base_model is not None and not (base_model / "config.json").is_file():
        raise CLIError(f"--base-model {base_model} is not a Hugging Face model directory")
    opts = BuildOptions(
        ranker_epochs=epochs,
        seed=seed,
        base_model=base_model,
        pooling="last" if pooling == "last" else "mean",
    )
    start = time.perf_counter()
    manifest = build_artifacts(data, out, opts, log=console.print)
    console.print(f"artifacts in {out} ({time.perf_counter() - start:.0f}s): {manifest['timings']}")


@app.command()
def load(
    data: Annotated[Path, typer.Option(help="data set directory")] = Path("var/data"),
) -> None:
    """Replace the Redis feature store's contents (FEEDSERVE_REDIS_PREFIX) with a data set."""
    from feedserve.launcher import load_dataset
    from feedserve.settings import LauncherSettings

    s = LauncherSettings(data_dir=data)
    if s.embedded:
        raise CLIError("FEEDSERVE_REDIS_URL is not set: nothing to load into")
    n = load_dataset(s)
    console.print(
        f"loaded {data} ({n} interactions) into {s.redis_url} (prefix {s.redis_prefix!r})"
    )


@app.command()
def up(
    data: Annotated[Path, typer.Option(help="data set directory")] = Path("var/data"),
    artifacts: Annotated[Path, typer.Option(help="artifacts directory")] = Path("var/artifacts"),
    port: Annotated[int, typer.Option(help="gateway port")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="featurizer worker processes")] = 1,
    redis_url: Annotated[
        str | None,
        typer.Option(help="Redis URL; default: redis://127.0.0.1:6379/0 if it answers, else none"),
    ] = None,
    embedded: Annotated[bool, typer.Option(help="no Redis: in-process featurizer")] = False,
    monolith: Annotated[
        bool, typer.Option(help="one process: store, featurizer and models in the gateway")
    ] = False,
    workflow: Annotated[
        Path | None,
        typer.Option(help="feed workflow file (default: FEEDSERVE_WORKFLOW or feed.yaml)"),
    ] = None,
) -> None:
    """Start tritonserver, the featurizer pool and the gateway; Ctrl-C stops them all."""
    from feedserve.launcher import Ports, Stack, load_dataset
    from feedserve.settings import LauncherSettings
    from feedserve.store.redis_store import redis_answers

    for path, what in (
        (data / "manifest.json", "data set"),
        (artifacts / "manifest.json", "artifacts"),
    ):
        if not path.is_file():
            raise CLIError(f"no {what} at {path.parent}: run `make run` or `feedserve build` first")
    base = LauncherSettings()
    if workflow is not None:
        from feedserve.workflow.spec import load

        load(workflow)  # invalid: a clear error now, not a gateway that fails to start
        base = base.model_copy(update={"workflow": workflow.resolve()})
    from feedserve.settings import FeaturizerSettings
    from feedserve_featurizers.batch import BackendUnavailable, check_backend

    try:  # the featurizer (workers or in-process) would fail later with less to go on
        check_backend(FeaturizerSettings())
    except BackendUnavailable as exc:
        raise CLIError(str(exc)) from None
    url = (
        "" if embedded or monolith else (redis_url or base.redis_url or "redis://127.0.0.1:6379/0")
    )
    if url and not redis_answers(url):
        if redis_url:
            raise CLIError(f"Redis does not answer at {url}")
        console.print(f"[yellow]no Redis at {url}: embedded mode (in-process featurizer)[/]")
        url = ""
    settings = base.model_copy(
        update={
            "redis_url": url,
            "data_dir": data,
            "artifacts_dir": artifacts,
            "featurizer_workers": workers,
            "gateway_port": port,
            "monolith": monolith,
        }
    )
    if url:
        console.print(f"loading {data} into Redis at {url} (prefix {settings.redis_prefix!r})")
        load_dataset(settings)
    else:
        (artifacts / "nearline" / "post_embeddings.log").unlink(missing_ok=True)
    stack = Stack(
        settings,
        Ports.allocate(settings.host, gateway=port),
        on_progress=lambda m: console.print(f"[dim]{m}[/]"),
    )
    stop = threading.Event()

    def on_signal(_sig: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    started = time.perf_counter()
    with console.status("starting the stack…"):
        stack.start()
    mode = f"Redis {url}, {workers} Celery worker(s)" if url else "embedded (in-process featurizer)"
    if monolith:
        mode = "monolith (one process: store, featurizer and models in the gateway)"
    example = json.dumps({"member_id": 42, "count": 5})
    console.print(
        f"\n[bold green]feedserve is up[/] in {time.perf_counter() - started:.0f}s — {mode}\n"
        f"  gateway  {stack.gateway_url}   (OpenAPI docs: {stack.gateway_url}/docs)\n"
        f"  triton   http://{stack.triton_url}\n"
        f"  logs     {settings.runtime_dir}/logs\n"
        f"  workflow {settings.workflow or 'the packaged feed.yaml'} "
        "(`feedserve workflow show` draws it)\n\n"
        "Try:\n"
        f"  curl -s -X POST {stack.gateway_url}/v1/feed -H 'content-type: application/json' "
        f"-d '{example}'\n\n"
        "Ctrl-C stops everything."
    )
    try:
        while not stop.wait(1.0):
            dead = [p.name for p in stack.processes if not p.alive()]
            if dead:
                err.print(f"[red]{', '.join(dead)} exited; see {settings.runtime_dir}/logs[/]")
                break
    finally:
        console.print("stopping…")
        stack.stop()
        console.print("stopped.")


@index_app.command("build")
def index_build(
    encoder: Annotated[Path, typer.Option(help="encoder directory")] = Path(
        "var/artifacts/encoder"
    ),
    data: Annotated[
        Path | None,
        typer.Option(help="data set directory; default: every post in the Redis feature store"),
    ] = None,
    artifacts: Annotated[Path, typer.Option(help="artifacts (bucket tables)")] = Path(
        "var/artifacts"
    ),
    out: Annotated[Path, typer.Option(help="snapshot directory to write")] = Path("var/index"),
) -> None:
    """Embed the whole corpus in batches and write an index snapshot (the offline mode)."""
    from feedserve.release import index_with, load_corpus
    from feedserve.settings import LauncherSettings
    from feedserve_featurizers.hydrate import BUCKETS_FILE

    start = time.perf_counter()
    try:
        corpus = load_corpus(LauncherSettings(), data)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    space = index_with(encoder, artifacts / BUCKETS_FILE, corpus, out)
    console.print(
        f"indexed {len(corpus.posts)} posts into {out} (space {space}) "
        f"in {time.perf_counter() - start:.0f}s"
    )


@train_app.command("retrieval")
def train_retrieval_cmd(
    data: Annotated[Path, typer.Option(help="data set directory")] = Path("var/data"),
    artifacts: Annotated[Path, typer.Option(help="release to start from")] = Path("var/artifacts"),
    out: Annotated[Path | None, typer.Option(help="run directory")] = None,
    steps: Annotated[int, typer.Option(min=1, help="optimizer steps")] = 200,
    batch_size: Annotated[int, typer.Option(min=2)] = 32,
    lr: Annotated[float, typer.Option(min=0.0)] = 5e-5,
    temperature: Annotated[
        float | None, typer.Option(help="softmax temperature; omit to learn it")
    ] = None,
    hard_negatives: Annotated[int, typer.Option(min=0, help="mined negatives per pair")] = 1,
    freeze_layers: Annotated[int, typer.Option(min=0, help="frozen bottom layers")] = 4,
    seed: Annotated[int, typer.Option()] = 0,
    evaluate: Annotated[bool, typer.Option(help="compare base vs trained")] = True,
    export: Annotated[bool, typer.Option(help="export a new Triton model version")] = True,
    from_store: Annotated[
        bool, typer.Option(help="index every post in the Redis store (not the data set)")
    ] = False,
    runtime_dir: Annotated[Path, typer.Option(help="holds the runtime model repository")] = Path(
        "var/run"
    ),
    triton_url: Annotated[
        str | None, typer.Option(help="a running tritonserver to switch to the new version")
    ] = None,
) -> None:
    """Contrastive training of the retrieval encoder; exports encoder + index as a version."""
    from feedserve.models.retrieval import RetrievalTrainConfig
    from feedserve.release import activate, load_corpus, release_retrieval, train_demo_retrieval
    from feedserve.settings import LauncherSettings

    run_dir = out or Path("var/retrieval") / time.strftime("run-%Y%m%d-%H%M%S")
    cfg = RetrievalTrainConfig(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        temperature=temperature,
        hard_negatives=hard_negatives,
        freeze_layers=freeze_layers,
        seed=seed,
        checkpoint_every=max(steps // 4, 1),
    )
    outcome = train_demo_retrieval(data, artifacts, run_dir / "encoder", cfg, evaluate=evaluate)
    report = outcome.report
    console.print(
        f"trained {report.steps} steps on {report.pairs} pairs in {report.seconds:.0f}s: "
        f"loss {report.losses[0]:.3f} → {report.final_loss:.3f}, τ={report.temperature:.3f}"
    )
    if outcome.metrics:
        table = Table("encoder", *next(iter(outcome.metrics.values())).keys())
        for name, values in outcome.metrics.items():
            table.add_row(name, *(f"{v:.4f}" for v in values.values()))
        console.print(table)
    if not export:
        return
    settings = LauncherSettings(runtime_dir=runtime_dir)
    release = release_retrieval(
        run_dir / "encoder",
        artifacts,
        load_corpus(settings, None if from_store else data),
        run_dir,
        settings.model_repo,
        settings.runtime_model_repo,
    )
    console.print(
        f"exported retrieval_encoder and post_index version {release.version} "
        f"({release.posts} posts, space {release.space}) to {settings.runtime_model_repo}"
    )
    if triton_url:
        console.print(f"now serving: {activate(triton_url)}")


@train_app.command("ranker")
def train_ranker_cmd(
    data: Annotated[
        str, typer.Option(help="data set: ml-100k, ml-latest-small or demo")
    ] = "ml-100k",
    data_dir: Annotated[
        Path | None,
        typer.Option(help="data directory (default: ../shared/data for MovieLens, var/data)"),
    ] = None,
    model: Annotated[str, typer.Option(help="hstu (HSTU-style) or sasrec")] = "hstu",
    epochs: Annotated[int, typer.Option(min=0, help="training epochs")] = 10,
    seed: Annotated[int, typer.Option(help="training seed")] = 0,
    out: Annotated[Path | None, typer.Option(help="run directory (checkpoints)")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 128,
    lr: Annotated[float, typer.Option(min=0.0)] = 1e-3,
    negatives: Annotated[int, typer.Option(min=1, help="uniform negatives per position")] = 128,
    candidate_weight: Annotated[
        float | None,
        typer.Option(
            min=0.0, help="weight of the serving-path (candidate) loss [0.1; 1.0 with --export]"
        ),
    ] = None,
    max_len: Annotated[int, typer.Option(min=1, help="history length")] = 200,
    time_budget: Annotated[
        float | None, typer.Option(help="stop training after this many seconds")
    ] = None,
    device: Annotated[str, typer.Option(help="torch device")] = "cpu",
    export: Annotated[
        bool,
        typer.Option(
            help="demo only: train the served ranker (post content from --artifacts) and "
            "export it as a new generative_ranker version"
        ),
    ] = False,
    artifacts: Annotated[
        Path, typer.Option(help="release whose post index gives the content (--export)")
    ] = Path("var/artifacts"),
    runtime_dir: Annotated[Path, typer.Option(help="holds the runtime model repository")] = Path(
        "var/run"
    ),
    triton_url: Annotated[
        str | None, typer.Option(help="a running tritonserver to switch to the new version")
    ] = None,
) -> None:
    """Train the sequential ranker (HSTU-style or SASRec) and evaluate it by the reference
    protocol: leave-one-out, full ranking over every item, history filtered. With --export
    (demo data), train the served, content-aware ranker and export it as a Triton version."""
    from feedserve.data.sequences import DATASETS, load_sequences
    from feedserve.models.gr_eval import leave_one_out
    from feedserve.models.gr_train import GRTrainConfig, train_and_evaluate

    if data not in DATASETS:
        raise CLIError(f"--data must be one of {', '.join(DATASETS)}, got {data!r}")
    if model not in ("hstu", "sasrec"):
        raise CLIError(f"--model must be hstu or sasrec, got {model!r}")
    run_dir = out or Path("var/ranker") / time.strftime("run-%Y%m%d-%H%M%S")
    if export and data != "demo":
        raise CLIError("--export needs --data demo: only the platform's own posts are served")
    weight = (1.0 if export else 0.1) if candidate_weight is None else candidate_weight
    try:
        cfg = GRTrainConfig(
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            num_negatives=negatives,
            candidate_loss_weight=weight,
            max_len=max_len,
            seed=seed,
            device=device,
            time_budget_s=time_budget,
            checkpoint_every=0 if export else 1,
        )
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    if export:
        kind: Literal["hstu", "sasrec"] = "hstu" if model == "hstu" else "sasrec"
        root = data_dir or Path("var/data")
        _train_served_ranker(root, artifacts, run_dir, runtime_dir, triton_url, kind, cfg)
        return
    sequences = load_sequences(data, data_dir)
    split = leave_one_out(sequences)
    if split.n_users == 0:
        raise CLIError(f"{data}: no user has two or more interactions")
    console.print(f"{data}: {sequences.describe()}")
    try:
        run = train_and_evaluate(
            split,
            "hstu" if model == "hstu" else "sasrec",
            cfg,
            run_dir,
            n_actions=sequences.n_actions,
            progress=True,
        )
    except ValueError as exc:  # e.g. resuming a run dir trained with another config
        raise CLIError(str(exc)) from exc
    report = run.report
    title = f"{data}: leave-one-out, full ranking over {split.n_items} items"
    console.print(_metrics_table(title, run.metrics))
    (run_dir / "metrics.json").parent.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.json").write_text(
        json.dumps({"data": data, "model": model, "users": run.users, **run.metrics}, indent=2)
        + "\n"
    )
    console.print(
        f"trained {report.epochs} epochs ({report.steps} steps) in {report.seconds:.0f}s, "
        f"final loss {report.final_loss:.4f}; model and metrics in {run_dir}"
    )


def _metrics_table(title: str, metrics: dict[str, dict[str, float]]) -> Table:
    table = Table(title=title)
    names = list(next(iter(metrics.values())))
    table.add_column("model")
    for name in names:
        table.add_column(
            name.upper() if name == "mrr" else name.replace("hr", "HR"), justify="right"
        )
    for name, values in metrics.items():
        table.add_row(name, *(f"{values[m]:.4f}" for m in names))
    return table


def _train_served_ranker(
    data_dir: Path,
    artifacts: Path,
    run_dir: Path,
    runtime_dir: Path,
    triton_url: str | None,
    kind: Literal["hstu", "sasrec"],
    train: GRTrainConfig,
) -> None:
    """``train ranker --export``: the served ranker, trained, measured, exported."""
    from feedserve.data.sequences import demo_sequences
    from feedserve.models.gr_serving import (
        ServingRankerConfig,
        save_serving_ranker,
        train_serving_ranker,
    )
    from feedserve.models.post_table import PostEmbeddingTable
    from feedserve.release import activate, release_ranker
    from feedserve.settings import LauncherSettings

    if not (artifacts / "index").is_dir():
        raise CLIError(f"{artifacts / 'index'} is missing: run `feedserve build` first")
    cfg = ServingRankerConfig(kind=kind, train=train)
    sequences = demo_sequences(data_dir, include_impressions=False)
    console.print(f"demo (engagements): {sequences.describe()}")
    content = PostEmbeddingTable(artifacts / "index", None)
    try:
        ranker, report = train_serving_ranker(sequences, content, cfg, progress=True)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    ranker.model.to("cpu")
    quality = ranker.info.get("eval", {})
    metrics = {k: v for k, v in quality.items() if k in ("popularity", cfg.kind)}
    if metrics:
        title = f"served path, {quality['users']} held-out members, full ranking over every post"
        console.print(_metrics_table(title, metrics))
    save_serving_ranker(run_dir / "ranker", ranker)
    (run_dir / "metrics.json").write_text(
        json.dumps({"data": "demo", "model": cfg.kind, **quality}, indent=2) + "\n"
    )
    console.print(
        f"trained {report.epochs} epochs ({report.steps} steps) in {report.seconds:.0f}s, "
        f"final loss {report.final_loss:.4f}"
    )
    settings = LauncherSettings(runtime_dir=runtime_dir)
    version = release_ranker(run_dir / "ranker", settings.model_repo, settings.runtime_model_repo)
    console.print(f"exported generative_ranker version {version} to {settings.runtime_model_repo}")
    if triton_url:
        console.print(f"now serving: {activate(triton_url, ('generative_ranker',))}")


@featurizer_app.command("consume")
def featurizer_consume() -> None:
    """Run the nearline engagement-event consumer until SIGTERM/Ctrl-C."""
    from feedserve_featurizers.consumer import main as consumer_main

    consumer_main()


def main() -> None:
    from feedserve.data.io import DatasetError
    from feedserve.launcher import StartupError
    from feedserve.workflow.spec import WorkflowError

    try:
        app()
    except (CLIError, DatasetError, StartupError, FileNotFoundError, WorkflowError) as exc:
        err.print(f"[red]error:[/] {exc}")
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
