"""What each route, tenant, registered version or cost class costs per million input and output tokens.

Pure over the audit records, the pool and each version's one-off cost. Hosted and frontier requests cost their
price sheet times the tokens the upstream counted. A self-hosted deployment costs its GPU-hours whether or not it
serves: price per GPU-hour x GPUs per replica x replica-hours (an uptime record, or by default the period's span
x its replicas), shared among the tokens it actually served, so idle replicas show up as cost. A registered
version's one-off cost (training, quantization, gate) is spread over every token it has served so far; the
period carries its share of them. A deployment that served nothing in the period is a row of its own.

Money is `Decimal` throughout. The price-sheet dollars are checked against the sum of the per-request costs the
router wrote into the audit records: they must agree to the cent.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Literal

from lifecycle.pool.schema import Pool, RegisteredModel
from lifecycle.route.audit import AuditRecord, LoggedRecord
from lifecycle.route.metrics import version_label
from lifecycle.route.policy import Price

GroupBy = Literal["route", "tenant", "version", "cost-class"]
GROUPS: tuple[str, ...] = ("route", "tenant", "version", "cost-class")
MILLION = Decimal(1_000_000)
CENT = Decimal("0.01")
HALF_CENT = Decimal("0.005")
MICRO = Decimal("0.000001")
IDLE = "(idle) "
VersionKey = tuple[str, int]


@dataclass(frozen=True)
class Split:
    """Dollars on input tokens and on output tokens."""

    input: Decimal = Decimal(0)
    output: Decimal = Decimal(0)

    @property
    def total(self) -> Decimal:
        return self.input + self.output

    def __add__(self, other: Split) -> Split:
        return Split(self.input + other.input, self.output + other.output)

    def scaled(self, factor: Decimal) -> Split:
        return Split(self.input * factor, self.output * factor)


@dataclass(frozen=True)
class CostRow:
    key: str
    requests: int
    input_tokens: int
    output_tokens: int
    metered: Split  # price sheet x tokens (hosted, frontier)
    gpu: Split  # the pool's GPU-hours, shared by tokens served
    one_off: Split  # versions' training, quantization and gate cost, spread over their tokens

    @property
    def total(self) -> Split:
        return self.metered + self.gpu + self.one_off

    @property
    def per_million_input(self) -> Decimal | None:
        return self.total.input * MILLION / self.input_tokens if self.input_tokens else None

    @property
    def per_million_output(self) -> Decimal | None:
        return self.total.output * MILLION / self.output_tokens if self.output_tokens else None

    @property
    def per_million(self) -> Decimal | None:
        tokens = self.input_tokens + self.output_tokens
        return self.total.total * MILLION / tokens if tokens else None


@dataclass(frozen=True)
class DeploymentCost:
    """One pool deployment over the period."""

    name: str
    version: str  # version_label of what it pins, "none" for base weights
    replica_hours: Decimal
    gpu_hours: Decimal
    price_per_gpu_hour: Decimal
    input_tokens: int
    output_tokens: int

    @property
    def dollars(self) -> Decimal:
        return self.gpu_hours * self.price_per_gpu_hour

    @property
    def idle(self) -> bool:
        return self.input_tokens + self.output_tokens == 0


@dataclass(frozen=True)
class Mismatch:
    """A request whose recorded cost differs from the price sheet by more than a micro-dollar."""

    request_id: str
    backend: str
    recorded: Decimal
    priced: Decimal


@dataclass(frozen=True)
class Reconciliation:
    recorded_usd: Decimal  # sum of cost_usd over the period's audit records
    priced_usd: Decimal  # the report's price-sheet dollars for the same records
    mismatches: tuple[Mismatch, ...]
    unpriced: tuple[str, ...]  # upstream backends the price sheet does not name: their recorded cost is used

    @property
    def difference(self) -> Decimal:
        return self.priced_usd - self.recorded_usd

    @property
    def ok(self) -> bool:
        """The two agree to the cent."""
        return abs(self.difference) < HALF_CENT


@dataclass(frozen=True)
class CostReport:
    by: GroupBy
    since: datetime | None
    until: datetime | None
    hours: Decimal  # the period's span
    rows: tuple[CostRow, ...]
    deployments: tuple[DeploymentCost, ...]
    one_off: Mapping[str, Decimal]  # version label -> its whole one-off cost
    reconciliation: Reconciliation
    unknown_deployments: tuple[str, ...]  # pool-class backends the pool does not name: no GPU cost known

    @property
    def total(self) -> CostRow:
        rows = self.rows
        return CostRow(
            key="total",
            requests=sum(r.requests for r in rows),
            input_tokens=sum(r.input_tokens for r in rows),
            output_tokens=sum(r.output_tokens for r in rows),
            metered=sum((r.metered for r in rows), Split()),
            gpu=sum((r.gpu for r in rows), Split()),
            one_off=sum((r.one_off for r in rows), Split()),
        )


@dataclass
class _Row:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    metered: Split = Split()
    gpu: Split = Split()
    one_off: Split = Split()

    def row(self, key: str) -> CostRow:
        return CostRow(
            key, self.requests, self.input_tokens, self.output_tokens, self.metered, self.gpu, self.one_off
        )


def _recorded(r: AuditRecord) -> Split:
    """The cost the router recorded, split between input and output in proportion to their tokens."""
    tokens = r.input_tokens + r.output_tokens
    ratio = Decimal(r.input_tokens) / tokens if tokens else Decimal(1)
    return Split(r.cost_usd * ratio, r.cost_usd * (1 - ratio))


def record_version(record: AuditRecord) -> VersionKey | None:
    if record.model_name and record.model_version is not None:
        return record.model_name, record.model_version
    return None


def group_key(record: AuditRecord, by: GroupBy) -> str:
    """The row a request belongs to: a version label for registered versions, else the backend's name."""
    if by == "route":
        return record.route
    if by == "tenant":
        return record.tenant
    if by == "cost-class":
        return record.cost_class
    return (
        version_label(record.model_name, record.model_version)
        if record_version(record)
        else (record.backend or "(refused)")
    )


def priced(record: AuditRecord, prices: Mapping[str, Price]) -> Split | None:
    """Price sheet x the tokens counted, or None when the sheet does not name the backend."""
    price = prices.get(record.backend or "")
    if price is None:
        return None
    return Split(
        Decimal(record.input_tokens) * Decimal(str(price.input_per_million)) / MILLION,
        Decimal(record.output_tokens) * Decimal(str(price.output_per_million)) / MILLION,
    )


def cost_report(
    records: Iterable[LoggedRecord | AuditRecord],
    pool: Pool,
    prices: Mapping[str, Price],
    *,
    by: GroupBy = "route",
    since: datetime | None = None,
    until: datetime | None = None,
    replica_hours: Mapping[str, Decimal] | None = None,
    one_off: Mapping[VersionKey, Decimal] | None = None,
    output_weight: Decimal = Decimal(1),
) -> CostReport:
    """Cost per million input and output tokens, grouped `by`, for requests received in [since, until].

    `prices` is the price sheet (upstream name -> price, from the routing policy); `replica_hours` (deployment ->
    hours its replicas ran in the period) replaces the default span x replicas; `one_off` is each registered
    version's one-off dollars. The pool's GPU and one-off dollars are shared by a request's tokens with output
    tokens weighing `output_weight` input tokens (1: a token is a token; decode costs a GPU more than prefill).
    """
    every = [r.record if isinstance(r, LoggedRecord) else r for r in records]
    upto = [r for r in every if until is None or r.received_at <= until]
    inside = [r for r in upto if since is None or r.received_at >= since]
    start = since or min((r.received_at for r in inside), default=None)
    end = until or max((r.finished_at for r in inside), default=None)
    hours = (
        Decimal(str((end - start).total_seconds())) / 3600 if start and end and end > start else Decimal(0)
    )

    def weight(r: AuditRecord) -> Decimal:
        return Decimal(r.input_tokens) + output_weight * r.output_tokens

    def share(r: AuditRecord, dollars: Decimal, of: Decimal) -> Split:
        """`r`'s part of `dollars` shared over `of` weighted tokens, split into input and output."""
        if not of:
            return Split()
        return Split(dollars * r.input_tokens / of, dollars * output_weight * r.output_tokens / of)

    # the pool: GPU dollars per deployment, shared by the tokens each served in the period
    served: dict[str, list[AuditRecord]] = defaultdict(list)
    unknown: set[str] = set()
    for r in inside:
        if r.cost_class == "pool" and r.backend:
            if pool.deployment(r.backend) is None:
                unknown.add(r.backend)
            else:
                served[r.backend].append(r)
    deployments = []
    for d in pool.deployments:
        hours_run = (replica_hours or {}).get(d.name, hours * d.replicas)
        mine = served.get(d.name, [])
        registered = d.model if isinstance(d.model, RegisteredModel) else None
        deployments.append(
            DeploymentCost(
                name=d.name,
                version=version_label(registered.name, registered.version) if registered else "none",
                replica_hours=hours_run,
                gpu_hours=hours_run * d.gpus_per_replica,
                price_per_gpu_hour=Decimal(str(d.price_per_gpu_hour)),
                input_tokens=sum(r.input_tokens for r in mine),
                output_tokens=sum(r.output_tokens for r in mine),
            )
        )
    dep_weight = {
        dc.name: sum((weight(r) for r in served.get(dc.name, [])), Decimal(0)) for dc in deployments
    }
    dep_dollars = {dc.name: dc.dollars for dc in deployments}

    # one-off dollars: each version's tokens so far (before `until`, whatever `since`)
    so_far: dict[VersionKey, Decimal] = defaultdict(Decimal)
    for r in upto:
        key = record_version(r)
        if key is not None:
            so_far[key] += weight(r)
    one_off = one_off or {}

    rows: dict[str, _Row] = defaultdict(_Row)
    mismatches: list[Mismatch] = []
    unpriced: set[str] = set()
    recorded = priced_total = Decimal(0)

    for r in inside:
        cell = rows[group_key(r, by)]
        cell.requests += 1
        cell.input_tokens += r.input_tokens
        cell.output_tokens += r.output_tokens
        recorded += r.cost_usd
        if r.cost_class == "pool":
            # the router charges a pool call what it records ($0: the GPU-hours are paid anyway, and counted here)
            priced_total += r.cost_usd
            if r.backend in dep_dollars:
                cell.gpu += share(r, dep_dollars[r.backend], dep_weight[r.backend])
        else:
            sheet = priced(r, prices)
            if sheet is None:  # refused before any upstream, or an upstream the sheet does not name
                if r.backend is not None:
                    unpriced.add(r.backend)
                sheet = _recorded(r)
            elif abs(sheet.total - r.cost_usd) > MICRO:
                mismatches.append(Mismatch(r.request_id, r.backend or "", r.cost_usd, sheet.total))
            priced_total += sheet.total
            cell.metered += sheet
        version = record_version(r)
        if version is not None and one_off.get(version):
            cell.one_off += share(r, one_off[version], so_far[version])
    for dc in deployments:
        if dc.idle and dc.dollars:
            idle_key = {"version": dc.version if dc.version != "none" else dc.name, "cost-class": "pool"}.get(
                by, IDLE + dc.name
            )
            rows[idle_key].gpu += Split(dc.dollars, Decimal(0))

    built = tuple(cell.row(key) for key, cell in rows.items())
    return CostReport(
        by=by,
        since=start,
        until=end,
        hours=hours,
        rows=tuple(sorted(built, key=lambda c: (-c.total.total, c.key))),
        deployments=tuple(deployments),
        one_off={version_label(*k): v for k, v in sorted(one_off.items())},
        reconciliation=Reconciliation(
            recorded_usd=recorded,
            priced_usd=priced_total,
            mismatches=tuple(mismatches),
            unpriced=tuple(sorted(unpriced)),
        ),
        unknown_deployments=tuple(sorted(unknown)),
    )


def cents(value: Decimal) -> str:
    """Dollars to the cent, as a report shows them."""
    return f"${value.quantize(CENT):,}"


def per_million(value: Decimal | None) -> str:
    return "-" if value is None else f"${value.quantize(Decimal('0.0001')):,}"
