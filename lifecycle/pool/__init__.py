"""The serving pool's desired state (`serving/pool.yaml`): schema, loading, the reconcile diff, verification.

schema.py   the file: deployments pinning registered versions, engine, replicas, adapters, residency, price
load.py     YAML with line numbers (the recipe loader's machinery) and the checks across deployments
pins.py     a registered version's lineage tags <-> what a deployment pins; evidence a promotion needs
diff.py     current pool -> desired pool: the ordered actions (pure)
verify.py   every pin against the registry: what CI runs on a promotion's pull request
aliases.py  the registry's production/previous aliases as outputs of an applied change (a compare-and-set)
drift.py    where the registry's aliases or the running pool disagree with the file (pure)
"""
