"""Cost: catalog price, else the recipe's, else "unknown"; x nodes x hours. Plus the real catalog path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lifecycle.launch import cost
from lifecycle.launch.sky_client import Offer
from lifecycle.recipe.schema import Placement, SkyLaunch


def launch(**kw: object) -> SkyLaunch:
    return SkyLaunch.model_validate({"kind": "sky", "accelerators": "H100:8", **kw})


def test_catalog_price_of_the_first_placement_that_has_one() -> None:
    asked = []

    def lookup(
        name: str, count: int, spot: bool, cloud: str | None, region: str | None
    ) -> list[Offer] | None:
        asked.append((name, count, spot, cloud, region))
        if cloud == "lambda":
            return []  # lambda has no spot
        return [Offer(cloud or "aws", "p5.48xlarge", region or "us-east-1", 12.5)]

    spec = launch(
        nodes=2, use_spot=True, placements=[{"cloud": "lambda"}, {"cloud": "aws", "region": "us-west-2"}]
    )
    rate = cost.hourly_rate(spec, lookup)
    assert asked == [("H100", 8, True, "lambda", None), ("H100", 8, True, "aws", "us-west-2")]
    assert (rate.source, rate.usd_per_node_hour, rate.usd_per_hour) == ("catalog", 12.5, 25.0)
    assert "aws p5.48xlarge in us-west-2, spot" in rate.detail


def test_recipe_price_when_the_catalog_cannot_be_read() -> None:
    rate = cost.hourly_rate(launch(nodes=2, price_per_hour=40.0), lambda *a: None)
    assert (rate.source, rate.usd_per_hour) == ("recipe", 80.0)
    est = cost.estimate(rate, expected_hours=1.5)
    assert (est.usd_per_hour, est.estimated_usd, est.actual_usd, est.source) == (80.0, 120.0, 0.0, "recipe")
    spent = cost.actual(est, hours=0.25)
    assert (spent.hours, spent.actual_usd, spent.estimated_usd) == (0.25, 20.0, 120.0)


def test_unknown_price_is_reported_not_raised() -> None:
    rate = cost.hourly_rate(launch(), lambda *a: None)
    assert rate.source == "unknown" and rate.usd_per_hour is None
    assert "set launch.price_per_hour" in cost.describe(rate, 3)
    est = cost.estimate(rate, 3)
    assert (est.usd_per_hour, est.estimated_usd, est.source) == (0.0, 0.0, "unknown")
    assert cost.actual(est, 2.0).actual_usd == 0.0


def test_catalog_without_an_offer_falls_back_to_the_recipe_and_says_why() -> None:
    assert cost.hourly_rate(launch(price_per_hour=3.0), lambda *a: []).source == "recipe"
    rate = cost.hourly_rate(launch(), lambda *a: [])
    assert "lists no on-demand offer of H100:8" in rate.detail


def test_describe_reads_like_a_bill() -> None:
    rate = cost.HourlyRate(49.16, 2, "catalog", "SkyPilot catalog: aws p5.48xlarge in us-east-1, on-demand")
    assert cost.describe(rate, 10) == (
        "$98.32/h (2 nodes x $49.16/node-h; SkyPilot catalog: aws p5.48xlarge in us-east-1, on-demand); "
        "10 h ~ $983.20"
    )


def test_placement_with_no_cloud_asks_every_cloud() -> None:
    asked = []
    cost.hourly_rate(launch(placements=[Placement(region="us-east-1")]), lambda *a: asked.append(a))
    assert asked == [("H100", 8, False, None, "us-east-1")]


# SkyPilot's lambda/vms.csv format (catalog v8), three rows; prices illustrative
CATALOG = Path(__file__).parent / "data" / "lambda_vms.csv"


def test_real_catalog_lookup_with_a_seeded_catalog(tmp_path: Path) -> None:
    """SkyClient reads SkyPilot's own catalog files; a seeded one stands in for the download (no internet).
    SKY_RUNTIME_DIR is read when sky is imported, hence the subprocess."""
    catalogs = tmp_path / ".sky" / "catalogs" / "v8"
    (catalogs / "lambda").mkdir(parents=True)
    (catalogs / "lambda" / "vms.csv").write_text(CATALOG.read_text())
    (catalogs / "common").mkdir(parents=True)
    (catalogs / "common" / "accelerators.csv").write_text("AcceleratorName,Clouds\nH100,\"['Lambda']\"\n")
    script = textwrap.dedent(
        """
        import json
        from lifecycle.launch.sky_client import SkyClient
        c = SkyClient()
        names = c.accelerator_names()
        on_lambda = c.offers("h100", 1, use_spot=False, cloud="lambda", region=None)
        in_west = c.offers("H100", 1, use_spot=False, cloud="lambda", region="us-west-1")
        eight = c.offers("H100", 8, use_spot=False, cloud="lambda", region=None)
        spot = c.offers("H100", 1, use_spot=True, cloud="lambda", region=None)
        offline = c.offers("H100", 1, use_spot=False, cloud="aws", region=None)
        print(json.dumps({
            "names": [names.source, sorted(names.names)],
            "lambda": [[o.instance_type, o.region, o.usd_per_node_hour] for o in on_lambda],
            "west": [o.usd_per_node_hour for o in in_west], "eight": [o.usd_per_node_hour for o in eight],
            "spot": spot, "offline": offline,
        }))
        """
    )
    env = {**os.environ, "SKY_RUNTIME_DIR": str(tmp_path), "SKYPILOT_DISABLE_USAGE_COLLECTION": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["names"] == ["catalog", ["H100"]]
    assert got["lambda"] == [["gpu_1x_h100_pcie", "us-east-1", 2.49], ["gpu_1x_h100_pcie", "us-west-1", 2.79]]
    assert got["west"] == [2.79]
    assert got["eight"] == [23.92]
    assert got["spot"] == []  # lambda sells no spot: an empty answer, not "unknown"
    assert got["offline"] is None  # aws's catalog is neither seeded nor downloadable: unknown
    assert "Failed to fetch" not in done.stderr  # SkyPilot's own offline noise is silenced


@pytest.mark.parametrize("spec", ["H100", "H100:1"])
def test_an_accelerator_without_a_count_is_one(spec: str) -> None:
    rate = cost.hourly_rate(launch(accelerators=spec), lambda n, c, *a: [Offer("x", None, None, float(c))])
    assert rate.usd_per_node_hour == 1.0
