"""The running side of the serving pool: `lifecycle serve` runs `serving/pool.yaml` on this machine.

artifacts: the pinned weights, fetched from the registry and verified before any server starts.
pool: the runner that starts, checks, supervises and reconciles replicas (the pure plan is lifecycle.pool.diff).
front: the stable endpoint clients call; it follows the runner's routes and never drops a request mid-rollout.
control: the local API through which `lifecycle serve --status` and `lifecycle apply` reach a running pool.
"""
