"""Showing a workflow: a text table and a layered drawing (PNG or SVG, by file suffix)."""

from __future__ import annotations

from pathlib import Path

from feedserve.workflow.spec import Mode, Workflow

MODE_COLOURS = {
    Mode.online: "#4C72B0",
    Mode.remote: "#8172B2",
    Mode.offline: "#937860",
    Mode.nearline: "#55A868",
    Mode.offline_nearline: "#C49A2C",
}


def layers(wf: Workflow) -> dict[str, int]:
    """Depth of each step: 0 for steps fed only by request inputs, else 1 + deepest producer."""
    depth: dict[str, int] = {}
    for name in wf.order:
        deps = wf.deps(name)
        depth[name] = 1 + max((depth[d] for d in deps), default=-1)
    return depth


def _budget(wf: Workflow, name: str) -> str:
    step = wf.step(name)
    parts = []
    if step.timeout_ms is not None:
        parts.append(f"{step.timeout_ms} ms")
    if step.deadline_share is not None:
        parts.append(f"{step.deadline_share:.0%} of {wf.spec.deadline_ms} ms")
    return ", ".join(parts) or "-"


def _when(wf: Workflow, name: str) -> str:
    step = wf.step(name)
    if step.mode == Mode.remote and step.remote is not None:
        return f"remote {step.remote.url}"
    bits = []
    if step.mode.batch:
        bits.append(f"job {step.schedule!r}" if step.schedule else "job on demand")
    if step.mode.streaming:
        bits.append(f"on {step.trigger}")
    if step.mode.materialized and step.key:
        bits.append(f"by {step.key}, miss: {step.on_miss}")
    return "; ".join(bits) or "in request"


def to_text(wf: Workflow) -> str:
    """One line per step in dependency order: mode, when it runs, what it needs and makes."""
    spec = wf.spec
    online = set(wf.online_steps())
    lines = [
        f"workflow {spec.name!r}: {spec.description}".rstrip(": "),
        f"request inputs: {', '.join(f'{k}: {v}' for k, v in spec.inputs.items())}",
        f"deadline: {spec.deadline_ms} ms; outputs: {', '.join(spec.outputs)}",
        "",
    ]
    header = ("step", "mode", "runs", "needs", "makes", "budget", "fallback")
    rows = []
    for name in wf.order:
        step = wf.step(name)
        needs = ", ".join(step.inputs) or "-"
        makes = ", ".join(f"{k}: {v}" for k, v in step.outputs.items())
        fallback = ", ".join(f"{k} <- {v}" for k, v in step.fallback.items()) or "-"
        mark = "" if name in online or step.mode.materialized else " (unused)"
        rows.append(
            (
                name + mark,
                step.mode.value,
                _when(wf, name),
                needs,
                makes,
                _budget(wf, name),
                fallback,
            )
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    lines.append("")
    lines.append("request path (concurrent within a layer):")
    depth = layers(wf)
    for level in sorted({depth[n] for n in online}):
        names = [n for n in wf.order if n in online and depth[n] == level]
        lines.append(f"  {level}: " + " | ".join(f"{n} [{wf.step(n).mode.value}]" for n in names))
    return "\n".join(lines)


def draw(wf: Workflow, out: Path) -> Path:
    """Draw the graph left to right by layer, boxes coloured by mode (PNG or SVG by suffix)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch

    depth = layers(wf)
    columns: dict[int, list[str]] = {}
    for name in wf.order:
        columns.setdefault(depth[name], []).append(name)
    n_cols = max(columns) + 1
    n_rows = max(len(v) for v in columns.values())
    pos = {}
    for col, names in columns.items():
        for i, name in enumerate(names):
            pos[name] = (col * 3.0, (n_rows - 1) / 2 - i + (len(names) - 1) / 2 - (n_rows - 1) / 2)
    fig, ax = plt.subplots(figsize=(max(8.0, 2.6 * n_cols), max(4.0, 1.1 * n_rows + 1.5)))
    box_w, box_h = 2.3, 0.7
    for name, (x, y) in pos.items():
        step = wf.step(name)
        ax.add_patch(
            FancyBboxPatch(
                (x - box_w / 2, y - box_h / 2), box_w, box_h,
                boxstyle="round,pad=0.05", fc=MODE_COLOURS[step.mode], ec="black", alpha=0.9,
            )
        )  # fmt: skip
        ax.text(x, y + 0.1, name, ha="center", va="center", fontsize=8.5, color="white",
                weight="bold")  # fmt: skip
        ax.text(x, y - 0.17, step.mode.value, ha="center", va="center", fontsize=7, color="white")
    for name in wf.order:
        for dep in wf.deps(name):
            (x0, y0), (x1, y1) = pos[dep], pos[name]
            materialized = wf.step(dep).mode.materialized and wf.step(name).mode.in_request
            long = depth[name] - depth[dep] > 1  # skips a layer: arc over the boxes between
            ax.add_patch(
                FancyArrowPatch(
                    (x0 + box_w / 2, y0), (x1 - box_w / 2, y1),
                    arrowstyle="-|>", mutation_scale=10, lw=0.8 if long else 1.0,
                    color="#999999" if long else "#333333",
                    linestyle="--" if materialized else "-",
                    connectionstyle=f"arc3,rad={-0.3 if long else 0.05}",
                )
            )  # fmt: skip
    ax.legend(
        handles=[Patch(color=c, label=m.value) for m, c in MODE_COLOURS.items()],
        loc="upper center", ncol=len(MODE_COLOURS), fontsize=8, frameon=False,
        bbox_to_anchor=(0.5, 1.0),
    )  # fmt: skip
    ax.set_title(
        f"workflow {wf.spec.name!r} (deadline {wf.spec.deadline_ms} ms; dashed: read from store)",
        fontsize=10, pad=18,
    )  # fmt: skip
    xs = [p[0] for p in pos.values()]
    ys = [p[1] for p in pos.values()]
    ax.set_xlim(min(xs) - box_w, max(xs) + box_w)
    ax.set_ylim(min(ys) - 1, max(ys) + 1)
    ax.axis("off")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return out
