"""One SkyServe replica (`lifecycle worker serve-replica`, the `run` of every service file): the deployment's
pinned weights and adapters fetched and verified against the pinned digests (lifecycle.serve.artifacts), then
vLLM's command line and environment, exactly as a local replica gets them (lifecycle.pool.engine.replica_spec,
lifecycle.engines.vllm.server_command and server_env). A changed byte or a vanished artifact stops here:
vLLM never starts, the readiness probe never passes, SkyServe never routes to it."""

from __future__ import annotations

from collections.abc import Mapping

from lifecycle.engines.vllm import (
    CPU_SITECUSTOMIZE,
    check_model_dir,
    detect_device,
    server_command,
    server_env,
)
from lifecycle.errors import ServeError, UserInputError
from lifecycle.pool.engine import replica_spec
from lifecycle.pool.load import LoadedPool
from lifecycle.pool.sky import replica_sha256
from lifecycle.settings import Settings

HOST = "0.0.0.0"  # SkyServe's load balancer reaches the replica from another machine


def replica_command(
    loaded: LoadedPool,
    deployment: str,
    settings: Settings,
    *,
    port: int,
    expect: str | None,
    kv_cache_gib: int,
    base_env: Mapping[str, str],
) -> tuple[list[str], dict[str, str]]:
    """The vLLM command line and environment for one replica of `deployment`, its artifacts verified first."""
    from lifecycle.promote.versions import OnDemandVersions
    from lifecycle.serve.artifacts import Artifacts

    d = loaded.pool.deployment(deployment)
    if d is None:
        names = ", ".join(x.name for x in loaded.pool.deployments) or "none"
        raise UserInputError(f"{loaded.path}: no deployment {deployment!r} (deployments: {names})")
    if expect is not None and expect != replica_sha256(d):
        raise ServeError(
            f"deployment {deployment!r}: {loaded.path} pins another replica ({replica_sha256(d)[:12]}…) than "
            f"this service was rendered for ({expect[:12]}…): the workdir and the service file disagree"
        )
    artifacts = Artifacts(OnDemandVersions(settings), settings.cache_dir)
    spec = replica_spec(d, artifacts.model_dir(d), artifacts.adapter_dirs(d))
    check_model_dir(spec)
    python = settings.serve_python
    device = detect_device(python)
    site_dir = None
    if device == "cpu":
        site_dir = settings.cache_dir / "vllm-cpu-site"
        site_dir.mkdir(parents=True, exist_ok=True)
        (site_dir / "sitecustomize.py").write_text(CPU_SITECUSTOMIZE)
    argv = server_command(spec, python=python, host=HOST, port=port, device=device)
    env = server_env(spec, base=base_env, device=device, kv_cache_gib=kv_cache_gib, site_dir=site_dir)
    return argv, env
