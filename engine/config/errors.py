"""The one error a bad configuration raises (its own module: the checks raise it too)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad configuration: the message is one line naming the key and the fix."""
