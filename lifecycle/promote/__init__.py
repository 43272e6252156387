"""Promotion by pull request: a registered version that passed its gate becomes a change to `serving/pool.yaml`
on its own branch, pushed, with a pull request carrying the gate report, lineage, cost and the pool diff.

    promote.py  the promotion itself: refuse what must not serve, edit the pool, commit, push, open the PR;
                a rollback is the same path for the version the model's `previous` alias names
    edit.py     the pool file edited in place (comments and order kept)
    body.py     the commit message and the pull request's text (pure)
    versions.py what promotion and verification read from the registry
    git.py      the only module running git
    github.py   the only module speaking GitHub's REST API
"""
