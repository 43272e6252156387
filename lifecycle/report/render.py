"""Each report as a terminal table, a markdown file and PNG charts, and logged to MLflow.

`cost`, `breakeven`, `ops` and `residency` turn a report into a `Rendered`: its title, markdown, rich tables,
the totals as metrics and the charts to draw. `write` puts the markdown and PNGs in a folder; `log_to_mlflow`
records them as one MLflow run (the markdown and PNGs as artifacts, the totals as metrics). Charts use a
matplotlib Figure on the Agg canvas: no pyplot, no display.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table

from lifecycle.report import residency as residency_report
from lifecycle.report.breakeven import BreakEvenReport, human
from lifecycle.report.cost import CostReport, CostRow, cents, per_million
from lifecycle.report.ops import OpsReport
from lifecycle.route.chain import ChainReport

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

EXPERIMENT = "lifecycle-reports"
Chart = Callable[[Path], Path]  # draws into the given folder, returns the PNG written


@dataclass(frozen=True)
class Rendered:
    kind: str  # cost, breakeven, ops, residency
    title: str
    markdown: str
    tables: tuple[Table, ...]
    metrics: Mapping[str, float]
    charts: tuple[Chart, ...] = ()
    lines: tuple[str, ...] = ()  # said before the tables (the verdicts)


@dataclass(frozen=True)
class Written:
    markdown: Path
    charts: tuple[Path, ...] = field(default_factory=tuple)


def write(rendered: Rendered, folder: Path) -> Written:
    """`<kind>.md` and each chart's PNG in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    markdown = folder / f"{rendered.kind}.md"
    markdown.write_text(rendered.markdown)
    return Written(markdown, tuple(chart(folder) for chart in rendered.charts))


def log_to_mlflow(
    rendered: Rendered,
    written: Written,
    tracking_uri: str,
    artifact_root: Path | None,
    tags: Mapping[str, str],
) -> str:
    """One finished MLflow run in the `lifecycle-reports` experiment; returns its id."""
    from lifecycle.registry.tracking import Tracker

    tracker = Tracker(tracking_uri, artifact_root)
    run_id = tracker.start_run(
        EXPERIMENT, f"{rendered.kind} report", {"lifecycle.report": rendered.kind, **tags}
    )
    try:
        tracker.log_metrics(run_id, [(key, value, 0) for key, value in rendered.metrics.items()])
        tracker.log_artifact(run_id, written.markdown)
        for chart in written.charts:
            tracker.log_artifact(run_id, chart, "charts")
    except Exception:
        tracker.end_run(run_id, "FAILED")
        raise
    tracker.end_run(run_id)
    return run_id


# ---------------------------------------------------------------- cost


COST_HEADER = ["requests", "input tokens", "output tokens", "hosted/frontier", "GPU", "one-off",
               "total", "$/M input", "$/M output", "$/M all"]  # fmt: skip


def _cost_cells(row: CostRow) -> list[str]:
    return [
        row.key,
        f"{row.requests:,}",
        f"{row.input_tokens:,}",
        f"{row.output_tokens:,}",
        cents(row.metered.total),
        cents(row.gpu.total),
        cents(row.one_off.total),
        cents(row.total.total),
        per_million(row.per_million_input),
        per_million(row.per_million_output),
        per_million(row.per_million),
    ]


def _reconciled(report: CostReport) -> str:
    rec = report.reconciliation
    verdict = "reconciled" if rec.ok else "DOES NOT RECONCILE"
    line = (
        f"Price sheet x tokens {cents(rec.priced_usd)} vs the audit records' per-request costs "
        f"{cents(rec.recorded_usd)}: {verdict} (difference ${rec.difference.quantize(Decimal('0.000001'))})"
    )
    if rec.mismatches:
        line += f"; {len(rec.mismatches)} request(s) priced differently from what was recorded"
    if rec.unpriced:
        line += f"; not in the price sheet (their recorded cost used): {', '.join(rec.unpriced)}"
    return line


def _period(report: CostReport) -> str:
    since = report.since.isoformat(timespec="seconds") if report.since else "-"
    until = report.until.isoformat(timespec="seconds") if report.until else "-"
    return f"{since} to {until} ({report.hours.quantize(Decimal('0.01'))} h)"


DEPLOYMENT_HEADER = ["deployment", "serves", "replica-hours", "GPU-hours", "$/GPU-hour", "GPU cost", "tokens"]


def _deployment_cells(report: CostReport) -> list[list[str]]:
    return [
        [
            d.name,
            d.version,
            f"{d.replica_hours.quantize(Decimal('0.01'))}",
            f"{d.gpu_hours.quantize(Decimal('0.01'))}",
            f"${d.price_per_gpu_hour:.2f}",
            cents(d.dollars),
            "IDLE" if d.idle else f"{d.input_tokens + d.output_tokens:,}",
        ]
        for d in report.deployments
    ]


def cost(report: CostReport, chain: ChainReport | None = None) -> Rendered:
    """The cost report; with `chain` (the audit log's check), whether its records can be trusted complete."""
    title = f"Cost per million tokens by {report.by}, {_period(report)}"
    total = report.total
    rows = [_cost_cells(r) for r in report.rows] + [_cost_cells(total)]
    notes = [_reconciled(report)]
    if chain is not None:
        notes.append(f"Audit log: {chain.summary()}")
    if report.unknown_deployments:
        notes.append(
            f"Pool backends not in the pool file (no GPU cost): {', '.join(report.unknown_deployments)}"
        )
    header = [report.by, *COST_HEADER]
    main = _table(title, header, rows)
    deployments = _table("Self-hosted deployments", DEPLOYMENT_HEADER, _deployment_cells(report))
    one_off = [f"- {version}: {cents(dollars)}" for version, dollars in report.one_off.items()]
    markdown = "\n".join(
        [
            f"# {title}",
            "",
            *(f"**{note}**" if i == 0 else note for i, note in enumerate(notes)),
            "",
            *_markdown(header, rows),
            "",
            "## Self-hosted deployments",
            "",
            "GPU cost = price per GPU-hour x GPUs per replica x replica-hours, shared by the tokens served.",
            "",
            *_markdown(DEPLOYMENT_HEADER, _deployment_cells(report)),
            *(
                ["", "## One-off cost per version (spread over its tokens so far)", "", *one_off]
                if one_off
                else []
            ),
        ]
    )
    metrics = {
        "total_usd": float(total.total.total),
        "metered_usd": float(total.metered.total),
        "gpu_usd": float(total.gpu.total),
        "one_off_usd": float(total.one_off.total),
        "recorded_usd": float(report.reconciliation.recorded_usd),
        "input_tokens": float(total.input_tokens),
        "output_tokens": float(total.output_tokens),
        "requests": float(total.requests),
        "reconciled": 1.0 if report.reconciliation.ok else 0.0,
    }
    if chain is not None:
        metrics["chain_ok"] = 1.0 if chain.ok else 0.0
    if total.per_million is not None:
        metrics["usd_per_million_tokens"] = float(total.per_million)
    return Rendered("cost", title, markdown + "\n", (main, deployments), metrics, (lambda f: _cost_png(report, f),),
                    tuple(notes))  # fmt: skip


def _cost_png(report: CostReport, folder: Path) -> Path:
    fig, ax = _figure(len(report.rows))
    rows = [r for r in report.rows if r.input_tokens + r.output_tokens]
    keys = [r.key for r in rows]
    for offset, label, values in (
        (-0.2, "$/M input", [r.per_million_input or 0 for r in rows]),
        (0.2, "$/M output", [r.per_million_output or 0 for r in rows]),
    ):
        ax.barh([i + offset for i in range(len(rows))], [float(v) for v in values], height=0.4, label=label)
    ax.set_yticks(range(len(rows)), keys)
    ax.invert_yaxis()
    positive = [float(v) for r in rows for v in (r.per_million_input, r.per_million_output) if v]
    if positive and max(positive) > 100 * min(positive):
        ax.set_xscale("log")
    ax.set_xlabel("dollars per million tokens")
    ax.set_title(f"Cost per million tokens by {report.by}")
    if rows:
        ax.legend(loc="best", fontsize="small")
    return _save(fig, folder / "cost.png")


# ---------------------------------------------------------------- break-even

BREAKEVEN_HEADER = ["self-hosted", "vs", "class", "its $/M", "beats it from", "always cheaper above"]
OPTION_HEADER = [
    "self-hosted",
    "tokens/s/GPU",
    "GPUs",
    "$/GPU-hour",
    "utilisation",
    "replica/day",
    "floor $/M",
]


def breakeven(report: BreakEvenReport) -> Rendered:
    title = f"Break-even: self-hosted vs hosted routes, {report.input_share * 100:.0f}% input tokens"
    rows = [
        [r.self_hosted, r.hosted, r.cost_class, f"${r.hosted_per_million:.4f}", f"{human(r.beats_from)}/day",
         f"{human(r.always_beats_above)}/day"]
        for r in report.results
    ]  # fmt: skip
    options = [
        [o.name, f"{o.tokens_per_s_per_gpu:,}", str(o.gpus), f"${o.price_per_gpu_hour:.2f}", f"{o.utilisation:.0%}",
         f"{human(o.replica_tokens_per_day)} tokens, ${o.replica_dollars_per_day:.2f}", f"${o.floor_per_million:.4f}"]
        for o in report.options
    ]  # fmt: skip
    tables = [_table(title, BREAKEVEN_HEADER, rows), _table("Self-hosted options", OPTION_HEADER, options)]
    at_rows = [[name, f"${value:.4f}"] for name, value in report.at_volume]
    lines: list[str] = []
    if report.tokens_per_day is not None:
        tables.append(_table(f"At {human(report.tokens_per_day)} tokens a day", ["option", "$/M"], at_rows))
        lines.append(f"Cheapest at {human(report.tokens_per_day)} tokens a day: {report.at_volume[0][0]}")
    markdown = "\n".join(
        [
            f"# {title}",
            "",
            *lines,
            "",
            *_markdown(BREAKEVEN_HEADER, rows),
            "",
            "## Self-hosted options",
            "",
            *_markdown(OPTION_HEADER, options),
            *(
                [
                    "",
                    f"## At {human(report.tokens_per_day)} tokens a day",
                    "",
                    *_markdown(["option", "$/M"], at_rows),
                ]
                if report.tokens_per_day is not None
                else []
            ),
            "",
            "![cost per million tokens against daily volume](breakeven.png)",
        ]
    )
    metrics = {
        f"beats_from_tokens_per_day.{r.self_hosted}.{r.hosted}": float(r.beats_from)
        for r in report.results
        if r.beats_from is not None
    }
    return Rendered("breakeven", title, markdown + "\n", tuple(tables), metrics,
                    (lambda f: _breakeven_png(report, f),), tuple(lines))  # fmt: skip


def _breakeven_png(report: BreakEvenReport, folder: Path) -> Path:
    fig, ax = _figure(6)
    for curve in report.curves:
        style = "-" if curve.kind == "self_hosted" else "--"
        ax.plot([float(v) for v, _ in curve.points], [float(c) for _, c in curve.points], style,
                label=f"{curve.name} ({curve.kind})")  # fmt: skip
    for result in report.results:
        if result.beats_from is not None:
            ax.axvline(float(result.beats_from), color="0.7", linewidth=0.8, linestyle=":")
    if report.tokens_per_day is not None:
        ax.axvline(float(report.tokens_per_day), color="0.2", linewidth=1, label="what-if volume")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tokens per day")
    ax.set_ylabel("dollars per million tokens")
    ax.set_title("Cost per million tokens against daily volume")
    if report.curves:
        ax.legend(loc="best", fontsize="small")
    return _save(fig, folder / "breakeven.png")


# ---------------------------------------------------------------- operations

OPS_HEADER = ["deployment", "replicas", "prefix-cache hits", "KV-cache use", "waiting", "running", "TTFT p50",
              "TTFT p95", "restarts", "OOM kills"]  # fmt: skip


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _num(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:.3g}{unit}"


def ops(report: OpsReport) -> Rendered:
    title = "Operations: the pool's vLLM replicas"
    rows = [
        [d.name, str(d.replicas), _pct(d.prefix_cache_hit_rate), _pct(d.kv_cache_usage), _num(d.waiting),
         _num(d.running), _num(d.ttft_p50_s, " s"), _num(d.ttft_p95_s, " s"), str(d.restarts), str(d.oom_kills)]
        for d in report.deployments
    ]  # fmt: skip
    events = [f"- {e}" for e in report.events[-20:]]
    markdown = "\n".join(
        [
            f"# {title}",
            "",
            *_markdown(OPS_HEADER, rows),
            *(["", "## Recent pool events", "", *events] if events else []),
        ]
    )
    metrics: dict[str, float] = {}
    for d in report.deployments:
        for key, value in (
            ("prefix_cache_hit_rate", d.prefix_cache_hit_rate),
            ("kv_cache_usage", d.kv_cache_usage),
            ("waiting", d.waiting),
            ("ttft_p95_s", d.ttft_p95_s),
            ("restarts", float(d.restarts)),
            ("oom_kills", float(d.oom_kills)),
        ):
            if value is not None:
                metrics[f"{key}.{d.name}"] = value
    return Rendered("ops", title, markdown + "\n", (_table(title, OPS_HEADER, rows),), metrics,
                    (lambda f: _ops_png(report, f),))  # fmt: skip


def _ops_png(report: OpsReport, folder: Path) -> Path:
    fig, ax = _figure(len(report.deployments))
    names = [d.name for d in report.deployments]
    for offset, label, values in (
        (-0.2, "prefix-cache hit rate", [d.prefix_cache_hit_rate or 0.0 for d in report.deployments]),
        (0.2, "KV-cache use", [d.kv_cache_usage or 0.0 for d in report.deployments]),
    ):
        ax.barh([i + offset for i in range(len(names))], values, height=0.4, label=label)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_title("Prompt-cache hit rate and KV-cache use per deployment")
    if names:
        ax.legend(loc="best", fontsize="small")
    return _save(fig, folder / "ops.png")


# ---------------------------------------------------------------- residency


def residency(report: residency_report.ResidencyReport) -> Rendered:
    text = residency_report.render_table(report)
    header, _, _ = text.partition("\n\n")
    rows = [
        [r.reach.backend, r.reach.provider, r.reach.region or "-", r.reach.backend_residency, str(r.attempts),
         str(r.answered), r.allowed_by or "NOT ALLOWED"]
        for r in report.rows
    ]  # fmt: skip
    violations = [
        [str(v.seq), v.received_at.isoformat(timespec="seconds"), v.request_id, v.residency, str(v.attempt),
         v.reach.backend, v.reach.provider, v.reach.region or "-", v.reach.backend_residency, v.outcome]
        for v in report.violations
    ]  # fmt: skip
    tables = []
    if violations:
        tables.append(_table("NOT ALLOWED", residency_report.VIOLATION_HEADER, violations, style="bold red"))
    tables.append(_table("Reached", residency_report.ROW_HEADER, rows))
    metrics = {
        "requests": float(report.requests),
        "attempts": float(report.attempts),
        "violations": float(len(report.violations)),
        "chain_ok": 1.0 if report.chain is not None and report.chain.ok else 0.0,
    }
    return Rendered("residency", header.splitlines()[0], residency_report.render_markdown(report),
                    tuple(tables), metrics, (lambda f: _residency_png(report, f),),
                    tuple(header.splitlines()[1:]))  # fmt: skip


def _residency_png(report: residency_report.ResidencyReport, folder: Path) -> Path:
    fig, ax = _figure(len(report.rows))
    labels = [f"{r.reach.backend} ({r.reach.provider}, {r.reach.region or '-'})" for r in report.rows]
    colors = ["tab:red" if r.allowed_by is None else "tab:green" for r in report.rows]
    ax.barh(range(len(labels)), [r.attempts for r in report.rows], color=colors)
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("requests sent (red: not allowed by the tenant's residency)")
    ax.set_title(f"Where tenant {report.tenant}'s requests went")
    return _save(fig, folder / "residency.png")


# ---------------------------------------------------------------- helpers


def _table(
    title: str, header: Sequence[str], rows: Sequence[Sequence[str]], style: str | None = None
) -> Table:
    table = Table(title=title, box=None, title_style=style)
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right", overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return [line(header), line(["---"] * len(header)), *(line(row) for row in rows)]


def _figure(rows: int) -> tuple[Figure, Axes]:
    from matplotlib.figure import Figure  # Figure + Agg canvas: no pyplot, no global state

    fig = Figure(figsize=(9, 2.0 + 0.4 * max(1, rows)), layout="constrained")
    return fig, fig.add_subplot()


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    return path
