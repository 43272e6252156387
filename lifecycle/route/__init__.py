"""The router's policy (`serving/routing.yaml`) and its pure decisions: which backend, in which order, and why.

policy.py   the file: tenants (hashed keys, cost classes, residency, budget), upstreams, routes, timeouts, health
load.py     YAML with line numbers (the recipe loader's machinery) and the checks across the policy and the pool
targets.py  a route target resolved through the pool: deployment, adapter, NAME@production or upstream
decide.py   auth -> residency -> prompt shape -> cost class -> health -> replica: the fallback list (pure)
budget.py   budgets reserved before a call and settled after it (pure), and the SQLite store behind a Protocol
"""
