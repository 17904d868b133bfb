"""Composites: ``forward(self, scope, *inputs)`` and the ``Scope`` that runs its children.

``init`` of a composite traces ``forward`` once on abstract inputs. Each child call made
during that trace is recorded with the input shapes it saw; a leaf child is initialised
abstractly once (to learn its output shape), a composite child is traced the same way,
recursively, inside the same trace. The concrete params are then made from the records,
each leaf once. So ``init`` costs one abstract and one concrete ``init`` per leaf,
whatever the nesting depth.
"""

from __future__ import annotations

import contextvars
import functools
import re
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jnn._checks import SHAPE_TRACE
from jnn._errors import LayerError, MissingKeyError, ParamsError, layer_name

__all__ = ["Scope", "child_key"]

Params = dict[str, Any]
"""A nested ``dict`` of ``jax.Array`` leaves with readable names."""
State = dict[str, Any]
"""Non-trainable state (e.g. running statistics), keyed like ``Params``."""
Shape = tuple[int, ...]

_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")

# Set by ``jnn.summary`` while it traces ``apply``: each child's apply then runs as
# ``hook(owner, name, layer, params, *inputs, **context)``, so every layer's path and
# output can be recorded. Unset, it costs one ``get`` per child call.
APPLY_HOOK: contextvars.ContextVar[Callable | None] = contextvars.ContextVar(
    "jnn_apply_hook", default=None
)


@functools.cache
def _name_to_int(name: str) -> int:
    return zlib.crc32(name.encode())


def child_key(key: jax.Array | None, name: str) -> jax.Array | None:
    """The key of the child called ``name``: ``fold_in(key, crc32(name))``.

    Deriving keys from names (not from call order) means adding a layer never changes
    another layer's initial weights or dropout masks.

    Example:
      >>> import jax
      >>> from jnn.extend import child_key
      >>> child_key(jax.random.key(0), "dense_0").shape
      ()
    """
    if key is None:
        return None
    return jax.random.fold_in(key, _name_to_int(name))


def spec(x: Any) -> Any:
    """``x`` as a ``jax.ShapeDtypeStruct`` if it has a shape and dtype, else ``x``."""
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return jax.ShapeDtypeStruct(tuple(x.shape), x.dtype)
    return x


def specs(tree: Any) -> Any:
    return jax.tree.map(spec, tree)


class Scope:
    """Calls a composite's children, routing params, state and keys by child name.

    A composite's ``forward(self, scope, *inputs)`` receives one and calls
    ``scope(name, layer, *inputs)``; ``params[name]`` (and ``state[name]``) feed that
    child, and its key is ``child_key(key, name)``. The same name called twice shares
    its parameters. ``scope.param`` creates a parameter of the composite itself.

    Attributes:
      is_training: The ``is_training`` flag given to ``apply``.
    """

    def __init__(self, owner, params, state, key, is_training, records=None, memo=None):
        self._owner = owner
        self._memo = memo  # shared by one init's whole trace: see _trace
        self._params = params
        self._state = state
        self._key = key
        self.is_training = is_training
        self._records = records  # not None while init traces forward
        self._modules: dict[str, Any] = {}
        self._calls: dict[str, int] = {}
        self.new_state: State = {}

    @property
    def initializing(self) -> bool:
        """True while ``init`` traces ``forward`` on abstract inputs."""
        return self._records is not None

    def _claim(self, name: str, what: Any) -> int:
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ValueError(
                f"{layer_name(self._owner)}: child name {name!r} must be a non-empty "
                "string of letters, digits, '_', '-' or '.' (no '/' or '~')."
            )
        previous = self._modules.setdefault(name, what)
        if previous != what:
            raise ValueError(
                f"{layer_name(self._owner)}: the name {name!r} is used for two different "
                f"layers, {previous!r} and {what!r}. Give each layer its own name."
            )
        count = self._calls.get(name, 0)
        self._calls[name] = count + 1
        return count

    def _key_for(self, name: str, count: int) -> jax.Array | None:
        key = child_key(self._key, name)
        return key if key is None or count == 0 else jax.random.fold_in(key, count)

    def key(self, name: str) -> jax.Array:
        """A key of the composite's own, derived from its name; raises without a key."""
        self._claim(name, ("key", name))
        if self._key is None:
            raise MissingKeyError(
                layer_name(self._owner),
                f"forward asked for the key {name!r}, but apply was given no key. "
                "Hint: pass key=jax.random.key(...) to apply.",
            )
        return child_key(self._key, name)

    def param(
        self, name: str, initializer: Callable, shape: Shape, dtype: Any = jnp.float32
    ) -> jax.Array:
        """A parameter of the composite itself, made by ``initializer(key, shape, dtype)``."""
        shape = tuple(shape)
        self._claim(name, ("param", initializer, shape, jnp.dtype(dtype)))
        if self._records is not None:
            if name not in self._records:
                value = initializer(jax.random.key(0), shape, dtype)
                record = _Record(None, (shape, dtype), {}, None, value, None, initializer)
                self._records[name] = record
            return self._records[name].params
        if name not in self._params:
            raise ParamsError(
                layer_name(self._owner), f"missing params ['{name}'] of shape {shape}."
            )
        value = self._params[name]
        if tuple(jnp.shape(value)) != shape:
            raise ParamsError(
                layer_name(self._owner),
                f"params '{name}' has shape {tuple(jnp.shape(value))}, expected {shape}.",
            )
        return value

    def __call__(self, name: str, layer: Any, *inputs: Any, **kwargs: Any) -> Any:
        """Run child ``layer`` under ``name`` on ``inputs`` and return its outputs."""
        from jnn._module import Module

        if not isinstance(layer, Module):
            hint = "Hint: wrap plain functions in jnn.Lambda."
            if isinstance(layer, type) and issubclass(layer, Module):
                hint = f"Hint: create the layer, e.g. {layer.__name__}(...)."
            raise TypeError(
                f"{layer_name(self._owner)}: scope({name!r}, ...) expected a jnn.Module, "
                f"got {type(layer).__name__}. {hint}"
            )
        count = self._claim(name, layer)
        try:
            if self._records is not None:
                return self._trace_child(name, layer, count, inputs, kwargs)
            params = self._params.get(name, {})
            state = None
            if self._state is not None:
                state = self.new_state.get(name, self._state.get(name, {}))
            hook = APPLY_HOOK.get()
            run = layer.apply if hook is None else functools.partial(hook, self._owner, name, layer)
            result = run(
                params,
                *inputs,
                state=state,
                key=self._key_for(name, count),
                is_training=self.is_training,
                **kwargs,
            )
        except LayerError as error:
            error.path.insert(0, name)
            raise
        if state is None:
            return result
        out, new_state = result
        if new_state:
            self.new_state[name] = new_state
        return out

    def _trace_child(self, name, layer, count, inputs, kwargs):
        if count == 0:
            record, out = _trace(layer, inputs, kwargs, self._memo)
            self._records[name] = record
            return out
        record = self._records[name]
        out, _ = layer.apply(
            record.params, *inputs, state=record.state, is_training=False, **kwargs
        )
        return out


class _Record:
    """What init learned of one child while tracing: enough to make its params later."""

    __slots__ = ("layer", "inputs", "kwargs", "children", "params", "state", "initializer")

    def __init__(self, layer, inputs, kwargs, children, params, state, initializer=None):
        self.layer = layer
        self.inputs = inputs
        self.kwargs = kwargs
        self.children = children  # the records of a composite child, else None
        self.params = params  # abstract, for a second call of the same name
        self.state = state
        self.initializer = initializer  # set for scope.param records


def _is_composite_init(cls: type) -> bool:
    return (
        cls._raw_forward is not None and cls._raw_init is None and cls._raw_init_with_state is None
    )


def _memo_key(layer, inputs, kwargs) -> Any:
    """What a child's trace depends on: the layer and its inputs' shapes, dtypes and
    static values; ``None`` when something in it cannot be hashed."""
    leaves, treedef = jax.tree.flatten((specs(inputs), specs(kwargs)))
    key = (layer, treedef, tuple(leaves))
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _abstract_like(out: Any) -> Any:
    """Fresh abstract values shaped like ``out`` (inside the trace, one cheap op each)."""
    return jax.tree.map(
        lambda s: jnp.zeros(s.shape, s.dtype) if isinstance(s, jax.ShapeDtypeStruct) else s,
        specs(out),
    )


def _trace(layer, inputs, kwargs, memo: dict | None) -> tuple[_Record, Any]:
    """Trace ``layer`` on abstract inputs (inside ``eval_shape``): its record and output.

    ``memo`` remembers each (layer, input shapes) traced so far in this ``init``, so the
    24 identical blocks of a deep transformer are traced once, not 24 times.
    """
    key = _memo_key(layer, inputs, kwargs) if memo is not None else None
    if key is not None and key in memo:
        record, out = memo[key]
        return record, _abstract_like(out)
    record, out = _trace_uncached(layer, inputs, kwargs, memo)
    if key is not None:
        memo[key] = (record, specs(out))
    return record, out


def _trace_uncached(layer, inputs, kwargs, memo) -> tuple[_Record, Any]:
    from jnn._calls import init_kwargs
    from jnn._module import apply_raw

    cls = type(layer)
    if _is_composite_init(cls):
        records: dict[str, _Record] = {}
        scope = Scope(layer, {}, {}, jax.random.key(0), False, records=records, memo=memo)
        out = cls._raw_forward(layer, scope, *inputs, **kwargs)
        params = {n: r.params for n, r in records.items() if r.initializer is not None or r.params}
        state = {n: r.state for n, r in records.items() if r.initializer is None and r.state}
        return _Record(layer, specs(inputs), specs(kwargs), records, params, state), out
    if cls._raw_init is None and cls._raw_init_with_state is None and cls._raw_apply is not None:
        params, state = {}, {}  # parameter-free: its apply alone checks the inputs
    else:
        params, state = layer.init_with_state(jax.random.key(0), *inputs, **kwargs)
    out, _ = apply_raw(layer, params, inputs, state, None, False, kwargs)
    record = _Record(layer, specs(inputs), init_kwargs(layer, specs(kwargs)), None, params, state)
    return record, out


def init_composite(module, key, inputs, kwargs) -> tuple[Params, State]:
    """``init_with_state`` of a composite: one abstract trace, then the concrete params."""
    records: dict[str, _Record] = {}

    def trace(xs, kw):
        record, _ = _trace(module, xs, kw, {})
        records.update(record.children)

    token = SHAPE_TRACE.set(True)
    try:
        jax.eval_shape(trace, inputs, kwargs)
    finally:
        SHAPE_TRACE.reset(token)
    return _materialize(records, key)


def _materialize(records: dict[str, _Record], key) -> tuple[Params, State]:
    params: Params = {}
    state: State = {}
    for name, record in records.items():
        sub_key = child_key(key, name)
        try:
            if record.initializer is not None:
                p, s = record.initializer(sub_key, *record.inputs), {}
            elif record.children is not None:
                p, s = _materialize(record.children, sub_key)
            elif not (record.params or record.state):
                p, s = {}, {}
            else:
                p, s = record.layer.init_with_state(sub_key, *record.inputs, **record.kwargs)
        except LayerError as error:
            error.path.insert(0, name)
            raise
        if record.initializer is not None or p:
            params[name] = p
        if s:
            state[name] = s
    return params, state


def apply_composite(module, params, inputs, state, key, is_training, kwargs):
    if not isinstance(params, Mapping):
        raise ParamsError(
            layer_name(module), f"expected params as a dict, got {type(params).__name__}."
        )
    if state is not None and not isinstance(state, Mapping):
        raise ParamsError(
            layer_name(module), f"expected state as a dict, got {type(state).__name__}."
        )
    scope = Scope(module, params, state, key, is_training)
    out = type(module)._raw_forward(module, scope, *inputs, **kwargs)
    for what, tree in (("params", params), ("state", state)):
        extra = sorted(set(tree or {}) - set(scope._modules))
        if extra:
            raise ParamsError(
                layer_name(module),
                f"unexpected {what} {extra}; this model's children are "
                f"{sorted(n for n in scope._modules)}.",
            )
    if state is None:
        return out, None
    new_state = {n: scope.new_state.get(n, s) for n, s in state.items()}
    return out, new_state
