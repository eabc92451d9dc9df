"""The workflow spec: a feed pipeline as one graph of offline, nearline, online and remote steps.

A workflow file (YAML) names each step, the operation it runs (``op``), its mode, its typed
inputs and outputs, and how it behaves under a deadline (timeout, share of the request
deadline, fallback). The graph is derived from the data: a step depends on the steps that
produce its inputs (plus any named in ``after``). Everything here is pure: loading, checking
and planning, no I/O beyond reading the file. ``runner`` executes a checked workflow.

Modes:

- ``online``: computed in the gateway, in the request path, under the request deadline;
- ``remote``: computed in the request path by an external Open Inference Protocol v2 endpoint
  (KServe, Triton) instead of a local implementation of the same op;
- ``offline``: computed by a batch job over every key (``feedserve run offline STEP``; a
  Kubernetes Job, or a CronJob when the step has a ``schedule``);
- ``nearline``: computed by stream consumers in the featurizer pool within seconds of a
  triggering event (``trigger``);
- ``offline+nearline``: precomputed by the batch job and refreshed by the stream consumers.

Offline and nearline results are *materialized*: online steps read them (a lookup by
``key``) and never wait for their computation. On a miss (a key never computed, e.g. a new
member) the online side computes the value itself (``on_miss: compute``) or uses the step's
fallback (``on_miss: fallback``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

NAME = r"^[a-z][a-z0-9_]{0,62}$"
CRON_FIELD = re.compile(r"^[0-9*/,\-]+$")


class Mode(StrEnum):
    online = "online"
    remote = "remote"
    offline = "offline"
    nearline = "nearline"
    offline_nearline = "offline+nearline"

    @property
    def in_request(self) -> bool:
        """Computed in the request path (the gateway waits for it)."""
        return self in (Mode.online, Mode.remote)

    @property
    def materialized(self) -> bool:
        """Computed ahead of the request and stored; the request path only reads it."""
        return not self.in_request

    @property
    def batch(self) -> bool:
        return self in (Mode.offline, Mode.offline_nearline)

    @property
    def streaming(self) -> bool:
        return self in (Mode.nearline, Mode.offline_nearline)


@dataclass(frozen=True)
class ValueType:
    name: str
    description: str
    materializable: bool = False
    """Can be stored by key (a vector in the feature store) for online lookups."""
    held_by_model: bool = False
    """Materialized inside a served model (e.g. the post index in Triton): the online side
    holds no copy, it reaches it through the step that consumes it."""


VALUE_TYPES: dict[str, ValueType] = {
    t.name: t
    for t in (
        ValueType("MemberId", "a member id"),
        ValueType("Session", "what the client knows about the current session (none offline)"),
        ValueType("Timestamp", "unix time in seconds"),
        ValueType("Count", "how many posts the caller asked for"),
        ValueType(
            "MemberFeatures",
            "a hydrated member: prompt token ids, ranker history tensors, seen and blocked "
            "ids, network/popular/fresh candidate ids",
        ),
        ValueType("PromptTokens", "token ids of the member prompt (empty without a profile)"),
        ValueType("Embedding", "a float32 vector (none when there is nothing to embed)", True),
        ValueType(
            "PostIndex",
            "every post's embedding, served by the post_index model",
            materializable=True,
            held_by_model=True,
        ),
        ValueType("Candidates", "(post id, score) pairs from one candidate source, best first"),
        ValueType("CandidateSet", "merged, deduplicated candidates with the sources of each"),
        ValueType("PostMeta", "author, format and topic of each candidate post"),
        ValueType("Scores", "candidate post ids in ranked order with a score each"),
        ValueType("Page", "the post ids of the feed page, in order"),
    )
}


class RemoteSpec(BaseModel):
    """How a ``remote`` step reaches its Open Inference Protocol v2 endpoint."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        min_length=1, description="endpoint base, e.g. http://kserve-host or 127.0.0.1:8001"
    )
    model: str = Field(default="", description="model name there; default: the op's model")
    version: str = Field(default="", description="model version; empty = the server's choice")


class StepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME, description="unique step name")
    op: str = Field(default="", description="operation to run; default: the step name")
    mode: Mode = Field(default=Mode.online, description="where and when the step runs")
    description: str = ""
    inputs: dict[str, str] = Field(
        default_factory=dict, description="value name -> value type, each produced upstream"
    )
    outputs: dict[str, str] = Field(
        default_factory=dict, description="value name -> value type this step produces"
    )
    after: list[str] = Field(
        default_factory=list, description="steps to wait for besides the ones feeding inputs"
    )
    timeout_ms: int | None = Field(default=None, ge=1, le=600_000)
    deadline_share: float | None = Field(
        default=None, gt=0, le=1, description="at most this fraction of the request deadline"
    )
    fallback: dict[str, str] = Field(
        default_factory=dict,
        description="on failure or timeout: output -> 'empty' or one of the step's inputs; "
        "without a fallback a failure fails the request",
    )
    stage: str = Field(default="", description="latency-metric stage; default: the step name")
    key: str = Field(
        default="", description="offline/nearline: the workflow input that keys stored results"
    )
    on_miss: Literal["compute", "fallback"] = Field(
        default="compute",
        description="online read of a materialized result that is not stored yet",
    )
    trigger: Literal["engagements", "posts"] | None = Field(
        default=None, description="nearline: the event stream that refreshes the step"
    )
    schedule: str = Field(
        default="", description="offline: cron schedule of the batch job; empty = on demand"
    )
    remote: RemoteSpec | None = None
    batch_size: int = Field(default=64, ge=1, le=100_000, description="offline: keys per batch")

    @property
    def op_name(self) -> str:
        return self.op or self.name

    @property
    def stage_name(self) -> str:
        return self.stage or self.name


class WorkflowSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME)
    description: str = ""
    deadline_ms: int = Field(default=1000, ge=1, le=600_000, description="request deadline")
    inputs: dict[str, str] = Field(
        min_length=1, description="request inputs: value name -> value type"
    )
    outputs: list[str] = Field(
        min_length=1, description="values the caller reads from a finished run"
    )
    steps: list[StepSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> WorkflowSpec:
        seen: set[str] = set()
        for step in self.steps:
            if step.name in seen:
                raise ValueError(f"step name {step.name!r} is used twice")
            seen.add(step.name)
        return self


# --- op signatures (what each operation consumes and produces) ------------------------------


@dataclass(frozen=True)
class OpSignature:
    name: str
    inputs: Mapping[str, str]
    outputs: Mapping[str, str]
    modes: frozenset[Mode]
    description: str = ""
    variadic: str = ""
    """A value type the op also accepts any number of further inputs of (e.g. merge)."""
    optional: frozenset[str] = frozenset()
    """Inputs the op can do without."""
    remote: bool = False
    """The op can run on a remote endpoint (it maps its inputs to v2 tensors and back)."""


class WorkflowError(ValueError):
    """A workflow file is invalid; ``problems`` name the step each one is about."""

    def __init__(self, problems: list[str], source: str = "workflow") -> None:
        self.problems = problems
        super().__init__(f"{source} is invalid:\n" + "\n".join(f"  - {p}" for p in problems))


# --- the checked graph ------------------------------------------------------------------------


@dataclass(frozen=True)
class Workflow:
    """A validated workflow: the spec plus the derived graph."""

    spec: WorkflowSpec
    producer: Mapping[str, str]
    """value name -> the step producing it (request inputs map to ``""``)."""
    order: tuple[str, ...]
    """Every step in a dependency order (producers before consumers)."""

    @property
    def steps(self) -> dict[str, StepSpec]:
        return {s.name: s for s in self.spec.steps}

    def step(self, name: str) -> StepSpec:
        for s in self.spec.steps:
            if s.name == name:
                return s
        raise KeyError(f"no step named {name!r} in workflow {self.spec.name!r}")

    def deps(self, name: str) -> list[str]:
        """Steps ``name`` depends on: producers of its inputs, then ``after``."""
        step = self.step(name)
        out: list[str] = []
        for value in step.inputs:
            p = self.producer.get(value, "")
            if p and p not in out:
                out.append(p)
        out += [a for a in step.after if a not in out]
        return out

    def online_steps(self) -> list[str]:
        """Steps the request path runs or reads, in order."""
        return self.required(self.spec.outputs)

    def required(self, targets: Iterable[str], compute: Iterable[str] = ()) -> list[str]:
        """Steps a run for ``targets`` needs, in order: their producers, and upstream of every
        step that is executed (in-request steps and those in ``compute``), not merely read."""
        executed = set(compute)
        needed: set[str] = set()
        stack = [self.producer[v] for v in targets if self.producer.get(v)]
        while stack:
            name = stack.pop()
            if name in needed:
                continue
            needed.add(name)
            if self.step(name).mode.in_request or name in executed:
                stack += self.deps(name)
        return [n for n in self.order if n in needed]

    def closure(self, name: str) -> list[str]:
        """``name`` and every step upstream of it, in order (what a batch job evaluates)."""
        needed: set[str] = set()
        stack = [name]
        while stack:
            n = stack.pop()
            if n not in needed:
                needed.add(n)
                stack += self.deps(n)
        return [n for n in self.order if n in needed]

    def materialized_steps(self) -> list[str]:
        return [n for n in self.order if self.step(n).mode.materialized]

    def with_mode(self, step: str, mode: Mode) -> Workflow:
        """A copy with one step's mode switched (re-validated)."""
        steps = [
            s.model_copy(update={"mode": mode}) if s.name == step else s for s in self.spec.steps
        ]
        return check(self.spec.model_copy(update={"steps": steps}), source=self.spec.name)


def _cycle(graph: Mapping[str, list[str]]) -> list[str]:
    """One dependency cycle as a list of step names (empty when there is none)."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(n: str) -> list[str]:
        state[n] = 1
        path.append(n)
        for d in graph.get(n, []):
            if state.get(d) == 1:
                return [*path[path.index(d) :], d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        path.pop()
        state[n] = 2
        return []

    for n in graph:
        if n not in state:
            found = visit(n)
            if found:
                return found
    return []


def _topological(graph: Mapping[str, list[str]], names: Iterable[str]) -> list[str]:
    done: list[str] = []
    seen: set[str] = set()

    def visit(n: str) -> None:
        if n in seen:
            return
        seen.add(n)
        for d in graph.get(n, []):
            visit(d)
        done.append(n)

    for n in names:
        visit(n)
    return done


def check(
    spec: WorkflowSpec,
    signatures: Mapping[str, OpSignature] | None = None,
    source: str = "workflow",
) -> Workflow:
    """Validate ``spec`` against the op signatures; raises ``WorkflowError`` listing every
    problem, each naming its step."""
    if signatures is None:
        from feedserve.workflow.ops import OPS

        signatures = {name: o.signature for name, o in OPS.items()}
    problems: list[str] = []
    steps = {s.name: s for s in spec.steps}
    producer: dict[str, str] = {}
    types: dict[str, str] = {}
    for value, vtype in spec.inputs.items():
        if vtype not in VALUE_TYPES:
            problems.append(f"workflow input {value!r}: unknown type {vtype!r}")
        producer[value] = ""
        types[value] = vtype
    for step in spec.steps:
        for value, vtype in step.outputs.items():
            if vtype not in VALUE_TYPES:
                problems.append(f"step {step.name!r}: output {value!r} has unknown type {vtype!r}")
            if value in producer:
                other = producer[value] or "the workflow inputs"
                problems.append(
                    f"step {step.name!r}: output {value!r} is already produced by "
                    f"{other if other == 'the workflow inputs' else repr(other)}"
                )
                continue
            producer[value] = step.name
            types[value] = vtype

    graph: dict[str, list[str]] = {}
    for step in spec.steps:
        deps: list[str] = []
        for value, vtype in step.inputs.items():
            if value not in producer:
                problems.append(f"step {step.name!r}: input {value!r} is produced by no step")
                continue
            if types[value] != vtype:
                where = producer[value] or "workflow input"
                problems.append(
                    f"step {step.name!r}: input {value!r} is declared {vtype} but "
                    f"{where!r} produces {types[value]}"
                )
            if producer[value] and producer[value] not in deps:
                deps.append(producer[value])
        for a in step.after:
            if a not in steps:
                problems.append(f"step {step.name!r}: 'after' names unknown step {a!r}")
            elif a not in deps:
                deps.append(a)
        graph[step.name] = deps
        problems += _check_step(step, spec, steps, producer, types, signatures)

    cycle = _cycle(graph)
    if cycle:
        problems.append("dependency cycle: " + " -> ".join(cycle))
    for value in spec.outputs:
        if value not in producer:
            problems.append(f"workflow output {value!r} is produced by no step")
    if problems:
        raise WorkflowError(problems, source)
    order = tuple(_topological(graph, [s.name for s in spec.steps]))
    wf = Workflow(spec, producer, order)
    problems += _check_modes(wf, signatures)
    if problems:
        raise WorkflowError(problems, source)
    return wf


def _check_step(
    step: StepSpec,
    spec: WorkflowSpec,
    steps: Mapping[str, StepSpec],
    producer: Mapping[str, str],
    types: Mapping[str, str],
    signatures: Mapping[str, OpSignature],
) -> list[str]:
    problems: list[str] = []
    where = f"step {step.name!r}"
    sig = signatures.get(step.op_name)
    if sig is None:
        known = ", ".join(sorted(signatures))
        return [f"{where}: unknown op {step.op_name!r} (known: {known})"]
    if step.mode not in sig.modes and step.mode != Mode.remote:
        modes = ", ".join(sorted(m.value for m in sig.modes))
        problems.append(f"{where}: op {sig.name!r} cannot run {step.mode.value} (it runs: {modes})")
    for name, vtype in sig.inputs.items():
        if name not in step.inputs and name not in sig.optional:
            problems.append(f"{where}: op {sig.name!r} needs input {name!r} ({vtype})")
        elif name in step.inputs and step.inputs[name] != vtype:
            problems.append(
                f"{where}: op {sig.name!r} takes {name!r} as {vtype}, declared {step.inputs[name]}"
            )
    for name, vtype in step.inputs.items():
        if name not in sig.inputs and vtype != sig.variadic:
            problems.append(f"{where}: op {sig.name!r} takes no input {name!r} ({vtype})")
    if dict(step.outputs) != dict(sig.outputs):
        problems.append(
            f"{where}: op {sig.name!r} produces {dict(sig.outputs)}, declared {dict(step.outputs)}"
        )
    for out, source in step.fallback.items():
        if out not in step.outputs:
            problems.append(f"{where}: fallback names {out!r}, which is not an output")
        elif source != "empty":
            if source not in step.inputs:
                problems.append(
                    f"{where}: fallback for {out!r} must be 'empty' or one of the step's "
                    f"inputs, not {source!r}"
                )
            elif step.inputs[source] != step.outputs[out]:
                problems.append(
                    f"{where}: fallback {out!r} <- {source!r} mixes types "
                    f"{step.outputs[out]} and {step.inputs[source]}"
                )
    if step.fallback and set(step.fallback) != set(step.outputs):
        missing = sorted(set(step.outputs) - set(step.fallback))
        if missing:
            problems.append(f"{where}: fallback gives no value for {', '.join(missing)}")
    # mode-specific fields
    if step.mode == Mode.remote:
        if step.remote is None:
            problems.append(f"{where}: a remote step needs a 'remote' block (url, model)")
        if not sig.remote:
            problems.append(f"{where}: op {sig.name!r} has no remote (v2 tensor) form")
    if step.mode.materialized:
        if step.key and step.key not in spec.inputs:
            problems.append(f"{where}: key {step.key!r} is not a workflow input")
        for out, vtype in step.outputs.items():
            if not VALUE_TYPES.get(vtype, VALUE_TYPES["Page"]).materializable:
                problems.append(
                    f"{where}: {step.mode.value} output {out!r} ({vtype}) cannot be stored for "
                    "online reads; only Embedding and PostIndex can"
                )
        if step.on_miss == "fallback" and not step.fallback:
            problems.append(f"{where}: on_miss: fallback needs a 'fallback'")
        held = all(
            VALUE_TYPES.get(t, VALUE_TYPES["Page"]).held_by_model for t in step.outputs.values()
        )
        if step.on_miss == "compute" and Mode.online not in sig.modes and not held:
            problems.append(
                f"{where}: op {sig.name!r} cannot compute a miss online; set on_miss: fallback"
            )
        stored = [t for t in step.outputs.values() if t in VALUE_TYPES and t != "PostIndex"]
        if stored and not step.key:
            problems.append(f"{where}: mode {step.mode.value} stores {stored[0]}: it needs a 'key'")
    if step.mode.streaming and step.trigger is None:
        problems.append(f"{where}: mode {step.mode.value} needs a 'trigger' (engagements|posts)")
    if step.schedule and (
        len(step.schedule.split()) != 5
        or not all(CRON_FIELD.match(f) for f in step.schedule.split())
    ):
        problems.append(f"{where}: schedule {step.schedule!r} is not a 5-field cron expression")
    if step.trigger == "posts" and step.op_name != "embed_posts":
        problems.append(
            f"{where}: the 'posts' trigger drives the post indexer (op embed_posts) only"
        )
    if step.trigger == "engagements" and step.key and spec.inputs.get(step.key) != "MemberId":
        problems.append(f"{where}: engagement triggers refresh members; key must be a MemberId")
    return problems


def _check_modes(wf: Workflow, signatures: Mapping[str, OpSignature]) -> list[str]:
    """Mode rules: the request path never waits on a batch or stream computation, and what a
    batch or stream step needs upstream can run outside a request."""
    problems: list[str] = []
    for name in wf.order:
        step = wf.step(name)
        if step.mode.in_request:
            for a in step.after:
                if wf.step(a).mode.materialized:
                    problems.append(
                        f"step {name!r}: online steps never wait on {wf.step(a).mode.value} "
                        f"step {a!r} ('after' is not allowed; read its stored output instead)"
                    )
            continue
        for up in wf.closure(name)[:-1]:
            ustep = wf.step(up)
            sig = signatures[ustep.op_name]
            if not ({Mode.offline, Mode.nearline} & sig.modes):
                problems.append(
                    f"step {name!r} ({step.mode.value}) needs step {up!r}, whose op "
                    f"{sig.name!r} runs only in a request"
                )
        for value in _request_only_inputs(wf, name):
            problems.append(
                f"step {name!r} ({step.mode.value}) needs {value!r}, which exists only in a request"
            )
    return problems


BATCH_INPUT_TYPES = frozenset({"MemberId", "Timestamp", "Session", "Count"})
"""Request input types a batch or stream evaluation can supply (the key, the job's clock, no
session, the default count)."""


def _request_only_inputs(wf: Workflow, name: str) -> list[str]:
    out: list[str] = []
    for n in wf.closure(name):
        for value in wf.step(n).inputs:
            if wf.producer.get(value) == "" and wf.spec.inputs[value] not in BATCH_INPUT_TYPES:
                out.append(value)
    return out


# --- loading ----------------------------------------------------------------------------------


def parse(data: Any, source: str = "workflow") -> WorkflowSpec:
    """A spec from parsed YAML/JSON, with pydantic's errors rewritten to name the step."""
    try:
        return WorkflowSpec.model_validate(data)
    except ValidationError as exc:
        problems = []
        steps = data.get("steps") if isinstance(data, dict) else None
        for e in exc.errors():
            loc = list(e["loc"])
            where = ".".join(str(p) for p in loc) or "(top level)"
            if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int) and steps:
                try:
                    label = steps[loc[1]].get("name") or f"#{loc[1] + 1}"
                except (AttributeError, IndexError):
                    label = f"#{loc[1] + 1}"
                rest = ".".join(str(p) for p in loc[2:]) or "(step)"
                where = f"step {label!r}: {rest}"
            problems.append(f"{where}: {e['msg']}")
        raise WorkflowError(problems, source) from None


def load(path: Path | str, signatures: Mapping[str, OpSignature] | None = None) -> Workflow:
    """Read and check a workflow file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise WorkflowError([f"cannot read {path}: {exc.strerror}"], str(path)) from None
    except UnicodeDecodeError as exc:
        raise WorkflowError([f"not UTF-8 text: {exc}"], str(path)) from None
    except yaml.YAMLError as exc:
        raise WorkflowError([f"not valid YAML: {exc}"], str(path)) from None
    return check(parse(data, str(path)), signatures, str(path))


DEFAULT_WORKFLOW = Path(__file__).with_name("feed.yaml")
"""The feed pipeline ``make run`` serves."""


def set_mode_in_text(text: str, step: str, mode: Mode | str) -> str:
    """A workflow file's text with one step's ``mode:`` line changed (comments and layout
    kept): the one-line edit that moves a step between modes."""
    mode = Mode(mode)
    lines = text.splitlines(keepends=True)
    start = next(
        (
            i
            for i, ln in enumerate(lines)
            if re.match(rf"^\s*-\s+name:\s*{re.escape(step)}\s*$", ln)
        ),
        None,
    )
    if start is None:
        raise KeyError(f"no step {step!r} in the workflow text")
    indent = len(lines[start]) - len(lines[start].lstrip()) + 2
    for i in range(start + 1, len(lines)):
        ln = lines[i]
        if re.match(r"^\s*-\s+name:", ln) or (ln.strip() and len(ln) - len(ln.lstrip()) < indent):
            break
        m = re.match(r"^(\s*)mode:\s*\S+(.*)$", ln.rstrip("\n"))
        if m and len(m.group(1)) == indent:
            lines[i] = f"{m.group(1)}mode: {mode.value}{m.group(2)}\n"
            return "".join(lines)
    lines.insert(start + 1, f"{' ' * indent}mode: {mode.value}\n")
    return "".join(lines)


def load_default() -> Workflow:
    return load(DEFAULT_WORKFLOW)


def load_configured(path: Path | None) -> Workflow:
    """The workflow a process was configured with (``FEEDSERVE_WORKFLOW``), else the default."""
    return load(path) if path else load_default()
