"""The model contract: ``Module``, ``Scope`` and the errors every layer raises.

A model is an immutable object holding hyperparameters, with two pure methods::

    params = model.init(key, *sample_inputs)
    outputs = model.apply(params, *inputs)

Stateful models add one argument and one return value, the same for every layer::

    params, state = model.init_with_state(key, *sample_inputs)
    outputs, state = model.apply(params, *inputs, state=state, key=key, is_training=True)

Layers are written in one of two styles, and both get the uniform signature above:

* a *leaf* defines ``init`` (or ``init_with_state``) and ``apply``; its ``apply`` names
  only the extra arguments it uses (``state``, ``key``, ``is_training``);
* a *composite* defines ``forward(self, scope, *inputs)`` and calls its children through
  the explicit ``scope``, which routes each child's params, state and key by name; its
  ``init`` is derived by tracing ``forward`` once on abstract values.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
import zlib
from collections.abc import Callable, Mapping
from typing import Any, dataclass_transform

import jax
import jax.numpy as jnp
import numpy as np

Params = dict[str, Any]
"""A nested ``dict`` of ``jax.Array`` leaves with readable names."""
State = dict[str, Any]
"""Non-trainable state (e.g. running statistics), keyed like ``Params``."""
Shape = tuple[int, ...]

__all__ = [
    "Module",
    "Scope",
    "LayerError",
    "ShapeError",
    "DTypeError",
    "ParamsError",
    "MissingKeyError",
    "child_key",
    "check_rank",
    "check_positive_int",
    "check_floating",
]

_CONTEXT_ARGS = ("state", "key", "is_training")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


# --------------------------------------------------------------------------- errors


class LayerError(Exception):
    """An error raised by a layer; combinators add the layer's path as it propagates.

    The message reads ``"{layer} at '{path}': {detail}"``, where ``path`` is the
    slash-separated chain of child names from the model's root to the layer.
    """

    def __init__(self, layer: str, detail: str):
        super().__init__(layer, detail)
        self.layer = layer
        self.detail = detail
        self.path: list[str] = []

    def __str__(self) -> str:
        where = f" at '{'/'.join(self.path)}'" if self.path else ""
        return f"{self.layer}{where}: {self.detail}"


class ShapeError(LayerError, ValueError):
    """An input or output of a layer has the wrong shape."""


class DTypeError(LayerError, TypeError):
    """An input of a layer has the wrong dtype, or an argument the wrong kind."""


class ParamsError(LayerError, ValueError):
    """A params or state tree does not match the model (missing or extra key, wrong shape)."""


class MissingKeyError(LayerError, ValueError):
    """A stochastic layer was asked to train without a PRNG key."""


def _layer_name(module: Any) -> str:
    if isinstance(module, str):
        return module
    name = getattr(module, "layer_name", None)
    return name() if callable(name) else type(module).__name__


@functools.cache
def _name_to_int(name: str) -> int:
    return zlib.crc32(name.encode())


def child_key(key: jax.Array | None, name: str) -> jax.Array | None:
    """The key of the child called ``name``: ``fold_in(key, crc32(name))``.

    Deriving keys from names (not from call order) means adding a layer never changes
    another layer's initial weights or dropout masks.
    """
    if key is None:
        return None
    return jax.random.fold_in(key, _name_to_int(name))


def _check_key(module: Any, key: Any, where: str) -> None:
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return
    if dtype == jnp.uint32 and getattr(key, "shape", None) == (2,):
        return  # a legacy ``jax.random.PRNGKey``
    got = f"array of shape {key.shape} and dtype {dtype}" if dtype is not None else type(key)
    raise DTypeError(
        _layer_name(module),
        f"{where} expected a PRNG key such as jax.random.key(0), got {got}. "
        "Hint: the key comes first, as in model.init(key, x).",
    )


def _spec(x: Any) -> Any:
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return jax.ShapeDtypeStruct(tuple(x.shape), x.dtype)
    return x


def _specs(tree: Any) -> Any:
    return jax.tree.map(_spec, tree)


# --------------------------------------------------------------------------- shared checks


def check_rank(
    module: Any,
    x: jax.Array,
    rank: int | tuple[int, ...] | None = None,
    what: str = "input",
    *,
    min_rank: int | None = None,
) -> None:
    """Raise ``ShapeError`` naming ``module`` unless ``x.ndim`` is ``rank`` (or one of
    them), or at least ``min_rank``."""
    if min_rank is not None:
        if jnp.ndim(x) < min_rank:
            raise ShapeError(
                _layer_name(module),
                f"expected {what} of rank at least {min_rank}, got shape {tuple(jnp.shape(x))}.",
            )
        return
    ranks = (rank,) if isinstance(rank, int) else tuple(rank)
    if jnp.ndim(x) not in ranks:
        want = " or ".join(str(r) for r in ranks)
        raise ShapeError(
            _layer_name(module),
            f"expected {what} of rank {want}, got shape {tuple(jnp.shape(x))}.",
        )


def check_positive_int(owner: Any, name: str, value: Any, minimum: int = 1) -> None:
    """Raise ``ValueError`` naming ``owner`` unless ``value`` is an int of at least
    ``minimum``, which is 1 ("a positive int", the default) or 0 ("a non-negative int")."""
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < minimum:
        kind = "a positive" if minimum == 1 else "a non-negative"
        raise ValueError(f"{_layer_name(owner)}: {name} must be {kind} int, got {value!r}.")


def check_floating(module: Any, x: jax.Array, what: str = "input") -> None:
    """Raise ``DTypeError`` naming ``module`` unless ``x`` has a floating-point dtype."""
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise DTypeError(
            _layer_name(module),
            f"expected a floating-point {what}, got dtype {dtype}. "
            f"Hint: cast it first, e.g. x.astype(jnp.float32).",
        )


def _leaf_paths(tree: Any) -> dict[str, Any]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {"/".join(_key_str(k) for k in path): leaf for path, leaf in flat}


def _key_str(k: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _compare_trees(module: Any, what: str, actual: Any, expected: Any, inputs: Any) -> None:
    """Raise ``ParamsError`` at the first missing, extra or mis-shaped leaf."""
    if not isinstance(actual, Mapping):
        raise ParamsError(
            _layer_name(module), f"expected {what} as a dict, got {type(actual).__name__}."
        )
    got, want = _leaf_paths(actual), _leaf_paths(expected)
    missing = [p for p in want if p not in got]
    extra = [p for p in got if p not in want]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {what} {missing}")
        if extra:
            parts.append(f"unexpected {what} {extra}")
        raise ParamsError(
            _layer_name(module),
            f"{' and '.join(parts)}; expected the keys {sorted(want)}.",
        )
    for path, spec in want.items():
        shape = tuple(jnp.shape(got[path]))
        if shape != tuple(spec.shape):
            shapes = [tuple(jnp.shape(x)) for x in jax.tree.leaves(inputs)]
            raise ParamsError(
                _layer_name(module),
                f"{what} '{path}' has shape {shape}, but inputs of shape "
                f"{', '.join(map(str, shapes))} need {tuple(spec.shape)}. "
                "Hint: were these params made by init with inputs of another shape?",
            )


# --------------------------------------------------------------------------- the base class


@functools.lru_cache(maxsize=1024)
def _accepted(fn: Callable) -> frozenset[str]:
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
def _takes_keyword(fn: Callable, name: str) -> bool:
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True
    if name in parameters:
        return parameters[name].kind is not inspect.Parameter.POSITIONAL_ONLY
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def _public(base_method: Callable, raw: Callable) -> Callable:
    @functools.wraps(base_method, assigned=("__name__", "__qualname__", "__annotations__"))
    def method(self, *args, **kwargs):
        return base_method(self, *args, **kwargs)

    method.__doc__ = raw.__doc__ or base_method.__doc__
    method._jnn_public = True
    return method


@dataclass_transform(frozen_default=True)
class Module:
    """Base class of every layer and model: hyperparameters plus two pure methods.

    Subclasses become frozen dataclasses automatically, so they print, compare and hash
    by their hyperparameters and can be static arguments of ``jax.jit``.

    Public methods, identical for every layer:

    * ``init(key, *inputs, **kwargs) -> params``
    * ``init_with_state(key, *inputs, **kwargs) -> (params, state)``
    * ``apply(params, *inputs, state=None, key=None, is_training=False, **kwargs)``
      returns ``outputs``, or ``(outputs, new_state)`` when ``state`` is given.

    ``inputs`` of ``init`` may be arrays or ``jax.ShapeDtypeStruct``; only their shapes
    and dtypes are read.

    Write a leaf layer by defining ``init`` (or ``init_with_state``) and ``apply``;
    write a composite by defining ``forward(self, scope, *inputs)``. A leaf may also
    define ``check_inputs(self, params, *inputs)``: it runs before the generic params
    check, so a layer can say precisely what is wrong with an input (``Dense`` reports
    the expected last dimension) instead of which parameter no longer fits.

    Examples:
      >>> import jax, jax.numpy as jnp, jnn
      >>> class Scale(jnn.Module):
      ...     def init(self, key, x):
      ...         return {"scale": jnp.ones(x.shape[-1:], x.dtype)}
      ...     def apply(self, params, x):
      ...         return x * params["scale"]
      >>> params = Scale().init(jax.random.key(0), jnp.zeros((2, 3)))
      >>> Scale().apply(params, jnp.full((2, 3), 2.0)).tolist()
      [[2.0, 2.0, 2.0], [2.0, 2.0, 2.0]]
    """

    _raw_init = None
    _raw_init_with_state = None
    _raw_apply = None
    _raw_forward = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        own = cls.__dict__
        if "forward" in own:
            cls._raw_forward = own["forward"]
            # A composite re-derives what its parent layer defined by hand.
            for name in ("init", "init_with_state", "apply"):
                if name not in own:
                    setattr(cls, f"_raw_{name}", None)
        for name in ("init", "init_with_state", "apply"):
            method = own.get(name)
            if method is not None and not getattr(method, "_jnn_public", False):
                setattr(cls, f"_raw_{name}", method)
                setattr(cls, name, _public(getattr(Module, name), method))
        if not dataclasses.is_dataclass(cls) or "__dataclass_fields__" not in own:
            dataclasses.dataclass(frozen=True, repr=False)(cls)
        cls.__hash__ = Module.__hash__

    def __hash__(self) -> int:
        # dataclass equality says Dense(param_dtype=jnp.float32) equals
        # Dense(param_dtype=np.dtype("float32")); the hash must agree, so hash dtypes by
        # their canonical form.
        values = tuple(_canonical(getattr(self, f.name)) for f in dataclasses.fields(self))
        return hash((type(self), values))

    def __repr__(self) -> str:
        shown = []
        for field in dataclasses.fields(self):
            if not field.repr:
                continue
            value = getattr(self, field.name)
            if field.default is not dataclasses.MISSING and _same(value, field.default):
                continue
            shown.append(f"{field.name}={_short_repr(value)}")
        return f"{type(self).__name__}({', '.join(shown)})"

    def layer_name(self) -> str:
        """The name used in error messages; the class name by default."""
        return type(self).__name__

    # ----------------------------------------------------------------- init

    def init(self, key: jax.Array, *inputs: Any, **kwargs: Any) -> Params:
        """Create the parameters for inputs shaped like ``inputs``.

        Args:
          key: A PRNG key; each child's key is derived from it by name.
          *inputs: Sample inputs (arrays or ``jax.ShapeDtypeStruct``); only shapes and
            dtypes are read.

        Returns:
          The params: a nested dict of arrays.

        Raises:
          ParamsError: If the model also has state; use ``init_with_state`` then.
        """
        cls = type(self)
        if cls._raw_init is not None:
            _check_key(self, key, "init")
            return cls._raw_init(self, key, *_specs(inputs), **_specs(kwargs))
        params, state = self.init_with_state(key, *inputs, **kwargs)
        if state:
            raise ParamsError(
                _layer_name(self),
                f"this model has non-trainable state {sorted(_leaf_paths(state))}, which "
                "init would drop. Use params, state = model.init_with_state(key, ...), "
                "then model.apply(params, ..., state=state).",
            )
        return params

    def init_with_state(self, key: jax.Array, *inputs: Any, **kwargs: Any) -> tuple[Params, State]:
        """Create the parameters and the non-trainable state.

        Returns:
          ``(params, state)``; ``state`` is ``{}`` for stateless models.
        """
        cls = type(self)
        _check_key(self, key, "init")
        inputs, kwargs = _specs(inputs), _specs(kwargs)
        if cls._raw_init_with_state is not None:
            return cls._raw_init_with_state(self, key, *inputs, **kwargs)
        if cls._raw_init is not None:
            return cls._raw_init(self, key, *inputs, **kwargs), {}
        if cls._raw_forward is not None:
            return _init_composite(self, key, inputs, kwargs)
        if cls._raw_apply is not None:
            # A layer without parameters need not define init; running its apply on
            # abstract inputs still checks them, as init does for every other layer.
            jax.eval_shape(lambda xs, kw: cls._raw_apply(self, {}, *xs, **kw), inputs, kwargs)
            return {}, {}
        raise NotImplementedError(
            f"{cls.__name__} defines neither init/apply nor forward; see jnn.Module."
        )

    # ----------------------------------------------------------------- apply

    def apply(
        self,
        params: Params,
        *inputs: Any,
        state: State | None = None,
        key: jax.Array | None = None,
        is_training: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Run the model.

        Args:
          params: The params from ``init``.
          *inputs: The inputs.
          state: The state from ``init_with_state``. When given, the new state is
            returned too.
          key: A PRNG key, needed by stochastic layers (dropout) when training.
          is_training: Training or inference behaviour (a Python bool).

        Returns:
          ``outputs``, or ``(outputs, new_state)`` when ``state`` was given.
        """
        if not isinstance(is_training, bool):
            raise DTypeError(
                _layer_name(self),
                f"is_training must be a Python bool, got {type(is_training).__name__}. "
                "Hint: under jax.jit mark it static, e.g. "
                "jax.jit(model.apply, static_argnames='is_training').",
            )
        if key is not None:
            _check_key(self, key, "apply")
        cls = type(self)
        if cls._raw_apply is not None:
            out, new_state = _apply_leaf(self, params, inputs, state, key, is_training, kwargs)
        elif cls._raw_forward is not None:
            out, new_state = _apply_composite(self, params, inputs, state, key, is_training, kwargs)
        else:
            raise NotImplementedError(f"{cls.__name__} defines neither apply nor forward.")
        return out if state is None else (out, new_state)

    def forward(self, scope: Scope, *inputs: Any, **kwargs: Any) -> Any:
        """Define a composite: compute outputs, calling children as ``scope(name, layer, x)``."""
        raise NotImplementedError


def _canonical(value: Any) -> Any:
    if isinstance(value, type) and (issubclass(value, np.generic) or hasattr(value, "dtype")):
        try:
            return np.dtype(value)
        except TypeError:
            return value
    return value


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a is b or a == b)
    except Exception:  # e.g. arrays, whose == is elementwise
        return False


def _short_repr(value: Any) -> str:
    if isinstance(value, Module | tuple | list | str | int | float | bool | type(None)):
        if isinstance(value, tuple | list):
            inner = ", ".join(_short_repr(v) for v in value)
            return (
                f"({inner},)"
                if isinstance(value, tuple) and len(value) == 1
                else (f"({inner})" if isinstance(value, tuple) else f"[{inner}]")
            )
        return repr(value)
    if isinstance(value, functools.partial):
        return f"partial({_short_repr(value.func)}, ...)"
    name = getattr(value, "__name__", None)
    if callable(value) and name:
        return name if name != "<lambda>" else "<lambda>"
    if isinstance(value, type):
        return value.__name__
    return repr(value)


def _expected_trees(module: Module, inputs: Any, kwargs: Any) -> tuple[Any, Any]:
    """Shapes of the params and state that ``init`` would create for these inputs.

    Keyword arguments of ``apply`` (masks, caches, flags) reach ``init`` only if it
    names them or takes ``**kwargs``, so a layer's ``init`` need not accept them all.
    """
    cls = type(module)
    raw_init = cls._raw_init_with_state or cls._raw_init
    if raw_init is not None and kwargs:
        kwargs = {k: v for k, v in kwargs.items() if _takes_keyword(raw_init, k)}
    inputs, kwargs = _specs(inputs), _specs(kwargs)
    try:
        return _expected_cached(module, inputs, tuple(sorted(kwargs.items())))
    except TypeError:  # an unhashable hyperparameter or input
        return _expected_uncached(module, inputs, kwargs)


@functools.lru_cache(maxsize=2048)
def _expected_cached(module: Module, inputs: tuple, kwargs: tuple) -> tuple[Any, Any]:
    return _expected_uncached(module, inputs, dict(kwargs))


def _expected_uncached(module: Module, inputs: tuple, kwargs: dict) -> tuple[Any, Any]:
    return jax.eval_shape(
        lambda xs, kw: module.init_with_state(jax.random.key(0), *xs, **kw), inputs, kwargs
    )


def _apply_leaf(module, params, inputs, state, key, is_training, kwargs):
    cls = type(module)
    if not isinstance(params, Mapping):
        raise ParamsError(
            _layer_name(module), f"expected params as a dict, got {type(params).__name__}."
        )
    check = getattr(module, "check_inputs", None)
    if check is not None:
        check(params, *inputs, **kwargs)
    expected_params, expected_state = _expected_trees(module, inputs, kwargs)
    _compare_trees(module, "params", params, expected_params, inputs)
    if state is not None:
        _compare_trees(module, "state", state, expected_state, inputs)
    accepted = _accepted(cls._raw_apply)
    context = {"state": state, "key": key, "is_training": is_training}
    extra = {name: context[name] for name in accepted}
    result = cls._raw_apply(module, params, *inputs, **extra, **kwargs)
    if "state" in accepted:
        if not (isinstance(result, tuple) and len(result) == 2):
            raise TypeError(
                f"{cls.__name__}.apply takes state, so it must return (outputs, new_state)."
            )
        return result
    return result, state


# --------------------------------------------------------------------------- composites


class Scope:
    """Calls a composite's children, routing params, state and keys by child name.

    A composite's ``forward(self, scope, *inputs)`` receives one and calls
    ``scope(name, layer, *inputs)``; ``params[name]`` (and ``state[name]``) feed that
    child, and its key is ``child_key(key, name)``. The same name called twice shares
    its parameters. ``scope.param`` creates a parameter of the composite itself.

    Attributes:
      is_training: The ``is_training`` flag given to ``apply``.
    """

    def __init__(self, owner, params, state, key, is_training, records=None):
        self._owner = owner
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
                f"{_layer_name(self._owner)}: child name {name!r} must be a non-empty "
                "string of letters, digits, '_', '-' or '.' (no '/' or '~')."
            )
        previous = self._modules.setdefault(name, what)
        if previous != what:
            raise ValueError(
                f"{_layer_name(self._owner)}: the name {name!r} is used for two different "
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
                _layer_name(self._owner),
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
            self._records[name] = ("param", initializer, shape, dtype)
            return initializer(jax.random.key(0), shape, dtype)
        if name not in self._params:
            raise ParamsError(
                _layer_name(self._owner), f"missing params ['{name}'] of shape {shape}."
            )
        value = self._params[name]
        if tuple(jnp.shape(value)) != shape:
            raise ParamsError(
                _layer_name(self._owner),
                f"params '{name}' has shape {tuple(jnp.shape(value))}, expected {shape}.",
            )
        return value

    def __call__(self, name: str, layer: Module, *inputs: Any, **kwargs: Any) -> Any:
        """Run child ``layer`` under ``name`` on ``inputs`` and return its outputs."""
        if not isinstance(layer, Module):
            raise TypeError(
                f"{_layer_name(self._owner)}: scope({name!r}, ...) expected a jnn.Module, "
                f"got {type(layer).__name__}. Hint: wrap plain functions in jnn.Lambda."
            )
        count = self._claim(name, layer)
        try:
            if self._records is not None:
                return self._trace_child(name, layer, count, inputs, kwargs)
            params = self._params.get(name, {})
            state = None
            if self._state is not None:
                state = self.new_state.get(name, self._state.get(name, {}))
            result = layer.apply(
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
            self._records[name] = ("layer", layer, _specs(inputs), _specs(kwargs))
        params, state = layer.init_with_state(jax.random.key(0), *inputs, **kwargs)
        out, _ = layer.apply(params, *inputs, state=state, is_training=False, **kwargs)
        return out


def _init_composite(module: Module, key, inputs, kwargs) -> tuple[Params, State]:
    records: dict[str, tuple] = {}

    def trace(xs, kw):
        scope = Scope(module, {}, {}, jax.random.key(0), False, records=records)
        return type(module)._raw_forward(module, scope, *xs, **kw)

    jax.eval_shape(trace, inputs, kwargs)
    params: Params = {}
    state: State = {}
    for name, record in records.items():
        if record[0] == "param":
            _, initializer, shape, dtype = record
            params[name] = initializer(child_key(key, name), shape, dtype)
            continue
        _, layer, child_inputs, child_kwargs = record
        try:
            p, s = layer.init_with_state(child_key(key, name), *child_inputs, **child_kwargs)
        except LayerError as error:
            error.path.insert(0, name)
            raise
        if p:
            params[name] = p
        if s:
            state[name] = s
    return params, state


def _apply_composite(module, params, inputs, state, key, is_training, kwargs):
    if not isinstance(params, Mapping):
        raise ParamsError(
            _layer_name(module), f"expected params as a dict, got {type(params).__name__}."
        )
    if state is not None and not isinstance(state, Mapping):
        raise ParamsError(
            _layer_name(module), f"expected state as a dict, got {type(state).__name__}."
        )
    scope = Scope(module, params, state, key, is_training)
    out = type(module)._raw_forward(module, scope, *inputs, **kwargs)
    for what, tree in (("params", params), ("state", state)):
        extra = sorted(set(tree or {}) - set(scope._modules))
        if extra:
            raise ParamsError(
                _layer_name(module),
                f"unexpected {what} {extra}; this model's children are "
                f"{sorted(n for n in scope._modules)}.",
            )
    if state is None:
        return out, None
    new_state = {n: scope.new_state.get(n, s) for n, s in state.items()}
    return out, new_state
