"""What ``init`` and ``apply`` show and say: their real signatures, and call mistakes
answered with the right call.

Every layer's public ``init``/``apply`` go through ``Module``, which adds the context
arguments (``state``, ``key``, ``is_training``) and the checks. Their signatures are
rebuilt here from the layer's own methods, so ``help()``, completion and the API
reference show ``RNN.apply(params, x, *, lengths=None, mask=None, ...)`` rather than
``*args, **kwargs``.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable
from typing import Any

from jnn._errors import layer_name

__all__ = ["public_signature", "call_error", "plain_signature", "accepted", "init_kwargs"]

_CONTEXT_ARGS = ("state", "key", "is_training")

_P = inspect.Parameter
_CONTEXT = (
    _P("state", _P.KEYWORD_ONLY, default=None),
    _P("key", _P.KEYWORD_ONLY, default=None),
    _P("is_training", _P.KEYWORD_ONLY, default=False),
)
# Names users bring from other libraries, and the jnn argument they mean.
_ALIASES = {
    "training": "is_training",
    "train": "is_training",
    "deterministic": "is_training (its opposite)",
    "mode": "is_training",
    "rng": "key",
    "rngs": "key",
    "prng_key": "key",
    "mutable": "state",
    "variables": "params",
}


@functools.lru_cache(maxsize=1024)
def _signature(fn: Callable) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


def plain_signature(sig: inspect.Signature) -> inspect.Signature:
    """``sig`` without annotations, as messages show it: ``(params, x, *, key=None)``."""
    parameters = [p.replace(annotation=p.empty) for p in sig.parameters.values()]
    return sig.replace(parameters=parameters, return_annotation=sig.empty)


def _with_context(parameters: list[inspect.Parameter]) -> list[inspect.Parameter]:
    names = {p.name for p in parameters}
    extra = [p for p in _CONTEXT if p.name not in names]
    var_kw = [p for p in parameters if p.kind is _P.VAR_KEYWORD]
    rest = [p for p in parameters if p.kind is not _P.VAR_KEYWORD]
    return rest + extra + var_kw


def public_signature(cls: type, method: str) -> inspect.Signature | None:
    """The signature ``cls.<method>`` accepts, built from the layer's own methods."""
    raw_apply, forward = cls._raw_apply, cls._raw_forward
    raw_init = cls._raw_init or cls._raw_init_with_state
    self = _P("self", _P.POSITIONAL_OR_KEYWORD)
    if method == "apply":
        if raw_apply is not None:
            sig = _signature(raw_apply)
            if sig is None:
                return None
            return sig.replace(parameters=_with_context(list(sig.parameters.values())))
        if forward is None or (sig := _signature(forward)) is None:
            return None
        params = _P("params", _P.POSITIONAL_OR_KEYWORD)
        rest = list(sig.parameters.values())[2:]
        return sig.replace(parameters=_with_context([self, params, *rest]))
    # init and init_with_state take the same arguments.
    if raw_init is not None:
        return _signature(raw_init)
    key = _P("key", _P.POSITIONAL_OR_KEYWORD)
    if forward is not None and (sig := _signature(forward)) is not None:
        return sig.replace(parameters=[self, key, *list(sig.parameters.values())[2:]])
    if raw_apply is not None and (sig := _signature(raw_apply)) is not None:
        rest = [
            p
            for p in list(sig.parameters.values())[2:]
            if p.name not in ("state", "key", "is_training")
        ]
        return sig.replace(parameters=[self, key, *rest])
    return None


def call_error(
    module: Any, method: str, fn: Callable, args: tuple, kwargs: dict
) -> TypeError | None:
    """A ``TypeError`` that names the right call when ``fn(*args, **kwargs)`` cannot bind,
    else ``None`` (the ``TypeError`` came from inside the layer, not from the call)."""
    sig = _signature(fn)
    if sig is None:
        return None
    try:
        sig.bind(*args, **kwargs)
    except TypeError as error:
        problem = str(error)
    else:
        return None
    shown = public_signature(type(module), method) or sig
    shown = plain_signature(shown.replace(parameters=list(shown.parameters.values())[1:]))
    hints = []
    known = list(shown.parameters)
    for name in kwargs:
        if name in sig.parameters:
            continue
        if name in _ALIASES:
            hints.append(f"'{name}' is spelled {_ALIASES[name]} in jnn.")
        else:
            close = difflib.get_close_matches(name, known, n=1)
            if close:
                hints.append(f"did you mean {close[0]}=?")
    if any(isinstance(a, bool) for a in args):
        hints.append("flags go by keyword, e.g. is_training=True.")
    missing = [
        p.name
        for p in list(sig.parameters.values())[len(args) :]
        if p.default is p.empty
        and p.kind in (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD)
        and p.name not in kwargs
    ]
    if missing and "carry" in sig.parameters and hasattr(module, "initial_carry"):
        hints.append(
            "a cell maps (carry, x) to (carry, y); make the first carry with "
            "cell.initial_carry(batch_shape), or run the cell over a sequence with jnn.RNN."
        )
    if method == "init" and len(args) <= 2:
        hints.append("init needs sample inputs after the key: model.init(key, x).")
    text = f"{layer_name(module)}.{method}{shown}: {problem}."
    if hints:
        text += " Hint: " + " ".join(hints)
    return TypeError(text)


@functools.lru_cache(maxsize=1024)
def accepted(fn: Callable) -> frozenset[str]:
    """Which of ``state``, ``key``, ``is_training`` the function ``fn`` takes by name."""
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return frozenset()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return frozenset(a for a in _CONTEXT_ARGS if a != "state") | (
            {"state"} if "state" in parameters else set()
        )
    return frozenset(a for a in _CONTEXT_ARGS if a in parameters)


@functools.lru_cache(maxsize=1024)
def takes_keyword(fn: Callable, name: str) -> bool:
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True
    if name in parameters:
        return parameters[name].kind is not inspect.Parameter.POSITIONAL_ONLY
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def init_kwargs(module: Any, kwargs: dict) -> dict:
    """The keywords of ``apply`` that ``init`` takes: those its ``init`` names.

    A layer's ``apply`` may take keywords (a mask, a cache) that shape nothing; its
    ``init`` need not accept them, at any depth of nesting.
    """
    cls = type(module)
    raw_init = cls._raw_init_with_state or cls._raw_init
    if raw_init is None or not kwargs:
        return kwargs
    return {k: v for k, v in kwargs.items() if takes_keyword(raw_init, k)}
