"""Hyperparameters checked once, where the user writes them: at construction.

Every ``Module`` subclass is a frozen dataclass. Before its ``__post_init__`` runs, the
arguments are checked against the field annotations (``features: int``,
``activation: Callable``, ``layers: Sequence[Module]``...), so ``Dense("8")``,
``MLP(10)`` or ``Dense(3, activation="relu")`` fail with a message in the user's terms
instead of deep inside Python or JAX. Value rules (positive counts, rates in [0, 1))
stay in each layer's ``__post_init__``, which runs next.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import inspect
import sys
import types
import typing
from typing import Any

import numpy as np

__all__ = ["install_validation", "canonical", "short_repr", "same"]

_UNKNOWN = object()


def _resolve(cls: type, annotation: Any) -> Any:
    """The annotation as a type, or ``_UNKNOWN`` when it names something not importable."""
    if not isinstance(annotation, str):
        return annotation
    for klass in cls.__mro__:
        module = sys.modules.get(klass.__module__)
        if module is None:
            continue
        try:
            return eval(annotation, vars(module), {})  # noqa: S307 - annotations of our classes
        except Exception:
            continue
    return _UNKNOWN


@functools.cache
def _field_types(cls: type) -> tuple[tuple[str, Any], ...]:
    return tuple((f.name, _resolve(cls, f.type)) for f in dataclasses.fields(cls) if f.init)


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _matches(value: Any, tp: Any) -> bool:
    from jnn._module import Module

    if tp is Any or tp is _UNKNOWN or tp is object:
        return True
    if tp is None or tp is type(None):
        return value is None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if tp is int:
        return _is_int(value)
    if tp is float:
        return _is_int(value) or isinstance(value, float | np.floating)
    if tp is bool:
        return isinstance(value, bool | np.bool_)
    if tp is str:
        return isinstance(value, str)
    if tp is collections.abc.Callable or origin is collections.abc.Callable:
        return callable(value) and not isinstance(value, Module | type)
    if origin in (tuple, collections.abc.Sequence, list):
        if not isinstance(value, tuple | list):
            return False
        if not args or args == ((),):
            return True
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return len(value) == len(args) and all(map(_matches, value, args))
        return all(_matches(v, args[0]) for v in value)
    if tp in (tuple, list):
        return isinstance(value, tuple | list)
    if origin in (dict, collections.abc.Mapping) or tp in (dict, collections.abc.Mapping):
        return isinstance(value, collections.abc.Mapping)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True  # an annotation this checker does not read


def _describe(tp: Any, field: str = "") -> str:
    if tp is type(None) or tp is None:
        return "None"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_describe(a, field) for a in args))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if tp is collections.abc.Callable or origin is collections.abc.Callable:
        if field == "remat":
            return "a jax.checkpoint policy (e.g. jax.checkpoint_policies.nothing_saveable)"
        return "a function (e.g. jnn.relu)"
    if origin in (tuple, collections.abc.Sequence, list):
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            return f"a tuple of {len(args)} ({', '.join(_describe(a) for a in args)})"
        inner = f" of {_plural(args[0])}" if args else ""
        return f"a list or tuple{inner}"
    names = {int: "an int", float: "a float", bool: "a bool", str: "a string"}
    if tp in names:
        return names[tp]
    return f"a {getattr(tp, '__name__', str(tp))}"


def _plural(tp: Any) -> str:
    names = {int: "ints", float: "floats", bool: "bools", str: "strings"}
    return names.get(tp) or f"items that are each {_describe(tp)}"


def _hint(value: Any, tp: Any) -> str:
    from jnn import activations
    from jnn._module import Module

    if isinstance(value, type) and issubclass(value, Module):
        return f" Hint: create the layer, e.g. {value.__name__}(...), not the class itself."
    if isinstance(value, str) and callable(getattr(activations, value, None)):
        return f" Hint: pass the function itself, e.g. jnn.{value}."
    if isinstance(value, Module) or (callable(value) and not isinstance(value, type)):
        if not _matches(value, tp):
            return " Hint: to chain layers, put them in one list: jnn.Sequential([...])."
    if isinstance(value, str) and _matches(1.0, tp) and not _matches(value, tp):
        return " Hint: pass a number, not a string."
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        if _matches([value], tp):
            return f" Hint: wrap a single value in a list, e.g. [{value}]."
    return ""


def _shown_value(value: Any) -> str:
    """``repr(value)``, but a function by its name rather than ``<... object at 0x...>``."""
    if callable(value) and not isinstance(value, type) and getattr(value, "__name__", None):
        return short_repr(value)
    return repr(value)


def _is_factory(value: Any) -> bool:
    """A ``jax.nn.initializers`` factory (``he_normal``) given where an initializer
    (``he_normal()``) belongs: it takes no ``key`` and can be called with no argument."""
    try:
        parameters = inspect.signature(value).parameters.values()
    except (TypeError, ValueError):
        return False
    return all(p.name != "key" for p in parameters) and all(
        p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters
    )


def _normalise(value: Any, tp: Any) -> Any:
    """NumPy scalars become Python ones, so they hash, print and compare as users expect."""
    if isinstance(value, np.integer) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


class _Shown(str):
    """A constructor signature as messages show it, defaults in ``short_repr`` form
    (``w_init=init``, not ``<function ... at 0x7f...>``); it knows its parameter names."""

    parameters: frozenset


def _readable_signature(parameters: list[inspect.Parameter]) -> _Shown:
    parts, star = [], False
    for p in parameters:
        if p.kind is p.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        parts.append(p.name if p.default is p.empty else f"{p.name}={short_repr(p.default)}")
    shown = _Shown(f"({', '.join(parts)})")
    shown.parameters = frozenset(p.name for p in parameters)
    return shown


def _call_error(cls: type, signature: _Shown, args: tuple, kwargs: dict, error: TypeError) -> str:
    from jnn._module import Module

    message = f"{cls.__name__}{signature}: {str(error).rstrip('.')}."
    message = message.replace("__init__() ", "")
    if any(isinstance(a, Module) for a in args[1:]):
        message += f" Hint: pass several layers as one list, e.g. {cls.__name__}([a, b])."
    if "dtype" in kwargs and "dtype" not in signature.parameters:
        # Flax's per-layer computation dtype: jnn sets it once, for a whole model.
        message += (
            " Hint: jnn layers take no computation dtype; run the whole model in one with "
            "jnn.MixedPrecision(model, jnp.bfloat16)"
            + (", and set the params' dtype with param_dtype." if "param_dtype" in
               signature.parameters else ".")
        )  # fmt: skip
    return message


def install_validation(cls: type) -> None:
    """Wrap the dataclass ``__init__`` of ``cls`` so its arguments are type-checked."""
    original = cls.__init__
    if getattr(original, "_jnn_validated", None) is cls:
        return
    signature = inspect.signature(original)
    shown = _readable_signature(list(signature.parameters.values())[1:])

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        if type(self) is cls:
            try:
                bound = signature.bind(self, *args, **kwargs)
            except TypeError as error:
                raise TypeError(_call_error(cls, shown, (self, *args), kwargs, error)) from None
            for name, tp in _field_types(cls):
                if name not in bound.arguments:
                    continue
                value = bound.arguments[name]
                if not _matches(value, tp):
                    raise TypeError(
                        f"{cls.__name__}: {name} must be {_describe(tp, name)}, got "
                        f"{_shown_value(value)} ({type(value).__name__}).{_hint(value, tp)}"
                    )
                if name.endswith("_init") and callable(value) and _is_factory(value):
                    fn = getattr(value, "__name__", "initializer")
                    raise TypeError(
                        f"{cls.__name__}: {name} got the initializer factory {fn}; call it "
                        f"to make the initializer, e.g. {name}=jnn.initializers.{fn}()."
                    )
                bound.arguments[name] = _normalise(value, tp)
            args, kwargs = bound.args[1:], bound.kwargs
        original(self, *args, **kwargs)

    __init__._jnn_validated = cls
    cls.__init__ = __init__


def _module_class() -> type:
    from jnn._module import Module

    return Module


def canonical(value: Any) -> Any:
    if isinstance(value, type) and (issubclass(value, np.generic) or hasattr(value, "dtype")):
        try:
            return np.dtype(value)
        except TypeError:
            return value
    return value


def same(a: Any, b: Any) -> bool:
    try:
        return bool(a is b or a == b)
    except Exception:  # e.g. arrays, whose == is elementwise
        return False


def short_repr(value: Any) -> str:
    if isinstance(value, _module_class() | tuple | list | str | int | float | bool | type(None)):
        if isinstance(value, tuple | list):
            inner = ", ".join(short_repr(v) for v in value)
            return (
                f"({inner},)"
                if isinstance(value, tuple) and len(value) == 1
                else (f"({inner})" if isinstance(value, tuple) else f"[{inner}]")
            )
        return repr(value)
    if isinstance(value, functools.partial):
        return f"partial({short_repr(value.func)}, ...)"
    name = getattr(value, "__name__", None)
    if callable(value) and name:
        # An inner function made by a factory (jax.nn.initializers.variance_scaling's
        # ``init``) is named after the factory, which is what the user called.
        outer, _, inner = getattr(value, "__qualname__", "").rpartition(".<locals>.")
        if outer and inner == name and name != "<lambda>":
            return f"{outer.rpartition('.')[2]}(...)"
        return name
    if isinstance(value, type):
        return value.__name__
    return repr(value)
