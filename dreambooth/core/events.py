"""Progress events of a training run, for a watcher in the same process (the web UI's worker).

The loop reports what it already prints (plan, step and loss, validation grids, export) as plain
dicts; nobody listens in the CLI, so there it costs one empty loop per step. Listeners must be
quick and must not raise: a watcher never stops a run.
"""

from __future__ import annotations

from typing import Any, Callable

Listener = Callable[[str, dict[str, Any]], None]
_LISTENERS: list[Listener] = []


def subscribe(listener: Listener) -> None:
    _LISTENERS.append(listener)


def unsubscribe(listener: Listener) -> None:
    if listener in _LISTENERS:
        _LISTENERS.remove(listener)


def emit(kind: str, **data: Any) -> None:
    for listener in list(_LISTENERS):
        try:
            listener(kind, data)
        except Exception:   # noqa: BLE001 - a broken watcher must not end a training run
            pass
