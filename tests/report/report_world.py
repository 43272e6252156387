"""Synthetic traffic of every cost class, written through the real audit log, over a pool and a price sheet
small enough to check by hand.

Ten hours, T0 to T0 + 10 h:
- `support` route, pool deployment chat-a (support-bot v3, 2 replicas x 1 GPU at $2.50/GPU-hour): 40 requests of
  1,000 input + 250 output tokens; one more an hour before T0 (it counts towards the version's tokens so far);
- `bulk` route, hosted upstream llama-hosted ($0.88 / $0.88 per million): 30 requests of 2,000 + 500;
- `frontier` route, frontier upstream gpt-frontier ($3 / $15 per million): 20 requests of 1,500 + 700;
- one request refused before any upstream;
- chat-idle (other-bot v1, 1 replica x 2 GPUs at $4/GPU-hour) serves nothing.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

from lifecycle.pool.schema import Deployment, Pool, Quantization, RegisteredModel
from lifecycle.route.audit import Attempt, AuditLog, AuditRecord
from lifecycle.route.budget import cost
from lifecycle.route.policy import Price, Route, RoutingPolicy, Tenant, Upstream, hash_key

T0 = datetime(2026, 3, 1, 0, 0, tzinfo=timezone.utc)
T_END = T0 + timedelta(hours=10)
HOSTED = Upstream(
    name="llama-hosted",
    cost_class="hosted",
    provider="together_ai",
    base_url="https://hosted.invalid/v1",
    model="llama-70b",
    region="us-east-1",
    price=Price(input_per_million=0.88, output_per_million=0.88),
)
FRONTIER = Upstream(
    name="gpt-frontier",
    cost_class="frontier",
    provider="openai",
    base_url="https://frontier.invalid/v1",
    model="gpt-x",
    region="us",
    price=Price(input_per_million=3.0, output_per_million=15.0),
)
PRICES = {HOSTED.name: HOSTED.price, FRONTIER.name: FRONTIER.price}
ON_PREM = Attempt("chat-a", "vllm", None, "self_hosted", "ok")
ON_PREM_DOWN = Attempt("chat-a", "vllm", None, "self_hosted", "503")
TO_HOSTED = Attempt("llama-hosted", "together_ai", "us-east-1", "external", "ok")
TO_FRONTIER = Attempt("gpt-frontier", "openai", "us", "external", "ok")


def _registered(name: str, version: int) -> RegisteredModel:
    return RegisteredModel(
        name=name,
        version=version,
        artifact=f"mlflow-artifacts:/{name}/{version}/served-model",
        manifest_digest="1" * 64,
        quantization=Quantization(scheme="FP8_DYNAMIC", config_sha256="2" * 64),
        recipe_sha256="3" * 64,
        base_model="builtin:tiny",
    )


POOL = Pool(
    deployments=[
        Deployment(
            name="chat-a",
            model=_registered("support-bot", 3),
            replicas=2,
            residency="self_hosted",
            gpus_per_replica=1,
            price_per_gpu_hour=2.5,
        ),
        Deployment(
            name="chat-idle",
            model=_registered("other-bot", 1),
            replicas=1,
            residency="self_hosted",
            gpus_per_replica=2,
            price_per_gpu_hour=4.0,
        ),
    ]
)
POLICY = RoutingPolicy(
    tenants=[
        Tenant(
            name="acme",
            keys=[hash_key("acme-key")],
            cost_classes=["pool", "hosted", "frontier"],
            residency="any",
        ),
        Tenant(name="regulated", keys=[hash_key("reg-key")], cost_classes=["pool"], residency="self_hosted"),
    ],
    upstreams=[HOSTED, FRONTIER],
    routes=[
        Route(name="support", targets=["chat-a"]),
        Route(name="bulk", targets=["llama-hosted"]),
        Route(name="frontier", targets=["gpt-frontier"]),
    ],
)


def record(
    i: int,
    route: str,
    attempts: tuple[Attempt, ...],
    tokens: tuple[int, int],
    *,
    tenant: str = "acme",
    residency: str = "any",
    at: datetime | None = None,
) -> AuditRecord:
    """A request as the router records it: its cost the price sheet's (the pool's $0), as a Decimal of the float."""
    last = attempts[-1] if attempts else None
    upstream = {HOSTED.name: HOSTED, FRONTIER.name: FRONTIER}.get(last.backend) if last else None
    pool = last is not None and upstream is None
    received = at or T0 + timedelta(minutes=6 * i + 1)
    return AuditRecord(
        request_id=f"req-{i}",
        tenant=tenant,
        route=route,
        residency=residency,
        cost_class=upstream.cost_class if upstream else "pool" if pool else "none",
        attempts=attempts,
        model_name="support-bot" if pool else None,
        model_version=3 if pool else None,
        quantization_scheme="FP8_DYNAMIC" if pool else None,
        quantization_config_sha256="2" * 64 if pool else None,
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        cost_usd=Decimal(str(cost(upstream.price if upstream else None, *tokens))),
        prompt_hmac="ab" * 32,
        hmac_key_id="0123456789abcdef",
        received_at=received,
        finished_at=received + timedelta(seconds=2),
        outcome="ok" if last else "rejected",
    )


def write_traffic(path: Path) -> list[AuditRecord]:
    """The module docstring's traffic, through the real AuditLog; returns the records in log order."""
    records = [record(900, "support", (ON_PREM,), (1000, 250), at=T0 - timedelta(hours=1))]
    for i in range(90):
        if i < 40:
            records.append(record(i, "support", (ON_PREM,), (1000, 250)))
        elif i < 70:
            records.append(record(i, "bulk", (ON_PREM_DOWN, TO_HOSTED), (2000, 500)))
        else:
            records.append(record(i, "frontier", (TO_FRONTIER,), (1500, 700)))
    records.append(record(95, "support", (), (0, 0)))
    with AuditLog(path) as audit:
        for r in records:
            audit.append(r)
    return records


def plant_misroute(path: Path, copy: Path) -> None:
    """A copy of the log with a request of the self_hosted tenant that failed over to a frontier API."""
    copy.write_bytes(path.read_bytes())
    with AuditLog(copy) as audit:
        audit.append(
            record(
                96,
                "support",
                (ON_PREM_DOWN, TO_FRONTIER),
                (800, 100),
                tenant="regulated",
                residency="self_hosted",
                at=T0 + timedelta(hours=9, minutes=58),
            )
        )
