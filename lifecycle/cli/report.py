"""`lifecycle report cost|breakeven|residency|ops`: what each model costs per million tokens, where self-hosting
pays, where each tenant's data went, and how the pool's replicas are doing. Each prints tables, writes a
markdown file and PNG charts (`--out`, default HOME/reports/KIND-TIME) and logs them as an MLflow run.

The router's audit log is read from `--audit` (default HOME/router/audit.jsonl).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from lifecycle.cli.output import console, console_err
from lifecycle.errors import LifecycleError, RecipeError, UserInputError
from lifecycle.serve.routing import audit_path

if TYPE_CHECKING:
    from lifecycle.pool.schema import Pool
    from lifecycle.report.render import Rendered
    from lifecycle.route.audit import AuditSnapshot
    from lifecycle.route.load import LoadedPolicy
    from lifecycle.route.policy import RoutingPolicy
    from lifecycle.settings import Settings

app = typer.Typer(
    help="Reports: cost per million tokens, self-hosting break-even, tenants' data residency, operations.",
    no_args_is_help=True,
)
_RELATIVE = re.compile(r"^(\d+)\s*([dhm])$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}

AuditOpt = typer.Option(None, "--audit", help="The router's audit log (default: HOME/router/audit.jsonl).")
SinceOpt = typer.Option(
    None, "--since", help="From this time: ISO date or time (UTC unless given), or 7d, 24h, 30m."
)
OutOpt = typer.Option(
    None, "--out", help="Folder for the markdown and PNGs (default: HOME/reports/KIND-TIME)."
)
MlflowOpt = typer.Option(True, "--mlflow/--no-mlflow", help="Log the report as an MLflow run.")
PoolOpt = typer.Option(Path("serving/pool.yaml"), "--pool", help="The pool file (GPU prices, replicas).")
PolicyOpt = typer.Option(
    Path("serving/routing.yaml"), "--policy", help="The routing policy (upstreams' price sheet)."
)


@app.command("cost")
def cost(
    by: str = typer.Option("route", "--by", help="Rows by route, tenant, version or cost-class."),
    since: str | None = SinceOpt,
    until: str | None = typer.Option(None, "--until", help="Up to this time (default: the last record)."),
    audit: Path | None = AuditOpt,
    pool: Path = PoolOpt,
    policy: Path = PolicyOpt,
    replica_hours: list[str] = typer.Option(
        [], "--replica-hours", help="DEPLOYMENT=HOURS its replicas ran (default: the period x replicas)."
    ),
    one_off: list[str] = typer.Option(
        [], "--one-off", help="NAME/VERSION=DOLLARS: a version's one-off cost (default: from the registry)."
    ),
    registry: bool = typer.Option(True, "--registry/--no-registry", help="Read versions' one-off costs."),
    output_weight: str = typer.Option(
        "1", "--output-weight", help="An output token's weight against an input token in GPU cost."
    ),
    out: Path | None = OutOpt,
    mlflow: bool = MlflowOpt,
) -> None:
    """Dollars per million input and output tokens: hosted and frontier at their price sheet, self-hosted
    deployments at their GPU-hours over the tokens they served, plus each version's one-off cost."""
    from lifecycle.report import render
    from lifecycle.report.cost import GROUPS, cost_report

    with _user_errors():
        settings = _settings()
        if by not in GROUPS:
            raise UserInputError(f"--by {by!r}: one of {', '.join(GROUPS)}")
        loaded_pool = _pool(pool)
        prices = {u.name: u.price for u in _policy(policy, loaded_pool, required=False).upstreams}
        snapshot = _snapshot(audit, settings)
        hours = {
            name: _decimal(value, "--replica-hours")
            for name, value in _pairs(replica_hours, "--replica-hours")
        }
        costs = {_version(key): _decimal(value, "--one-off") for key, value in _pairs(one_off, "--one-off")}
        if registry:
            seen = {
                (r.record.model_name, r.record.model_version)
                for r in snapshot.records
                if r.record.model_name and r.record.model_version is not None
            }
            found = _registry_costs(settings, {(str(n), int(v)) for n, v in seen} - set(costs))
            costs = {**found, **costs}
        report = cost_report(
            snapshot.records,
            loaded_pool,
            prices,
            by=by,  # type: ignore[arg-type]
            since=_time(since, "--since"),
            until=_time(until, "--until"),
            replica_hours=hours,
            one_off=costs,
            output_weight=_decimal(output_weight, "--output-weight"),
        )
        _emit(render.cost(report, snapshot.chain), out, settings, mlflow, {"lifecycle.report.by": by})


@app.command("breakeven")
def breakeven(
    throughput: list[str] = typer.Option(
        [], "--throughput", help="DEPLOYMENT=TOKENS_PER_S measured per GPU (bench/serve_throughput.py)."
    ),
    utilisation: str = typer.Option("0.5", "--utilisation", help="Share of peak throughput a day reaches."),
    input_share: str | None = typer.Option(
        None, "--input-share", help="Share of tokens that are input (default: the audit log's, else 0.75)."
    ),
    gpu: str | None = typer.Option(None, "--gpu", help="What-if: a GPU to rent or buy (a name, e.g. H100)."),
    price_per_hour: str | None = typer.Option(
        None, "--price-per-hour", help="What-if: dollars per GPU-hour."
    ),
    tokens_per_s: str | None = typer.Option(None, "--tokens-per-s", help="What-if: tokens/s one GPU serves."),
    gpus: int = typer.Option(1, "--gpus", help="What-if: GPUs per replica."),
    tokens_per_day: str | None = typer.Option(None, "--tokens-per-day", help="A daily volume: 100M, 1.5B."),
    audit: Path | None = AuditOpt,
    pool: Path = PoolOpt,
    policy: Path = PolicyOpt,
    out: Path | None = OutOpt,
    mlflow: bool = MlflowOpt,
) -> None:
    """The daily token volume above which each self-hosted option beats each hosted and frontier route, for
    the same input/output mix; with --tokens-per-day, what each option costs at that volume."""
    from lifecycle.report import render
    from lifecycle.report.breakeven import Hosted, SelfHosted, breakeven_report, parse_volume

    with _user_errors():
        settings = _settings()
        loaded_pool = _pool(pool) if pool.exists() or throughput else None
        routes = [
            Hosted(u.name, u.cost_class, _dec(u.price.input_per_million), _dec(u.price.output_per_million))
            for u in _policy(policy, loaded_pool, required=True).upstreams
        ]
        if not routes:
            raise UserInputError(f"{policy}: no hosted or frontier upstreams to compare with")
        used = _decimal(utilisation, "--utilisation")
        options = []
        for name, value in _pairs(throughput, "--throughput"):
            deployment = loaded_pool.deployment(name) if loaded_pool else None
            if deployment is None:
                raise UserInputError(f"--throughput {name}=...: no deployment {name!r} in {pool}")
            options.append(
                SelfHosted(
                    name,
                    _decimal(value, "--throughput"),
                    _dec(deployment.price_per_gpu_hour),
                    max(1, deployment.gpus_per_replica),
                    used,
                )  # fmt: skip
            )
        if gpu or price_per_hour or tokens_per_s:
            if not (gpu and price_per_hour and tokens_per_s):
                raise UserInputError(
                    "the what-if needs --gpu, --price-per-hour and --tokens-per-s (tokens/s one GPU serves "
                    "this model: bench/serve_throughput.py measures it)"
                )
            options.append(
                SelfHosted(
                    f"{gpu} x{gpus}",
                    _decimal(tokens_per_s, "--tokens-per-s"),
                    _decimal(price_per_hour, "--price-per-hour"),
                    gpus,
                    used,
                )  # fmt: skip
            )
        if not options:
            raise UserInputError(
                "nothing self-hosted to compare: give --throughput DEPLOYMENT=TOKENS_PER_S, or the what-if "
                "--gpu NAME --price-per-hour DOLLARS --tokens-per-s N"
            )
        share = _decimal(input_share, "--input-share") if input_share else _input_share(audit, settings)
        volume = parse_volume(tokens_per_day) if tokens_per_day else None
        report = breakeven_report(options, routes, share, tokens_per_day=volume)
        _emit(render.breakeven(report), out, settings, mlflow, {})


@app.command("residency")
def residency(
    tenant: str = typer.Option(..., "--tenant", help="The tenant whose requests to account for."),
    since: str | None = SinceOpt,
    audit: Path | None = AuditOpt,
    export: Path | None = typer.Option(
        None, "--export", help="Also write a signed export of its records here."
    ),
    key: Path | None = typer.Option(
        None, "--key", help="Signing key for --export: an Ed25519 private key (PEM) or an HMAC secret file."
    ),
    policy: Path | None = typer.Option(
        None,
        "--policy",
        help="Judge each backend by the residency this routing policy and its pool give it now, not by what "
        "its records say.",
    ),
    out: Path | None = OutOpt,
    mlflow: bool = MlflowOpt,
) -> None:
    """Every backend, provider and region the tenant's requests reached, with counts and the rule that allowed
    each; a request that went where its residency did not allow comes first, and exits 1, as does a broken
    chain of records."""
    from lifecycle.report import render
    from lifecycle.report.residency import residency_lookup, residency_report
    from lifecycle.route.policy import ALLOWED_RESIDENCIES

    with _user_errors():
        settings = _settings()
        if export is not None and key is None:
            raise UserInputError("--export needs --key: the file is signed so that the customer can check it")
        path = _audit_path(audit, settings)
        snapshot = _snapshot(audit, settings)
        starting = _time(since, "--since")
        backends = None
        if policy is not None:
            loaded = _loaded_policy(policy)
            backends = {u.name: u.residency for u in loaded.policy.upstreams}
            backends |= {d.name: d.residency for d in loaded.pool.deployments}
        lookup = residency_lookup(ALLOWED_RESIDENCIES, backends)
        report = residency_report(snapshot.records, tenant, starting, lookup, chain=snapshot.chain)
        _emit(render.residency(report), out, settings, mlflow, {"lifecycle.report.tenant": tenant})
        if export is not None and key is not None:
            from lifecycle.route.export import export as write_export

            written = write_export(path, starting, tenant, _signing_key(key), out=export)
            console.print(f"signed export: {written}", markup=False)
        if not report.clean:
            raise typer.Exit(1)


@app.command("ops")
def ops(
    metrics: list[str] = typer.Option(
        [], "--metrics", help="DEPLOYMENT=FILE or URL of a replica's /metrics (repeat per replica)."
    ),
    status: Path | None = typer.Option(
        None, "--status", help="A saved `lifecycle serve --status --json` (restarts, events)."
    ),
    out: Path | None = OutOpt,
    mlflow: bool = MlflowOpt,
) -> None:
    """Per deployment: prompt-cache hit rate, KV-cache use, queue length, time to first token, restarts and
    out-of-memory kills; from the pool running here unless --metrics and --status say otherwise."""
    import json

    from lifecycle.report import render
    from lifecycle.report.ops import ops_report

    with _user_errors():
        settings = _settings()
        scrapes: dict[str, list[str]] = {}
        for name, source in _pairs(metrics, "--metrics"):
            scrapes.setdefault(name, []).append(_read_source(source))
        state: dict[str, Any] | None = None
        if status is not None:
            try:
                state = json.loads(status.read_text())
            except (OSError, ValueError) as exc:
                raise UserInputError(f"--status {status}: not a status document ({exc})") from None
        if not scrapes and state is None:
            state, scrapes = _live_pool(settings)
        _emit(render.ops(ops_report(scrapes, state)), out, settings, mlflow, {})


# ---------------------------------------------------------------- the edges


@contextmanager
def _user_errors() -> Iterator[None]:
    """The platform's errors as one line and their exit code (2 for bad input), no traceback."""
    try:
        yield
    except RecipeError as exc:
        for problem in exc.problems:
            console_err.print(problem, markup=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except LifecycleError as exc:
        console_err.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None


def _settings() -> Settings:
    from lifecycle.cli.context import load_context

    return load_context().settings


def _emit(
    rendered: Rendered, out: Path | None, settings: Settings, mlflow: bool, tags: dict[str, str]
) -> None:
    from lifecycle.report.render import log_to_mlflow, write

    for line in rendered.lines:
        console.print(line, markup=False)
    for table in rendered.tables:
        console.print(table)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    written = write(rendered, out or settings.home / "reports" / f"{rendered.kind}-{stamp}")
    console.print(
        f"report: {written.markdown}" + "".join(f", {c.name}" for c in written.charts), markup=False
    )
    if mlflow:
        from lifecycle.preflight import check_tracking_store

        check_tracking_store(settings.tracking_uri)
        run_id = log_to_mlflow(rendered, written, settings.tracking_uri, settings.artifacts_dir, tags)
        console.print(f"MLflow run: {run_id}", markup=False)


def _audit_path(audit: Path | None, settings: Settings) -> Path:
    return audit if audit is not None else audit_path(settings)


def _snapshot(audit: Path | None, settings: Settings) -> AuditSnapshot:
    from lifecycle.route.audit import read_log

    path = _audit_path(audit, settings)
    if not path.is_file():
        raise UserInputError(f"{path}: no audit log here (the router writes one; --audit names another)")
    return read_log(path)


def _pool(path: Path) -> Pool:
    from lifecycle.pool.load import load_pool

    if not path.is_file():
        raise UserInputError(f"{path}: no pool file here (--pool names another)")
    return load_pool(path).pool


def _policy(path: Path, pool: Pool | None, *, required: bool) -> RoutingPolicy:
    from lifecycle.route.load import load_policy
    from lifecycle.route.policy import RoutingPolicy

    if not path.is_file():
        if required:
            raise UserInputError(f"{path}: no routing policy here (--policy names another)")
        return RoutingPolicy()
    return load_policy(path, pool).policy


def _loaded_policy(path: Path) -> LoadedPolicy:
    from lifecycle.route.load import load_policy

    if not path.is_file():
        raise UserInputError(f"{path}: no routing policy here")
    return load_policy(path)


def _registry_costs(settings: Settings, versions: set[tuple[str, int]]) -> dict[tuple[str, int], Decimal]:
    """Each version's one-off dollars from its registry tags: lifecycle.cost.usd (training) and any
    lifecycle.cost.STAGE.usd. A version the registry does not know costs nothing here."""
    if not versions:
        return {}
    from lifecycle.pool.pins import COST_USD
    from lifecycle.preflight import check_tracking_store
    from lifecycle.registry.models import Registry
    from lifecycle.registry.tracking import Tracker

    check_tracking_store(settings.tracking_uri)
    registry = Registry(Tracker(settings.tracking_uri, settings.artifacts_dir))
    found = {}
    for name, version in sorted(versions):
        record = registry.find(name, str(version))
        if record is None:
            continue
        dollars = Decimal(0)
        for tag, value in record.tags.items():
            if tag == COST_USD or (tag.startswith("lifecycle.cost.") and tag.endswith(".usd")):
                try:
                    dollars += Decimal(value)
                except InvalidOperation:
                    continue
        found[name, version] = dollars
    return found


def _input_share(audit: Path | None, settings: Settings) -> Decimal:
    path = _audit_path(audit, settings)
    if not path.is_file():
        console.print(
            "input share 75% (no audit log to measure it from; --input-share sets it)", markup=False
        )
        return Decimal("0.75")
    records = [r.record for r in _snapshot(audit, settings).records]
    tokens_in = sum(r.input_tokens for r in records)
    total = tokens_in + sum(r.output_tokens for r in records)
    return Decimal(tokens_in) / total if total else Decimal("0.75")


def _live_pool(settings: Settings) -> tuple[dict[str, Any], dict[str, list[str]]]:
    from lifecycle.serve.control import find_running

    client = find_running(settings)
    if client is None:
        raise UserInputError(
            "no pool runs here (lifecycle serve); give --metrics DEPLOYMENT=FILE|URL and --status FILE"
        )
    status = client.status()
    scrapes = {
        d.name: [_read_source(r.url.rstrip("/") + "/metrics") for r in d.replicas if r.healthy]
        for d in status.deployments
    }
    return status.model_dump(mode="json"), scrapes


def _read_source(source: str) -> str:
    if source.startswith(("http://", "https://")):
        import requests

        try:
            response = requests.get(source, timeout=10)
            response.raise_for_status()
            return response.text
        except requests.RequestException as exc:
            raise UserInputError(f"{source}: could not read the metrics ({exc})") from None
    try:
        return Path(source).read_text()
    except OSError as exc:
        raise UserInputError(f"{source}: could not read the metrics ({exc.strerror})") from None


def _signing_key(path: Path) -> Any:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserInputError(f"--key {path}: {exc.strerror}") from None
    if not data.lstrip().startswith(b"-----BEGIN"):
        return data.strip()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise UserInputError(f"--key {path}: not a PEM private key without a password ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UserInputError(f"--key {path}: an Ed25519 private key is needed, not {type(key).__name__}")
    return key


def _pairs(values: list[str], option: str) -> list[tuple[str, str]]:
    out = []
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise UserInputError(f"{option} {value!r}: expected NAME=VALUE")
        out.append((name.strip(), rest.strip()))
    return out


def _version(text: str) -> tuple[str, int]:
    name, sep, version = text.rpartition("/")
    if not sep or not name or not version.isdigit():
        raise UserInputError(f"--one-off {text!r}: expected NAME/VERSION=DOLLARS, like support-bot/3=120")
    return name, int(version)


def _decimal(text: str, option: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise UserInputError(f"{option} {text!r}: not a number") from None
    if not value.is_finite() or value < 0:
        raise UserInputError(f"{option} {text!r}: a number of at least 0 is needed")
    return value


def _dec(value: float) -> Decimal:
    return Decimal(str(value))


def _time(text: str | None, option: str, now: datetime | None = None) -> datetime | None:
    """ISO date or time (UTC unless it says), or a span back from now: 7d, 24h, 30m."""
    if text is None:
        return None
    relative = _RELATIVE.match(text.strip())
    if relative:
        span = timedelta(**{_UNITS[relative.group(2)]: int(relative.group(1))})
        return (now or datetime.now(timezone.utc)) - span
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UserInputError(f"{option} {text!r}: expected an ISO date or time (2026-03-01, 2026-03-01T12:00) "
                             "or a span like 7d, 24h, 30m") from None  # fmt: skip
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
