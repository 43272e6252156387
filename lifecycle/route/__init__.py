"""The router's policy (`serving/routing.yaml`) and its pure decisions: which backend, in which order, and why.

policy.py   the file: tenants (hashed keys, cost classes, residency, budget), upstreams, routes, timeouts, health
load.py     YAML with line numbers (the recipe loader's machinery) and the checks across the policy and the pool
targets.py  a route target resolved through the pool: deployment, adapter, NAME@production or upstream
decide.py   auth -> residency -> prompt shape -> cost class -> health -> replica: the fallback list (pure)
budget.py   budgets reserved before a call and settled after it (pure), and the SQLite store behind a Protocol
audit.py    the append-only, hash-chained record of every request (never its text); chain.py checks the chain,
            export.py writes and checks a signed per-tenant export
telemetry.py  OpenTelemetry GenAI span attributes per upstream attempt, the prompt's keyed HMAC, traceparent
metrics.py  Prometheus metric definitions and the guard that keeps their label sets bounded
"""
