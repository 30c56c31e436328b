"""The version of imagesmith, in one place."""

__version__ = "0.1.0"
