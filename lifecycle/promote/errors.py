"""What a promotion raises, in the platform's hierarchy (lifecycle.errors)."""

from __future__ import annotations

from lifecycle.errors import LifecycleError, UserInputError


class PromotionRefused(UserInputError):
    """The version may not be promoted, or not from here (a failed gate, a dirty pool file...): nothing was
    written. Exit code 2."""


class PromotionFailed(LifecycleError):
    """A step with an outside system failed (git push, GitHub); the message says what was left where."""
