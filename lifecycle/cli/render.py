"""How the commands show stage results in the terminal (the API returns them; the CLI renders them)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from lifecycle.results import ChainReport, GateResult, QuantizeResult, RegisteredVersion, TrainResult


def show(console: Console, stage: str, result: Any) -> None:
    """One stage's result, as `lifecycle train` and the stage commands print it."""
    if isinstance(result, TrainResult):
        console.print(train_table(result))
    elif isinstance(result, QuantizeResult):
        console.print(quantize_line(result))
    elif isinstance(result, ChainReport):
        console.print(chain_table(result))
    elif isinstance(result, GateResult):
        show_gate(console, result)
    elif isinstance(result, RegisteredVersion):
        console.print(registered_line(result))


def show_gate(console: Console, result: GateResult) -> None:
    from lifecycle.gate.report import render_rich

    console.print(render_rich(result.verdict))
    console.print(f"gate report: {result.report_md} and {result.report_png}")
    if not result.passed:
        console.print(f"[bold red]gate failed[/]: nothing registered. Report: {result.report_md}")


# What the terminal says while a stage works.
WORKING = {
    "train": "training",
    "quantize": "quantizing",
    "chain": "chain check and gate: serving base+adapter, merged and quantized once each through vLLM; "
    "comparing them and evaluating with lm-eval",
    "gate": "gate: deciding",
    "register": "registering",
}


def train_table(result: TrainResult) -> Table:
    table = Table(title="training", show_header=False)
    rows: list[tuple[str, Any]] = [
        ("method", result.method),
        (
            "steps",
            f"{result.steps}"
            + (f" (resumed at {result.resumed_from_step})" if result.resumed_from_step else ""),
        ),
        ("final loss", _fmt(result.final_loss)),
        *(
            [
                (
                    "held-out accuracy",
                    f"{_fmt(result.base_eval_accuracy)} (base) -> {_fmt(result.eval_accuracy)}",
                )
            ]
            if result.eval_accuracy is not None
            else []
        ),
        ("model", result.model_dir),
        ("manifest", result.manifest_digest[:16]),
        ("wall time", f"{result.wall_s:.1f} s"),
    ]
    for key, value in rows:
        table.add_row(key, str(value))
    return table


def registered_line(v: RegisteredVersion) -> str:
    adapter = v.adapter
    also = (
        f"registered the adapter as [bold]{adapter.name}[/] version [bold]{adapter.version}[/] (alias "
        f"'{adapter.alias}'): promote it to hot-load it onto a deployment serving the base weights\n"
        if adapter is not None
        else ""
    )
    return (
        f"registered [bold]{v.name}[/] version [bold]{v.version}[/] (alias '{v.alias}') from {v.source}\n"
        + also
        + "see it in the registry UI: make ui  (or: lifecycle ui); serve it: lifecycle promote "
        f"{v.name} {v.version}"
    )


def quantize_line(result: QuantizeResult) -> str:
    if result.scheme == "none":
        return "quantize: scheme 'none', serving the merged model as is"
    return (
        f"quantized [bold]{result.scheme}[/] in {result.wall_s:.1f} s: {result.bytes_before / 1e6:.1f} MB -> "
        f"{result.bytes_after / 1e6:.1f} MB, config {result.config_sha256[:12]}"
        + (f", calibrated on {len(result.calibration_ids)} training rows" if result.calibration_ids else "")
    )


def chain_table(report: ChainReport) -> Table:
    table = Table(title=f"chain check ({report.n_prompts} eval prompts, greedy)")
    for col in ("link", "vs", "agreement", "mean |Δ logprob|", "max |Δ logprob|"):
        table.add_column(col)
    for p in report.pairs:
        table.add_row(
            p.right,
            p.left,
            f"{p.agreement:.0%}",
            f"{p.mean_abs_logprob_drift:.4f}",
            f"{p.max_abs_logprob_drift:.4f}",
        )
    if report.accuracy:
        table.add_section()
        accuracy = ", ".join(f"{k} {v:.2f}" for k, v in report.accuracy.items() if v is not None)
        table.add_row("held-out exact match", accuracy, "", "", "")
    if report.samples:
        last = list(report.samples[0])[-1]
        table.caption = f"sample answer from the served {last} model: {report.samples[0][last]!r}"
    return table


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


class StageProgress:
    """`on_stage` for the API: a spinner while a stage works (training shows its own progress), its result
    when done."""

    def __init__(self, console: Console):
        self.console = console
        self._status: Any = None

    def __call__(self, stage: str, result: Any) -> None:
        self.close()
        if result is None:
            if stage != "train":
                self._status = self.console.status(WORKING.get(stage, stage))
                self._status.start()
        else:
            show(self.console, stage, result)

    def close(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def __enter__(self) -> StageProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
