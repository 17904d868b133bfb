"""Training callbacks: the hooks ``fit`` calls (the JSON-lines logger is in
``_json_lines.py``, history plots in ``_history_plot.py``).

A callback is an object with up to three hooks, called by ``fit`` on the host:
``on_train_begin(info)``, ``on_epoch_end(epoch, logs, state)`` (return ``True`` to stop)
and ``on_train_end(history)``. Each hook also works standalone, without ``fit``.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

__all__ = [
    "Callback",
    "as_callbacks",
]

_HOOKS = {
    "on_train_begin": (1, "on_train_begin(info)"),
    "on_epoch_end": (3, "on_epoch_end(epoch, logs, state)"),
    "on_train_end": (1, "on_train_end(history)"),
}


class Callback:
    """Base class of training callbacks; every hook is optional (a no-op here).

    Subclass it and override the hooks you need. ``fit`` calls them on the host, in the
    order the callbacks were given.

    Examples:
      >>> import jnn
      >>> class StopBelow(jnn.Callback):
      ...     def on_epoch_end(self, epoch, logs, state):
      ...         return logs["loss"] < 0.1
      >>> StopBelow().on_epoch_end(3, {"loss": 0.05}, None)
      True
    """

    def on_train_begin(self, info: dict[str, Any]) -> None:
        """Called before the first epoch; ``info`` holds ``epochs``, ``steps_per_epoch``,
        ``initial_epoch``, ``mode``, ..."""
        del info

    def on_epoch_end(self, epoch: int, logs: dict[str, float], state: Any) -> bool | None:
        """Called after each epoch (from 1) and its evaluation, with the epoch's means
        (``loss``, metrics, ``eval_*``) and the ``jnn.TrainState``; ``True`` stops training."""
        del epoch, logs, state
        return None

    def on_train_end(self, history: dict[str, list[float]]) -> None:
        """Called after the last epoch with the whole history."""
        del history


@dataclasses.dataclass(frozen=True)
class _EpochEndFunction(Callback):
    """A plain function ``f(epoch, logs, state)`` used as ``on_epoch_end``."""

    fn: Callable[[int, dict, Any], bool | None]

    def on_epoch_end(self, epoch, logs, state):
        return self.fn(epoch, logs, state)


@dataclasses.dataclass(frozen=True)
class _ForeignCallback(Callback):
    """An object with callable hooks that does not subclass ``Callback``; the hooks it
    lacks do nothing."""

    wrapped: Any

    def _call(self, hook: str, *args: Any) -> Any:
        return getattr(self.wrapped, hook)(*args) if hasattr(self.wrapped, hook) else None

    def on_train_begin(self, info):
        self._call("on_train_begin", info)

    def on_epoch_end(self, epoch, logs, state):
        return self._call("on_epoch_end", epoch, logs, state)

    def on_train_end(self, history):
        self._call("on_train_end", history)


def _check_call(name: str, where: str, fn: Callable, nargs: int, expected: str) -> None:
    """Refuse a function that cannot take ``nargs`` positional arguments, before training."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # a builtin without a signature: trust it
    try:
        signature.bind(*range(nargs))
    except TypeError:
        raise TypeError(
            f"{name}: {where} cannot be called as {expected}; its signature is {signature}."
        ) from None


def _as_callback(name: str, where: str, obj: Any) -> Callback:
    hooks = [hook for hook in _HOOKS if hasattr(obj, hook)]
    if isinstance(obj, type):
        hint = (
            f"instantiate it, e.g. {obj.__name__}(...)."
            if issubclass(obj, Callback) or hooks
            else "pass a jnn.Callback instance or a function f(epoch, logs, state)."
        )
        raise TypeError(
            f"{name}: expected {where} to be a callback instance, got the class "
            f"{obj.__name__}. Hint: {hint}"
        )
    if isinstance(obj, Callback) or hooks:
        for hook in hooks:
            fn = getattr(obj, hook)
            if not callable(fn):
                raise TypeError(
                    f"{name}: expected {where}.{hook} to be a method, got {type(fn).__name__}."
                )
            _check_call(name, f"{where}.{hook}", fn, *_HOOKS[hook])
        return obj if isinstance(obj, Callback) else _ForeignCallback(obj)
    if callable(obj):
        _check_call(name, where, obj, 3, "f(epoch, logs, state)")
        return _EpochEndFunction(obj)
    if isinstance(obj, str):
        hint = " Hint: pass the callback object itself, not its name."
    elif isinstance(obj, list | tuple):
        hint = " Hint: pass one flat list of callbacks."
    else:
        hint = ""
    raise TypeError(
        f"{name}: expected {where} to be a jnn.Callback or a function f(epoch, logs, state), "
        f"got {type(obj).__name__}.{hint}"
    )


def as_callbacks(name: str, callbacks: Any) -> tuple[Callback, ...]:
    """Check a ``callbacks`` argument and return it as a tuple of ``Callback``.

    Accepted: ``None`` (no callbacks); a ``Callback``; a plain function
    ``f(epoch, logs, state)``, used as ``on_epoch_end``; an object that does not subclass
    ``Callback`` but has callable hooks with those names (the hooks it lacks do nothing);
    or a list or tuple of these. Each hook's signature is checked here, before training.

    Args:
      name: The function checking its argument, named in errors (``"fit"``).
      callbacks: The argument to check.

    Returns:
      A tuple of ``Callback`` instances, in the given order.

    Raises:
      TypeError: If ``callbacks``, or one of its items, is none of the above (a
        ``Callback`` class instead of an instance, say), or a hook cannot take its
        arguments.

    Examples:
      >>> import jnn
      >>> def stop_when_perfect(epoch, logs, state):
      ...     return logs.get("accuracy") == 1.0
      >>> (cb,) = jnn.as_callbacks("fit", [stop_when_perfect])
      >>> cb.on_epoch_end(1, {"accuracy": 1.0}, None)
      True
      >>> jnn.as_callbacks("fit", None)
      ()
    """
    if callbacks is None:
        return ()
    if isinstance(callbacks, list | tuple):
        return tuple(_as_callback(name, f"callbacks[{i}]", obj) for i, obj in enumerate(callbacks))
    return (_as_callback(name, "callbacks", callbacks),)
