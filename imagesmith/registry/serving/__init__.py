"""The embedded registry's parts (see :mod:`imagesmith.registry.server`)."""
