"""lifecycle: turn a recipe into a served, versioned, quality-gated model."""

__version__ = "0.1.0"
