"""``python -m imagesmith``: the same as the ``imagesmith`` console script."""

from imagesmith.cli import entry_point

entry_point()
