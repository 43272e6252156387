"""The routing policy is validated like a recipe: every error at once, FILE:LINE, did-you-mean, never a key in
the file; and its routes are checked against the pool they resolve through."""

from __future__ import annotations

from pathlib import Path

import pytest
from route_world import SHA, deployment, pool

from lifecycle.errors import RecipeError
from lifecycle.pool.load import is_pool_file
from lifecycle.route.load import is_policy_file, load_policy, parse_policy
from lifecycle.route.policy import hash_key

REPO = Path(__file__).parents[2]
KEY_A, KEY_B = hash_key("key-a"), hash_key("key-b")

GOOD = f"""\
# a policy
tenants:
  - name: product
    keys: [{KEY_A}]
    cost_classes: [pool, frontier]
    residency: any
    budget:
      period: day
      dollars: 5
  - name: regulated
    keys: [{KEY_B}]
    cost_classes: [pool]
    residency: self_hosted
upstreams:
  - name: frontier
    cost_class: frontier
    provider: openai
    base_url: https://api.openai.com/v1
    model: gpt-4.1
    api_key_env: OPENAI_API_KEY
    region: us-east-1
    price: {{input_per_million: 2, output_per_million: 8}}
routes:
  - name: chat
    targets:
      - support
      - demo-support@production
      - target: frontier
        min_input_tokens: 100
  - name: tickets
    targets: [tickets]
"""

POOL = pool(
    deployment("support", model="demo-support", version=3, structured=True),
    deployment("tiny-base", base=True, adapters=(("tickets", "demo-tickets", 1),)),
)


def problems(tmp_path: Path, text: str, the_pool: object = POOL) -> list[str]:
    path = tmp_path / "routing.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as caught:
        load_policy(path, the_pool)  # type: ignore[arg-type]
    assert caught.value.exit_code == 2
    return caught.value.problems


def test_the_shipped_policy_validates_against_the_shipped_pool() -> None:
    path = REPO / "serving" / "routing.yaml"
    loaded = load_policy(path)  # resolves `pool: pool.yaml` beside it
    assert is_policy_file(path) and not is_pool_file(path)
    assert not is_policy_file(REPO / "serving" / "pool.yaml") and not is_policy_file(
        REPO / "recipes" / "demo.yaml"
    )
    assert path.read_text().startswith("# ") and "lifecycle validate serving/routing.yaml" in path.read_text()
    assert {t.residency for t in loaded.policy.tenants} == {"any", "self_hosted"}
    assert all(len(key) == 64 for t in loaded.policy.tenants for key in t.keys)


def test_a_full_policy_validates(tmp_path: Path) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(GOOD)
    loaded = load_policy(path, POOL)
    chat = loaded.policy.route("chat")
    assert chat is not None and [t.target for t in chat.targets] == [
        "support",
        "demo-support@production",
        "frontier",
    ]
    assert chat.targets[2].min_input_tokens == 100 and chat.targets[1].production_of == "demo-support"
    assert loaded.policy.timeouts.first_byte_s == 60 and loaded.policy.health.interval_s == 5


def test_every_schema_error_at_once_with_its_line(tmp_path: Path) -> None:
    text = (
        GOOD.replace(f"keys: [{KEY_A}]", "keys: [sk-live-abc123]")
        .replace("cost_classes: [pool]", "cost_classes: [pol]")
        .replace("residency: self_hosted", "residency: on_prem")
        .replace("api_key_env: OPENAI_API_KEY", "api_key_env: sk-proj-0123456789abcdefghijklmnop")
        .replace("cost_class: frontier", "cost_clas: frontier")
        .replace("- demo-support@production", "- demo-support@previous")
        .replace("min_input_tokens: 100", "min_input_tokens: 100\n        max_input_tokens: 50")
        .replace("      dollars: 5\n", "")  # the lines below move up by one
    )
    found = problems(tmp_path, text)
    path = tmp_path / "routing.yaml"
    expected = [
        (f"{path}:4: tenants.0.keys.0: expected the sha256 of an API key", "never holds a key"),
        (f"{path}:7: tenants.0.budget: a budget needs `tokens`, `dollars` or both", ""),
        (f"{path}:11: tenants.1.cost_classes.0: unknown value 'pol'; did you mean 'pool'?", "'frontier'"),
        (f"{path}:12: tenants.1.residency: unknown value 'on_prem'", "'self_hosted', 'rented', 'any'"),
        (f"{path}:15: upstreams.0.cost_clas: unknown field 'cost_clas'; did you mean 'cost_class'?", ""),
        (f"{path}:14: upstreams.0.cost_class: required field is missing", ""),
        (f"{path}:19: upstreams.0.api_key_env: expected the NAME of an environment variable", "not a key"),
        (f"{path}:26: routes.0.targets.1: unknown alias 'previous'", "NAME@production"),
        (f"{path}:27: routes.0.targets.2: min_input_tokens (100) is above max_input_tokens (50)", ""),
    ]
    for start, part in expected:
        assert any(p.startswith(start) and part in p for p in found), (start, found)
    assert len(found) == len(expected), found
    assert all("sk-" not in p for p in found)  # a key pasted by mistake is not echoed back


def test_rules_across_the_policy_and_the_pool(tmp_path: Path) -> None:
    text = (
        GOOD.replace("name: regulated", "name: product")
        .replace(f"keys: [{KEY_B}]", f"keys: [{KEY_A}]")
        .replace("      - support\n", "      - suport\n      - frontier\n")
        .replace("targets: [tickets]", "targets: [demo-tickets@production, demo-tikets@production]")
    )
    text += """\
  - name: tickets
    targets: [tickets]
"""
    found = problems(tmp_path, text)
    path = tmp_path / "routing.yaml"
    assert found == [
        f"{path}:10: tenants.1.name: tenant 'product' is already defined: names must be unique",
        f"{path}:33: routes.2.name: route 'tickets' is already defined: names must be unique",
        f"{path}:11: tenants.1.keys.0: this key hash is already tenant 'product''s: a key maps to one tenant",
        f"{path}:26: routes.0.targets.0.target: 'suport' is no deployment, adapter or upstream; did you mean "
        "'support'?",
        f"{path}:29: routes.0.targets.3.target: 'frontier' is already a target of this route",
        f"{path}:32: routes.1.targets.1.target: the pool pins no version of registered model 'demo-tikets'; did "
        "you mean 'demo-tickets'?",
    ]


def test_a_canary_leaves_production_undefined_and_an_upstream_may_not_shadow_a_deployment(
    tmp_path: Path,
) -> None:
    canary = pool(*POOL.deployments, deployment("support-canary", model="demo-support", version=4))
    found = problems(tmp_path, GOOD.replace("- name: frontier", "- name: support-canary"), canary)
    path = tmp_path / "routing.yaml"
    assert found[0] == (
        f"{path}:15: upstreams.0.name: 'support-canary' is also served by pool deployment 'support-canary': a "
        "route target must name one thing"
    )
    assert found[1].startswith(
        f"{path}:27: routes.0.targets.1.target: registered model 'demo-support' is pinned at 2 versions "
        "(v3 (support), v4 (support-canary))"
    )
    assert len(found) == 3 and "'frontier' is no deployment" in found[2]


def test_the_pool_file_it_names_is_loaded_and_its_problems_located(tmp_path: Path) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text("pool: missing.yaml\n" + GOOD)
    with pytest.raises(RecipeError) as caught:
        load_policy(path)
    assert caught.value.problems == [
        f"{path}:1: pool: {tmp_path / 'missing.yaml'} cannot be read as a pool file:",
        f"{tmp_path / 'missing.yaml'}: no such file",
    ]
    (tmp_path / "missing.yaml").write_text("deployments: []\n")
    found = problems(tmp_path, "pool: missing.yaml\n" + GOOD, None)
    assert any("'support' is no deployment" in p for p in found)


def test_a_bad_reload_is_refused_whole(tmp_path: Path) -> None:
    """What a hot reload relies on: a bad text raises with every problem and yields nothing to swap in."""
    path = tmp_path / "routing.yaml"
    good = parse_policy(GOOD, path, POOL)
    with pytest.raises(RecipeError) as caught:
        parse_policy(GOOD.replace("residency: any", "residency: anywhere"), path, POOL)
    assert caught.value.problems[0].startswith(f"{path}:6: tenants.0.residency: unknown value 'anywhere'")
    assert good.policy.tenants[0].residency == "any"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("routes: [\n", "invalid YAML"),
        ("", "the file is empty"),
        ("route: []\n", "unknown field 'route'; did you mean 'routes'?"),
        ("routes:\n  - name: chat\n    targets: []\n", "List should have at least 1 item"),
        (f"health: {{interval_s: 1, timeout_s: 2}}\nroutes: []\n# {SHA}\n", "timeout_s (2.0) is longer"),
    ],
)
def test_bad_files(tmp_path: Path, text: str, message: str) -> None:
    found = problems(tmp_path, text)
    assert len(found) == 1 and message in found[0], found
    assert found[0].startswith(f"{tmp_path / 'routing.yaml'}:")
