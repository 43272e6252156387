"""Break-even: the daily token volume above which a self-hosted deployment costs less per token than each hosted
and frontier route, for the same input/output mix. Pure.

A self-hosted deployment is paid by the replica-day, whatever it serves: a replica of `gpus` GPUs at `price` per
GPU-hour costs C = gpus x price x 24 dollars a day and can serve K = gpus x tokens/s per GPU x 86,400 x
utilisation tokens a day (utilisation: the share of its peak throughput a real day's traffic reaches). Serving V
tokens a day needs ceil(V / K) replicas (at least one), so its cost per token falls as V grows, then jumps when
another replica is added. A hosted route costs h dollars per token at any volume: its input and output prices
weighted by the mix.

- `beats_from` = C / h, the least volume at which self-hosting costs no more than the route, when that fits one
  replica (C / h <= K); else self-hosting never does: even a full replica costs more per token.
- `always_beats_above`: the volume above which it stays cheaper, the added replicas' jumps included. Just past
  (r - 1) x K the cost per token is r x C / ((r - 1) x K); it stays above h while r < K / (K - C / h), so the last
  jump that crosses h ends at r_last x C / h with r_last = ceil(K / (K - C / h)) - 1.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from lifecycle.errors import UserInputError

SECONDS_PER_DAY = 86_400
MILLION = Decimal(1_000_000)
_VOLUME = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmMbBgGtT]?)\s*$")
_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}


@dataclass(frozen=True)
class SelfHosted:
    name: str
    tokens_per_s_per_gpu: (
        Decimal  # measured: input plus output tokens a second, per GPU, at the batch sizes seen
    )
    price_per_gpu_hour: Decimal
    gpus: int = 1  # per replica
    utilisation: Decimal = Decimal("0.5")

    def __post_init__(self) -> None:
        if self.tokens_per_s_per_gpu <= 0 or self.gpus <= 0 or not 0 < self.utilisation <= 1:
            raise UserInputError(
                f"{self.name}: tokens/s per GPU and GPUs must be above 0 and utilisation in (0, 1]"
            )

    @property
    def replica_dollars_per_day(self) -> Decimal:
        return self.gpus * self.price_per_gpu_hour * 24

    @property
    def replica_tokens_per_day(self) -> Decimal:
        return self.gpus * self.tokens_per_s_per_gpu * SECONDS_PER_DAY * self.utilisation

    @property
    def floor_per_million(self) -> Decimal:
        """Dollars per million tokens with every replica full: the least it can cost."""
        return self.replica_dollars_per_day * MILLION / self.replica_tokens_per_day

    def replicas(self, tokens_per_day: Decimal) -> int:
        return max(1, math.ceil(tokens_per_day / self.replica_tokens_per_day))

    def per_million(self, tokens_per_day: Decimal) -> Decimal:
        return self.replicas(tokens_per_day) * self.replica_dollars_per_day * MILLION / tokens_per_day


@dataclass(frozen=True)
class Hosted:
    name: str
    cost_class: str  # hosted or frontier
    input_per_million: Decimal
    output_per_million: Decimal

    def per_million(self, input_share: Decimal) -> Decimal:
        return input_share * self.input_per_million + (1 - input_share) * self.output_per_million


@dataclass(frozen=True)
class BreakEven:
    self_hosted: str
    hosted: str
    cost_class: str
    hosted_per_million: Decimal
    beats_from: Decimal | None  # tokens a day; None: never
    always_beats_above: Decimal | None


@dataclass(frozen=True)
class Curve:
    name: str
    kind: str  # self_hosted, hosted, frontier
    points: tuple[tuple[Decimal, Decimal], ...]  # (tokens a day, dollars per million tokens)


@dataclass(frozen=True)
class BreakEvenReport:
    input_share: Decimal
    options: tuple[SelfHosted, ...]
    routes: tuple[Hosted, ...]
    results: tuple[BreakEven, ...]
    curves: tuple[Curve, ...]
    tokens_per_day: Decimal | None  # the what-if volume, when one was asked about
    at_volume: tuple[tuple[str, Decimal], ...]  # (option, dollars per million) at that volume, cheapest first


def break_even(option: SelfHosted, route: Hosted, input_share: Decimal) -> BreakEven:
    """The volumes at which `option` starts to beat `route`, and stays ahead (see the module docstring)."""
    h = route.per_million(input_share) / MILLION  # dollars per token
    cost, capacity = option.replica_dollars_per_day, option.replica_tokens_per_day
    beats_from = always = None
    if h > 0 and cost / h <= capacity:
        beats_from = cost / h
        always = beats_from
        if capacity > beats_from:
            r_last = math.ceil(capacity / (capacity - beats_from)) - 1
            if r_last >= 2:
                always = max(beats_from, r_last * cost / h)
    return BreakEven(option.name, route.name, route.cost_class, h * MILLION, beats_from, always)


def volumes(
    low: Decimal = Decimal(10**6), high: Decimal = Decimal(10**10), per_decade: int = 24
) -> list[Decimal]:
    """Daily volumes spaced evenly on a log scale, for a chart."""
    decades = math.log10(high / low)
    steps = max(1, round(decades * per_decade))
    return [Decimal(str(round(float(low) * 10 ** (decades * i / steps)))) for i in range(steps + 1)]


def breakeven_report(
    options: Sequence[SelfHosted],
    routes: Sequence[Hosted],
    input_share: Decimal,
    *,
    tokens_per_day: Decimal | None = None,
    chart_volumes: Sequence[Decimal] | None = None,
) -> BreakEvenReport:
    """Every self-hosted option against every hosted route; curves of dollars per million tokens by volume."""
    if not 0 <= input_share <= 1:
        raise UserInputError(f"the input share of tokens must be in [0, 1]; got {input_share}")
    if tokens_per_day is not None and tokens_per_day <= 0:
        raise UserInputError(f"tokens per day must be above 0; got {tokens_per_day}")
    grid = list(chart_volumes or volumes())
    if tokens_per_day is not None and tokens_per_day not in grid:
        grid = sorted([*grid, tokens_per_day])
    curves = [Curve(o.name, "self_hosted", tuple((v, o.per_million(v)) for v in grid)) for o in options] + [
        Curve(r.name, r.cost_class, tuple((v, r.per_million(input_share)) for v in grid)) for r in routes
    ]
    at: list[tuple[str, Decimal]] = []
    if tokens_per_day is not None:
        at = sorted(
            [(o.name, o.per_million(tokens_per_day)) for o in options]
            + [(r.name, r.per_million(input_share)) for r in routes],
            key=lambda pair: pair[1],
        )
    return BreakEvenReport(
        input_share=input_share,
        options=tuple(options),
        routes=tuple(routes),
        results=tuple(break_even(o, r, input_share) for o in options for r in routes),
        curves=tuple(curves),
        tokens_per_day=tokens_per_day,
        at_volume=tuple(at),
    )


def parse_volume(text: str) -> Decimal:
    """'100M' -> 100,000,000 tokens; k, M, B (or G) and T suffixes; a plain number as is."""
    match = _VOLUME.match(text)
    if not match:
        raise UserInputError(f"not a token volume: {text!r} (like 250k, 100M, 1.5B)")
    return Decimal(match.group(1)) * _SUFFIX[match.group(2).lower()]


def human(tokens: Decimal | None) -> str:
    """A volume as a report shows it: 57.1M, 1.2B."""
    if tokens is None:
        return "never"
    for suffix, size in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("k", 10**3)):
        if tokens >= size:
            return f"{tokens / size:.1f}{suffix}"
    return f"{tokens:.0f}"
