"""The promotion tests' fixtures (defined in promote_world.py, whose helpers the tests import by that name)."""

from promote_world import checkout, github, store

__all__ = ["checkout", "github", "store"]
