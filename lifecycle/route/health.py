"""Which backends are up: the pool's live replicas (handed over by the pool runner) minus those the router's own
checks found dead, and the upstreams that answer.

`observe` (pure) moves one backend's standing after a check: down after `unhealthy_after` failures in a row, up
again after `healthy_after` passes. `HealthChecks` runs the checks concurrently, with auth for upstreams
(`GET {base_url}/models`, as the providers answer it) and `GET /health` for replicas (vLLM's). Every backend
starts up: a request that cannot connect to it falls back and counts as a failed check (`failed`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from lifecycle.route.decide import Health
from lifecycle.route.policy import Health as HealthRules
from lifecycle.route.targets import Replica
from lifecycle.route.upstream import TRANSPORT_ERRORS, Client

log = logging.getLogger(__name__)


class Backend(Protocol):
    """A replica as the pool runner hands it over (lifecycle.serve.front.Backend has these fields)."""

    @property
    def url(self) -> str: ...
    @property
    def deployment(self) -> str: ...


@dataclass(frozen=True)
class Standing:
    up: bool = True
    fails: int = 0
    passes: int = 0


@dataclass(frozen=True)
class Probe:
    """One check: `key` is a replica's URL or an upstream's name."""

    key: str
    url: str
    headers: Mapping[str, str]


def observe(standing: Standing, ok: bool, rules: HealthRules) -> Standing:
    """The standing after one check."""
    if ok:
        passes = standing.passes + 1
        return Standing(up=standing.up or passes >= rules.healthy_after, fails=0, passes=passes)
    fails = standing.fails + 1
    return Standing(up=standing.up and fails < rules.unhealthy_after, fails=fails, passes=0)


def replicas_from_routes(routes: Mapping[str, Sequence[Backend]]) -> dict[str, tuple[Replica, ...]]:
    """Deployment -> its live replicas, from the runner's routes (served name -> replicas). A served name that is
    not its deployment's is an adapter loaded on those replicas."""
    adapters: dict[str, set[str]] = {}
    by_deployment: dict[str, dict[str, None]] = {}
    for name, backends in routes.items():
        for b in backends:
            by_deployment.setdefault(b.deployment, {})[b.url] = None
            if name != b.deployment:
                adapters.setdefault(b.url, set()).add(name)
    return {
        deployment: tuple(Replica(url, deployment, frozenset(adapters.get(url, ()))) for url in urls)
        for deployment, urls in by_deployment.items()
    }


def snapshot(
    replicas: Mapping[str, tuple[Replica, ...]], upstreams: Iterable[str], standings: Mapping[str, Standing]
) -> Health:
    """What `decide.plan` sees: the replicas and upstreams whose last checks left them up."""

    def up(key: str) -> bool:
        return standings.get(key, Standing()).up

    return Health(
        replicas={d: tuple(r for r in rs if up(r.url)) for d, rs in replicas.items()},
        upstreams=frozenset(u for u in upstreams if up(u)),
    )


class HealthChecks:
    """The standings of every backend, and the checks that move them. Runs on the router's event loop."""

    def __init__(self) -> None:
        self.standings: Mapping[str, Standing] = {}  # replaced whole, never changed in place

    async def check(self, client: Client, probes: Sequence[Probe], rules: HealthRules) -> None:
        """Check every probe once, concurrently; forget backends that are no longer probed."""
        results = await asyncio.gather(*(self._ok(client, p, rules.timeout_s) for p in probes))
        fresh: dict[str, Standing] = {}
        for probe, ok in zip(probes, results, strict=True):
            before = self.standings.get(probe.key, Standing())
            after = observe(before, ok, rules)
            if after.up != before.up:
                log.warning("backend %s is %s", probe.key, "up again" if after.up else "down")
            fresh[probe.key] = after
        self.standings = fresh

    def failed(self, key: str, rules: HealthRules) -> None:
        """A request could not connect to backend `key`: that counts as a failed check, so a replica that died
        between checks is taken out by the requests that find it, not only by the next check."""
        before = self.standings.get(key, Standing())
        after = observe(before, False, rules)
        if after.up != before.up:
            log.warning("backend %s is down (a request could not connect)", key)
        self.standings = {**self.standings, key: after}

    @staticmethod
    async def _ok(client: Client, probe: Probe, timeout_s: float) -> bool:
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        try:
            async with client.get(probe.url, headers=dict(probe.headers), timeout=timeout) as response:
                await response.read()  # read to the end, so that the connection is kept for the next check
                return response.status < 300
        except TRANSPORT_ERRORS:
            return False
