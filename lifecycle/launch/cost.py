"""What a cloud run costs: dollars per node-hour x nodes x hours. Pure.

The price comes from SkyPilot's catalog (the cheapest offer of the accelerator count in the first placement
that has one, spot or on-demand as the recipe asks), else from the recipe's `launch.price_per_hour`, else it
is unknown: the plan says so and the run records $0 with source "unknown" rather than failing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from lifecycle.launch.sky_client import Offer
from lifecycle.launch.sky_task import accelerator_spec
from lifecycle.recipe.schema import Placement, SkyLaunch
from lifecycle.runs import Cost

# (accelerator, count, use_spot, cloud, region) -> offers, cheapest first; None when no catalog can be read
OfferLookup = Callable[[str, int, bool, str | None, str | None], Sequence[Offer] | None]


@dataclass(frozen=True)
class HourlyRate:
    usd_per_node_hour: float | None
    nodes: int
    source: Literal["catalog", "recipe", "unknown"]
    detail: str  # where the price comes from, or why there is none

    @property
    def usd_per_hour(self) -> float | None:
        return None if self.usd_per_node_hour is None else self.usd_per_node_hour * self.nodes


def hourly_rate(launch: SkyLaunch, lookup: OfferLookup) -> HourlyRate:
    """The price per hour of the whole job (all nodes)."""
    name, count = accelerator_spec(launch.accelerators)
    kind = "spot" if launch.use_spot else "on-demand"
    catalog_read = False
    for place in launch.placements or [Placement()]:
        offers = lookup(name, count, launch.use_spot, place.cloud, place.region)
        if offers is None:
            continue
        catalog_read = True
        if offers:
            best = offers[0]
            where = f"{best.cloud} {best.instance_type or ''} in {best.region or 'any region'}".replace(
                "  ", " "
            )
            return HourlyRate(
                best.usd_per_node_hour, launch.nodes, "catalog", f"SkyPilot catalog: {where}, {kind}"
            )
    if launch.price_per_hour is not None:
        return HourlyRate(
            launch.price_per_hour, launch.nodes, "recipe", "launch.price_per_hour in the recipe"
        )
    why = (
        f"the catalog lists no {kind} offer of {launch.accelerators}"
        if catalog_read
        else "SkyPilot's catalog cannot be read here (offline?)"
    )
    return HourlyRate(None, launch.nodes, "unknown", f"price unknown: {why}; set launch.price_per_hour")


def estimate(rate: HourlyRate, expected_hours: float | None) -> Cost:
    """Before launch: the rate, and the total for `expected_hours` when the caller has a guess."""
    per_hour = rate.usd_per_hour or 0.0
    return Cost(
        usd_per_hour=per_hour,
        hours=0.0,
        estimated_usd=round(per_hour * expected_hours, 2) if expected_hours else 0.0,
        actual_usd=0.0,
        source=rate.source,
    )


def actual(estimated: Cost, hours: float) -> Cost:
    """After the job: the same rate times the measured duration."""
    return Cost(
        usd_per_hour=estimated.usd_per_hour,
        hours=round(hours, 4),
        estimated_usd=estimated.estimated_usd,
        actual_usd=round(estimated.usd_per_hour * hours, 2),
        source=estimated.source,
    )


def describe(rate: HourlyRate, expected_hours: float | None) -> str:
    """One line for the plan: '$98.32/h (2 nodes x $49.16/node-h; SkyPilot catalog: ...); 10 h ~ $983.20'."""
    if rate.usd_per_hour is None:
        return rate.detail
    text = f"${rate.usd_per_hour:,.2f}/h ({rate.nodes} node{'s' if rate.nodes > 1 else ''} x "
    text += f"${rate.usd_per_node_hour:,.2f}/node-h; {rate.detail})"
    if expected_hours:
        text += f"; {expected_hours:g} h ~ ${rate.usd_per_hour * expected_hours:,.2f}"
    return text
