"""Progress bars: the one way the stages make a counting bar, and a listener that hears every bar's updates.

``bar(...)`` takes ``tqdm``'s arguments and returns a ``tqdm.auto`` bar whose ``update(n)`` also calls the listener
set by ``listening(fn)`` (``fn(n)``, in the current context), so that a run's overall line
(``culnig_ext.studies.progress``) counts the items of every stage without the stages knowing of it. The listener
hears the updates whether the bar is shown or not (``disable=True``).
"""
from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Any, Callable, Iterator

from tqdm.auto import tqdm

_LISTENER: ContextVar[Callable[[int], None] | None] = ContextVar("culnig_progress_listener", default=None)


class _CountingBar(tqdm):
    """A tqdm bar that also reports each ``update(n)`` to the listener."""

    def update(self, n: float | None = 1) -> bool | None:
        listener = _LISTENER.get()
        if listener is not None and n:
            listener(int(n))
        return super().update(n)


def bar(**kwargs: Any) -> tqdm:
    """A progress bar (``tqdm.auto.tqdm(**kwargs)``) whose updates the current listener hears."""
    return _CountingBar(**kwargs)


@contextlib.contextmanager
def listening(listener: Callable[[int], None]) -> Iterator[None]:
    """Every ``bar`` updated while the body runs calls ``listener(n)`` with the items it advanced by."""
    token = _LISTENER.set(listener)
    try:
        yield
    finally:
        _LISTENER.reset(token)
