"""``Closing``: the ``with`` statement over ``close()``, written once.

A class that holds something to release (connections, a file, a cache's sources) defines
``close()`` and inherits ``Closing``: ``with obj:`` gives ``obj`` and closes it on the way
out, whether the block raised or not.
"""

from __future__ import annotations

from typing import TypeVar

__all__ = ["Closing"]

_C = TypeVar("_C", bound="Closing")


class Closing:
    """A resource released by :meth:`close`; usable as a context manager."""

    __slots__ = ()

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
