"""``python -m imagesmith``: the same as the ``imagesmith`` console script."""

from .cli import entry_point

entry_point()
