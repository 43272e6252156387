"""How `lifecycle serve` sets up the router: which policy file, the prompt key kept under the home, OTLP only when
configured."""

from __future__ import annotations

import stat
from pathlib import Path

from lifecycle.serve import routing
from lifecycle.settings import load_settings


def test_the_policy_is_the_one_given_else_routing_yaml_beside_the_pool(tmp_path: Path) -> None:
    pool = tmp_path / "serving" / "pool.yaml"
    pool.parent.mkdir()
    pool.write_text("deployments: []\n")
    assert routing.policy_for(pool, None) is None  # no policy: the plain front
    (pool.parent / "routing.yaml").write_text("tenants: []\n")
    assert routing.policy_for(pool, None) == pool.parent / "routing.yaml"
    assert routing.policy_for(pool, tmp_path / "other.yaml") == tmp_path / "other.yaml"


def test_the_prompt_key_is_made_once_private_and_kept(tmp_path: Path) -> None:
    settings = load_settings(env={"LIFECYCLE_HOME": str(tmp_path)}, cwd=tmp_path)
    key = routing.prompt_key(settings, {})
    path = tmp_path / "router" / "prompt-hmac.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(key) == 64
    assert routing.prompt_key(settings, {}) == key  # the same key after a restart: HMACs stay comparable
    assert routing.prompt_key(settings, {routing.HMAC_KEY_ENV: "k" * 32}) == b"k" * 32
    assert routing.audit_path(settings) == tmp_path / routing.AUDIT_LOG


def test_spans_are_exported_only_where_an_otlp_endpoint_is_configured() -> None:
    assert routing.tracer_provider({}) is None
    provider = routing.tracer_provider({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    assert provider is not None
    assert provider.resource.attributes["service.name"] == "lifecycle"
    provider.shutdown()
