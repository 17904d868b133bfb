"""Combinators: layers built from layers. Each is a ``Module`` itself, so they nest."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jnn._calls import accepted
from jnn._checks import check_positive_int
from jnn._errors import LayerError, ShapeError
from jnn._module import Module, Params, State
from jnn._scope import Scope

__all__ = [
    "Lambda",
    "Identity",
    "Sequential",
    "Residual",
    "Parallel",
    "Repeat",
    "FunctionModule",
    "from_functions",
]


def _function_name(fn: Callable) -> str:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__name__", type(fn).__name__)


# Class names the rule below would split badly (P-Re-LU).
_SNAKE_NAMES = {"PReLU": "prelu"}


def _snake(name: str) -> str:
    if name in _SNAKE_NAMES:
        return _SNAKE_NAMES[name]
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name)
    name = re.sub(r"[^A-Za-z0-9_]", "_", name).strip("_").lower()
    return name or "layer"


class Lambda(Module):
    """A parameter-free layer that applies ``fn`` to its inputs.

    Plain functions given to ``Sequential`` or ``Parallel`` are wrapped in one, named
    after the function (``jnn.relu`` becomes ``relu``).

    Args:
      fn: Any function of the inputs, e.g. ``jnn.relu`` or ``lambda x: x.reshape(-1)``.
      name: Name in error messages and generated child names; defaults to the
        function's ``__name__``.

    Shapes:
      Whatever ``fn`` does.

    Examples:
      >>> import jax.numpy as jnp, jnn
      >>> jnn.Lambda(jnn.relu).apply({}, jnp.array([-1.0, 2.0])).tolist()
      [0.0, 2.0]
    """

    fn: Callable
    name: str | None = None

    def __post_init__(self):
        if not callable(self.fn):
            raise TypeError(f"Lambda: fn must be callable, got {type(self.fn).__name__}.")

    def layer_name(self) -> str:
        return f"Lambda({self.name or _function_name(self.fn)})"

    def apply(self, params: Params, *inputs: Any) -> Any:
        del params
        return self.fn(*inputs)


class Identity(Module):
    """Returns its input unchanged (one input), or the tuple of its inputs."""

    def apply(self, params: Params, *inputs: Any) -> Any:
        del params
        return inputs[0] if len(inputs) == 1 else inputs


def _as_layer(layer: Any, owner: str) -> Module:
    if isinstance(layer, Module):
        return layer
    if callable(layer):
        return Lambda(layer)
    raise TypeError(f"{owner}: expected a jnn.Module or a function, got {type(layer).__name__}.")


def _auto_name(layer: Module) -> str:
    if isinstance(layer, Lambda):
        return _snake(layer.name or _function_name(layer.fn))
    return _snake(type(layer).__name__)


def _named_layers(owner: str, layers: Any) -> tuple[tuple[Module, ...], tuple[str, ...]]:
    """Normalise a list or dict of layers to (layers, names); names count per kind."""
    if isinstance(layers, Mapping):
        names = tuple(layers)
        for name in names:
            if not isinstance(name, str):
                raise TypeError(f"{owner}: layer names must be strings, got {name!r}.")
        return tuple(_as_layer(v, owner) for v in layers.values()), names
    if isinstance(layers, Module) or callable(layers):
        layers = [layers]
    if not isinstance(layers, Sequence):
        raise TypeError(f"{owner}: expected a list or dict of layers, got {type(layers).__name__}.")
    modules = tuple(_as_layer(v, owner) for v in layers)
    counts: dict[str, int] = {}
    names = []
    for layer in modules:
        base = _auto_name(layer)
        names.append(f"{base}_{counts.get(base, 0)}")
        counts[base] = counts.get(base, 0) + 1
    return modules, tuple(names)


class Sequential(Module):
    """Layers applied one after another; the first takes all inputs, the rest one each.

    Children are named by the user (a dict) or automatically by kind and a per-kind
    counter: ``[Dense(8), relu, Dense(2)]`` gives ``dense_0``, ``relu_0``, ``dense_1``.
    Parameter-free children (activations) leave no entry in ``params``.

    Args:
      layers: A list of layers and functions, or a dict from names to them.

    Shapes:
      The composition of the children's shapes.

    Examples:
      >>> import jax, jax.numpy as jnp, jnn
      >>> model = jnn.Sequential([jnn.Dense(8), jnn.relu, jnn.Dense(2)])
      >>> params = model.init(jax.random.key(0), jnp.zeros((4, 3)))
      >>> sorted(params)
      ['dense_0', 'dense_1']
      >>> named = jnn.Sequential({"encoder": jnn.Dense(8), "head": jnn.Dense(2)})
      >>> sorted(named.init(jax.random.key(0), jnp.zeros((4, 3))))
      ['encoder', 'head']
    """

    layers: Any
    names: tuple[str, ...] | None = None

    def __post_init__(self):
        layers, names = _named_layers("Sequential", self.layers)
        if self.names is not None:
            names = tuple(self.names)
            if len(names) != len(layers):
                raise ValueError(f"Sequential: got {len(names)} names for {len(layers)} layers.")
        if len(set(names)) != len(names):
            raise ValueError(f"Sequential: layer names must be unique, got {names}.")
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "names", names)

    def forward(self, scope: Scope, *inputs: Any) -> Any:
        if not self.layers:
            return inputs[0] if len(inputs) == 1 else inputs
        out = scope(self.names[0], self.layers[0], *inputs)
        for name, layer in zip(self.names[1:], self.layers[1:], strict=True):
            out = scope(name, layer, out)
        return out


class Residual(Module):
    """A skip connection: ``y = shortcut(x) + layers(x)``.

    ``layers`` are applied in sequence as in ``Sequential`` and named the same way, at the
    residual's own level of ``params``. ``shortcut`` (identity by default; a ``Dense`` for
    a projection) is named ``shortcut``.

    Args:
      layers: A layer, a list of layers, or a dict from names to layers.
      shortcut: Optional layer applied to ``x`` on the skip path.

    Shapes:
      ``[..., features]`` to the same shape (or to the shortcut's output shape).

    Raises:
      ShapeError: If the two paths give different shapes.

    Examples:
      >>> import jax, jax.numpy as jnp, jnn
      >>> block = jnn.Residual([jnn.Dense(4), jnn.relu])
      >>> params = block.init(jax.random.key(0), jnp.zeros((2, 4)))
      >>> block.apply(params, jnp.ones((2, 4))).shape
      (2, 4)
    """

    layers: Any
    shortcut: Module | None = None

    def __post_init__(self):
        object.__setattr__(self, "layers", Sequential(self.layers))

    def forward(self, scope: Scope, x: Any) -> Any:
        y = self.layers.forward(scope, x)
        skip = x if self.shortcut is None else scope("shortcut", self.shortcut, x)
        if jnp.shape(y) != jnp.shape(skip):
            raise ShapeError(
                "Residual",
                f"the layers map shape {tuple(jnp.shape(x))} to {tuple(jnp.shape(y))}, but the "
                f"shortcut gives {tuple(jnp.shape(skip))}. Hint: pass shortcut=jnn.Dense(...) "
                "to project the input.",
            )
        return skip + y


_MERGES: dict[str, Callable[[list], Any]] = {
    "sum": lambda ys, axis: functools.reduce(jnp.add, ys),
    "mean": lambda ys, axis: functools.reduce(jnp.add, ys) / len(ys),
    "concat": lambda ys, axis: jnp.concatenate(ys, axis=axis),
    "stack": lambda ys, axis: jnp.stack(ys, axis=axis),
    "tuple": lambda ys, axis: tuple(ys),
}


class Parallel(Module):
    """Branches that each see the same inputs, with their outputs merged.

    Args:
      branches: A list of layers or a dict from names to layers (named as in
        ``Sequential``).
      merge: ``"concat"`` (along ``axis``), ``"sum"``, ``"mean"``, ``"stack"`` (new
        ``axis``), ``"tuple"``, or a function of the list of branch outputs.
      axis: Axis for ``"concat"`` and ``"stack"``.

    Shapes:
      ``concat``: branch outputs ``[..., f_i]`` give ``[..., sum(f_i)]``; ``sum``/``mean``
      need equal shapes.

    Examples:
      >>> import jax, jax.numpy as jnp, jnn
      >>> both = jnn.Parallel([jnn.Dense(2), jnn.Dense(3)])
      >>> params = both.init(jax.random.key(0), jnp.zeros((5, 4)))
      >>> both.apply(params, jnp.ones((5, 4))).shape
      (5, 5)
    """

    branches: Any
    merge: str | Callable = "concat"
    axis: int = -1

    def __post_init__(self):
        layers, names = _named_layers("Parallel", self.branches)
        if not layers:
            raise ValueError("Parallel: branches must hold at least one layer, got none.")
        object.__setattr__(self, "branches", tuple(zip(names, layers, strict=True)))
        if not callable(self.merge) and self.merge not in _MERGES:
            raise ValueError(
                f"Parallel: merge must be one of {sorted(_MERGES)} or a function, "
                f"got {self.merge!r}."
            )

    def forward(self, scope: Scope, *inputs: Any) -> Any:
        ys = [scope(name, layer, *inputs) for name, layer in self.branches]
        if callable(self.merge):
            return self.merge(ys)
        if self.merge in ("sum", "mean"):
            shapes = {tuple(jnp.shape(y)) for y in ys}
            if len(shapes) > 1:
                raise ShapeError(
                    "Parallel",
                    f"merge={self.merge!r} needs equal branch shapes, got "
                    f"{[tuple(jnp.shape(y)) for y in ys]}.",
                )
        return _MERGES[self.merge](ys, self.axis)


class Repeat(Module):
    """``count`` copies of ``block`` applied in turn, compiled once however deep.

    Each parameter (and state) of ``block`` gets a leading axis of size ``count``.
    ``init`` creates all copies with one ``jax.vmap`` (copy ``i`` uses
    ``fold_in(key, i)``) and ``apply`` runs them with one ``jax.lax.scan``, so trace and
    compile time do not grow with depth.

    Args:
      block: The layer to repeat; it must map its input to the same shape and dtype.
      count: Number of copies.
      remat: Wrap each block in ``jax.checkpoint``: recompute activations in the
        backward pass instead of storing them (less memory, more compute). ``True``
        saves nothing but the block's inputs; a policy from ``jax.checkpoint_policies``
        (e.g. ``dots_with_no_batch_dims_saveable``) chooses what else is kept.

    Shapes:
      ``x`` to ``x.shape``; params ``[count, *block_param_shape]``.

    Examples:
      >>> import jax, jax.numpy as jnp, jnn
      >>> deep = jnn.Repeat(jnn.Residual([jnn.Dense(16), jnn.relu]), count=8)
      >>> params = deep.init(jax.random.key(0), jnp.zeros((2, 16)))
      >>> params["dense_0"]["weight"].shape
      (8, 16, 16)
    """

    block: Module
    count: int
    remat: bool | Callable = False

    def __post_init__(self):
        if not isinstance(self.block, Module):
            raise TypeError(f"Repeat: block must be a jnn.Module, got {type(self.block).__name__}.")
        check_positive_int(self, "count", self.count)

    def init_with_state(self, key: jax.Array, x: Any, **kwargs: Any) -> tuple[Params, State]:
        def one(i):
            return self.block.init_with_state(jax.random.fold_in(key, i), x, **kwargs)

        params, state = jax.vmap(one)(jnp.arange(self.count))
        first = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), (params, state))
        y = jax.eval_shape(
            lambda p, s, x, kw: self.block.apply(p, x, state=s, **kw)[0], *first, x, kwargs
        )
        # Params in another dtype than x (float32 params, bfloat16 activations: a
        # mixed-precision policy casts them before apply) may promote the output here;
        # apply checks the dtype again with the params it is given.
        promoted = functools.reduce(
            jnp.promote_types,
            [a.dtype for a in jax.tree.leaves(first[0]) if jnp.issubdtype(a.dtype, jnp.inexact)],
            jnp.result_type(x),
        )
        self._check_same(x, y, promoted)
        return params, state

    def _check_same(self, x: Any, y: Any, also_allowed: Any = None) -> None:
        dtype = jnp.result_type(y)
        if jnp.shape(y) != jnp.shape(x) or dtype not in (jnp.result_type(x), also_allowed):
            raise ShapeError(
                "Repeat",
                f"the block must return its input's shape and dtype "
                f"{tuple(jnp.shape(x))} {jnp.result_type(x)}, got {tuple(jnp.shape(y))} "
                f"{jnp.result_type(y)}.",
            )

    def apply(
        self,
        params: Params,
        x: Any,
        *,
        state: State | None = None,
        key: jax.Array | None = None,
        is_training: bool = False,
        **kwargs: Any,
    ) -> tuple[Any, State | None]:
        def body(h, layer):
            p, s, i = layer
            k = None if key is None else jax.random.fold_in(key, i)
            if s is None:
                y = self.block.apply(p, h, key=k, is_training=is_training, **kwargs)
            else:
                y, s = self.block.apply(p, h, state=s, key=k, is_training=is_training, **kwargs)
            self._check_same(h, y)
            return y, s

        body = remat_block(body, self.remat, in_scan=True)
        try:
            y, new_state = jax.lax.scan(body, x, (params, state, jnp.arange(self.count)))
        except LayerError as error:
            error.path.insert(0, "block")
            raise
        return y, new_state


def remat_block(fn: Callable, remat: bool | Callable, in_scan: bool = False) -> Callable:
    """``fn`` under ``jax.checkpoint`` (``remat`` is ``True`` or a checkpoint policy),
    or ``fn`` itself when ``remat`` is ``False``.

    In a ``scan`` body the recomputation cannot be merged with the forward pass, so
    ``prevent_cse`` (which costs optimizations) is needed only outside one.
    """
    if not remat:
        return fn
    policy = None if remat is True else remat
    return jax.checkpoint(fn, policy=policy, prevent_cse=not in_scan)


class FunctionModule(Module):
    """A model made of two plain functions; build one with ``jnn.from_functions``."""

    init_fn: Callable
    apply_fn: Callable
    name: str = "FunctionModule"

    def layer_name(self) -> str:
        return self.name

    def init(self, key: jax.Array, *inputs: Any, **kwargs: Any) -> Params:
        return self.init_fn(key, *inputs, **kwargs)

    def apply(
        self, params: Params, *inputs: Any, key: Any = None, is_training: bool = False, **kwargs
    ) -> Any:
        context = {"key": key, "is_training": is_training}
        extra = {n: context[n] for n in accepted(self.apply_fn) if n in context}
        return self.apply_fn(params, *inputs, **extra, **kwargs)


def from_functions(init_fn: Callable, apply_fn: Callable, name: str = "FunctionModule") -> Module:
    """Wrap ``init_fn(key, *samples) -> params`` and ``apply_fn(params, *inputs)`` as a model.

    ``init_fn`` receives the samples as ``jax.ShapeDtypeStruct`` (shapes and dtypes
    only). ``apply_fn`` may also take ``key`` and ``is_training`` keyword arguments.

    Examples:
      >>> import jax, jax.numpy as jnp, jnn
      >>> scale = jnn.from_functions(
      ...     lambda key, x: {"scale": jnp.ones(x.shape[-1])},
      ...     lambda params, x: params["scale"] * x)
      >>> params = scale.init(jax.random.key(0), jnp.zeros((2, 3)))
      >>> scale.apply(params, jnp.ones((2, 3))).shape
      (2, 3)
    """
    return FunctionModule(init_fn, apply_fn, name)
