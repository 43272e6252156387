"""The router in front of the pool, set up from the settings: which policy file, where its audit log, budgets
and prompt key live, and where its spans go. Wiring only; the router itself is lifecycle.route.server.

- policy: `--policy FILE`, else `routing.yaml` beside the pool file when there is one; none, the plain front.
- audit log: HOME/router/audit.jsonl (append-only, hash-chained; `lifecycle report` reads it).
- budgets: HOME/router/budgets.sqlite (reserved before a call, settled after; survives a restart).
- prompt key: LIFECYCLE_PROMPT_HMAC_KEY, else a random key made once and kept in HOME/router/prompt-hmac.key
  (0600), so prompt HMACs stay comparable across restarts and a guess at a short prompt cannot be checked
  without the key.
- spans: to OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set (the standard
  OpenTelemetry variables, so headers, timeouts and service name follow them too); else to whatever tracer
  provider the process has (none: spans are made and dropped).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from lifecycle.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from lifecycle.pool.schema import Pool
    from lifecycle.route.load import LoadedPolicy
    from lifecycle.route.server import Router

POLICY_FILE = "routing.yaml"
HMAC_KEY_ENV = "LIFECYCLE_PROMPT_HMAC_KEY"
AUDIT_LOG = Path("router") / "audit.jsonl"  # under the home
OTLP_ENVS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def router_dir(settings: Settings) -> Path:
    return settings.home / "router"


def audit_path(settings: Settings) -> Path:
    return settings.home / AUDIT_LOG


def budgets_path(settings: Settings) -> Path:
    return router_dir(settings) / "budgets.sqlite"


def policy_for(pool_file: Path, given: Path | None) -> Path | None:
    """The policy file to route by: the one given, else `routing.yaml` beside the pool file, else None."""
    if given is not None:
        return given
    beside = pool_file.parent / POLICY_FILE
    return beside if beside.is_file() else None


def prompt_key(settings: Settings, env: Mapping[str, str]) -> bytes:
    """The key of the prompts' HMAC: the environment's, else the one kept under the home (made on first use)."""
    given = env.get(HMAC_KEY_ENV)
    if given:
        return given.encode()
    path = router_dir(settings) / "prompt-hmac.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    return path.read_text().strip().encode()


def tracer_provider(env: Mapping[str, str]) -> TracerProvider | None:
    """An SDK provider exporting to OTLP/HTTP in batches when an OTLP endpoint is configured, else None."""
    if not any(env.get(name) for name in OTLP_ENVS):
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(
        resource=Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", "lifecycle")})
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def router_endpoint(
    loaded: LoadedPolicy,
    pool: Pool,
    settings: Settings,
    *,
    host: str,
    port: int,
    env: Mapping[str, str] | None = None,
) -> Callable[[], Router]:
    """What `RunningPool` calls to open the pool's endpoint: the router, started, with its state under the home."""
    from lifecycle.route.audit import AuditLog
    from lifecycle.route.budget import SqliteBudgets
    from lifecycle.route.server import Router

    environment = dict(os.environ if env is None else env)

    def start() -> Router:
        router_dir(settings).mkdir(parents=True, exist_ok=True)
        return Router(
            loaded,
            audit=AuditLog(audit_path(settings)),
            hmac_key=prompt_key(settings, environment),
            env=environment,
            budgets=SqliteBudgets(budgets_path(settings)),
            pool=pool,
            host=host,
            port=port,
            tracer_provider=tracer_provider(environment),
        ).start()

    return start
