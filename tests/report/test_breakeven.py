"""Break-even volumes against a hand calculation, the what-if form and the chart's curves."""

from __future__ import annotations

from decimal import Decimal

import pytest

from lifecycle.errors import UserInputError
from lifecycle.report.breakeven import (
    Hosted,
    SelfHosted,
    break_even,
    breakeven_report,
    human,
    parse_volume,
    volumes,
)

H100 = SelfHosted("h100", tokens_per_s_per_gpu=Decimal(2500), price_per_gpu_hour=Decimal("2.5"))
HOSTED = Hosted("llama-hosted", "hosted", Decimal("0.6"), Decimal("2.4"))
FRONTIER = Hosted("gpt-frontier", "frontier", Decimal(3), Decimal(15))
MIX = Decimal("0.75")  # three input tokens for each output token


def close(value: Decimal | None, expected: float) -> bool:
    return value is not None and abs(float(value) - expected) < 1e-3


def test_break_even_matches_the_hand_calculation() -> None:
    # By hand. One replica (1 GPU at $2.50/h, always on) costs 2.5 x 24 = $60 a day and serves at most
    # 2,500 tokens/s x 86,400 s x 50% = 108,000,000 tokens a day.
    assert H100.replica_dollars_per_day == Decimal(60)
    assert H100.replica_tokens_per_day == Decimal(108_000_000)
    # The hosted route at 75% input: 0.75 x $0.60 + 0.25 x $2.40 = $1.05 per million tokens.
    # Self-hosting costs $60 / V a day: equal at V = 60 / 1.05 million = 57,142,857 tokens a day.
    result = break_even(H100, HOSTED, MIX)
    assert result.hosted_per_million == Decimal("1.05")
    assert close(result.beats_from, 60 / 1.05 * 1e6)
    # Past 108M tokens a second replica is needed: $120 a day, dearer per token than hosted up to 120 / 1.05 =
    # 114,285,714 tokens; from a third replica on (216M+, $180: $0.83/M at worst) it stays cheaper.
    assert close(result.always_beats_above, 120 / 1.05 * 1e6)
    assert H100.per_million(Decimal(110_000_000)) > result.hosted_per_million
    assert H100.per_million(Decimal(115_000_000)) < result.hosted_per_million
    assert H100.per_million(Decimal(216_000_001)) < result.hosted_per_million
    # The frontier route: 0.75 x $3 + 0.25 x $15 = $6 per million; 60 / 6 = 10M tokens a day, and a second
    # replica's jump (2 x 60 / 108M = $1.11/M) never crosses $6 again.
    frontier = break_even(H100, FRONTIER, MIX)
    assert frontier.hosted_per_million == Decimal(6)
    assert close(frontier.beats_from, 10_000_000) and frontier.always_beats_above == frontier.beats_from


def test_a_route_cheaper_than_a_full_replica_is_never_beaten() -> None:
    # a full replica costs $60 / 108M tokens = $0.5556 per million; a route at $0.50 is never beaten
    assert H100.floor_per_million.quantize(Decimal("0.0001")) == Decimal("0.5556")
    cheap = Hosted("cheap", "hosted", Decimal("0.5"), Decimal("0.5"))
    result = break_even(H100, cheap, MIX)
    assert result.beats_from is None and result.always_beats_above is None
    assert human(result.beats_from) == "never"


def test_what_if_and_curves() -> None:
    rented = SelfHosted("H100 x1", Decimal(2500), Decimal("2.5"), gpus=1, utilisation=Decimal("0.5"))
    report = breakeven_report([rented], [HOSTED, FRONTIER], MIX, tokens_per_day=parse_volume("100M"))
    # at 100M tokens a day: one replica, $60 / 100 = $0.60 per million, cheapest of the three
    assert report.at_volume[0] == ("H100 x1", Decimal("0.6"))
    assert [name for name, _ in report.at_volume] == ["H100 x1", "llama-hosted", "gpt-frontier"]
    assert {c.name for c in report.curves} == {"H100 x1", "llama-hosted", "gpt-frontier"}
    line = next(c for c in report.curves if c.name == "H100 x1")
    assert (Decimal(100_000_000), Decimal("0.6")) in line.points
    flat = next(c for c in report.curves if c.name == "gpt-frontier")
    assert {cost for _, cost in flat.points} == {Decimal(6)}
    assert len(report.results) == 2


def test_volumes_and_their_spelling() -> None:
    assert parse_volume("100M") == Decimal(100_000_000)
    assert parse_volume("1.5B") == Decimal(1_500_000_000)
    assert parse_volume("250k") == Decimal(250_000)
    assert parse_volume("42") == Decimal(42)
    with pytest.raises(UserInputError, match="not a token volume"):
        parse_volume("lots")
    grid = volumes(Decimal(10**6), Decimal(10**8), per_decade=2)
    assert grid[0] == Decimal(10**6) and grid[-1] == Decimal(10**8) and len(grid) == 5
    assert human(Decimal(57_142_857)) == "57.1M"


def test_bad_options_are_user_errors() -> None:
    with pytest.raises(UserInputError):
        SelfHosted("x", Decimal(0), Decimal(1))
    with pytest.raises(UserInputError):
        SelfHosted("x", Decimal(10), Decimal(1), utilisation=Decimal("1.5"))
    with pytest.raises(UserInputError, match="input share"):
        breakeven_report([H100], [HOSTED], Decimal(2))
