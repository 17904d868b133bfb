"""The model contract: ``Module``, the base of every layer.

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
  the explicit ``scope`` (``jnn._scope``), which routes each child's params, state and
  key by name.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, dataclass_transform

import jax

from jnn._calls import accepted, call_error, init_kwargs, public_signature
from jnn._checks import check_array_inputs, check_key, check_params_leaves
from jnn._errors import DTypeError, LayerError, ParamsError, layer_name
from jnn._hyperparams import canonical, install_validation, same, short_repr
from jnn._params_check import compare_trees, expected_trees, leaf_paths
from jnn._scope import Params, Scope, Shape, State, apply_composite, init_composite, specs

__all__ = ["Module", "Params", "State", "Shape"]


# --------------------------------------------------------------------------- helpers


def _public(cls: type, name: str, raw: Callable | None) -> Callable:
    """The public ``init``/``init_with_state``/``apply`` of ``cls``: ``Module``'s, with the
    layer's docstring and real signature."""
    base = getattr(Module, name)

    @functools.wraps(base, assigned=("__name__", "__annotations__"))
    def method(self, *args, **kwargs):
        return base(self, *args, **kwargs)

    method.__qualname__ = f"{cls.__qualname__}.{name}"
    method.__doc__ = (raw.__doc__ if raw is not None else None) or base.__doc__
    signature = public_signature(cls, name) or inspect.signature(base)
    returns = {"init": "Params", "init_with_state": "tuple[Params, State]"}
    method.__signature__ = signature.replace(
        return_annotation=returns.get(name, signature.return_annotation)
    )
    method._jnn_public = True
    return method


# --------------------------------------------------------------------------- the base class


@dataclass_transform(frozen_default=True)
class Module:
    """Base class of every layer and model: hyperparameters plus two pure methods.

    Subclasses become frozen dataclasses automatically, so they print, compare and hash
    by their hyperparameters and can be static arguments of ``jax.jit``. Their
    constructor arguments are checked against the field annotations before
    ``__post_init__`` runs, so a wrong kind of argument fails where it was written.

    Public methods, identical for every layer:

    * ``init(key, *inputs, **kwargs) -> params``
    * ``init_with_state(key, *inputs, **kwargs) -> (params, state)``
    * ``apply(params, *inputs, state=None, key=None, is_training=False, **kwargs)``
      returns ``outputs``, or ``(outputs, new_state)`` when ``state`` is given.

    ``inputs`` of ``init`` may be arrays or ``jax.ShapeDtypeStruct``; only their shapes
    and dtypes are read. Keywords of ``apply`` reach ``init`` only if ``init`` names them.

    Write a leaf layer by defining ``init`` (or ``init_with_state``) and ``apply``;
    write a composite by defining ``forward(self, scope, *inputs)``. A leaf may also
    define ``check_inputs(self, params, *inputs)``: it runs before the generic params
    check, so a layer can say precisely what is wrong with an input (``Dense`` reports
    the expected last dimension) instead of which parameter no longer fits. The helpers
    for writing layers are in ``jnn.extend``.

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
        # Every class gets public methods whose signature is its own.
        raw_init = cls._raw_init or cls._raw_init_with_state
        raws = {"init": raw_init, "init_with_state": raw_init, "apply": cls._raw_apply}
        for name, raw in raws.items():
            setattr(cls, name, _public(cls, name, raw or cls._raw_forward))
        if not dataclasses.is_dataclass(cls) or "__dataclass_fields__" not in own:
            dataclasses.dataclass(frozen=True, repr=False)(cls)
        install_validation(cls)
        cls.__hash__ = Module.__hash__

    def __hash__(self) -> int:
        # dataclass equality says Dense(param_dtype=jnp.float32) equals
        # Dense(param_dtype=np.dtype("float32")); the hash must agree, so hash dtypes by
        # their canonical form.
        values = tuple(canonical(getattr(self, f.name)) for f in dataclasses.fields(self))
        try:
            return hash((type(self), values))
        except TypeError:
            for field, value in zip(dataclasses.fields(self), values, strict=True):
                try:
                    hash(value)
                except TypeError:
                    raise TypeError(
                        f"{type(self).__name__}: hyperparameter '{field.name}' is a "
                        f"{type(value).__name__}, which cannot be hashed, and a layer must be "
                        "(jax.jit takes it as a static argument). Hint: use a tuple instead "
                        "of a list, or convert it in __post_init__."
                    ) from None
            raise

    def __repr__(self) -> str:
        shown = []
        for field in dataclasses.fields(self):
            if not field.repr:
                continue
            value = getattr(self, field.name)
            if field.default is not dataclasses.MISSING and same(value, field.default):
                continue
            shown.append(f"{field.name}={short_repr(value)}")
        return f"{type(self).__name__}({', '.join(shown)})"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"{layer_name(self)} is not called directly: jnn layers hold no parameters. "
            "Create them with params = model.init(key, x), then run "
            "y = model.apply(params, x)."
        )

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
            check_key(self, key, "init")
            check_array_inputs(self, inputs, "init")
            args = (self, key, *specs(inputs))
            kwargs = specs(init_kwargs(self, kwargs))
            return _params_tree(self, _call(self, "init", cls._raw_init, args, kwargs))
        params, state = self.init_with_state(key, *inputs, **kwargs)
        if state:
            raise ParamsError(
                layer_name(self),
                f"this model has non-trainable state {sorted(leaf_paths(state))}, which "
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
        check_key(self, key, "init")
        check_array_inputs(self, inputs, "init")
        inputs, kwargs = specs(inputs), specs(init_kwargs(self, kwargs))
        if cls._raw_init_with_state is not None:
            return _call(self, "init", cls._raw_init_with_state, (self, key, *inputs), kwargs)
        if cls._raw_init is not None:
            params = _call(self, "init", cls._raw_init, (self, key, *inputs), kwargs)
            return _params_tree(self, params), {}
        if cls._raw_forward is not None:
            _bind_or_raise(self, "init", cls._raw_forward, (self, None, *inputs), kwargs)
            return init_composite(self, key, inputs, kwargs)
        if cls._raw_apply is not None:
            # A layer without parameters need not define init; running its apply on
            # abstract inputs still checks them, as init does for every other layer.
            _bind_or_raise(self, "init", cls._raw_apply, (self, {}, *inputs), kwargs)
            check = getattr(self, "check_inputs", None)

            def checked(xs, kw):  # the layer's own input checks first, then its apply
                if check is not None:
                    check({}, *xs, **kw)
                return cls._raw_apply(self, {}, *xs, **kw)

            jax.eval_shape(checked, inputs, kwargs)
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
                layer_name(self),
                f"is_training must be a Python bool, got {type(is_training).__name__}. "
                "Hint: under jax.jit mark it static, e.g. "
                "jax.jit(model.apply, static_argnames='is_training').",
            )
        if key is not None:
            check_key(self, key, "apply")
        check_array_inputs(self, inputs, "apply")
        cls = type(self)
        if cls._raw_apply is not None:
            out, new_state = _apply_leaf(self, params, inputs, state, key, is_training, kwargs)
        elif cls._raw_forward is not None:
            _bind_or_raise(self, "apply", cls._raw_forward, (self, None, *inputs), kwargs)
            out, new_state = apply_composite(self, params, inputs, state, key, is_training, kwargs)
        else:
            raise NotImplementedError(f"{cls.__name__} defines neither apply nor forward.")
        return out if state is None else (out, new_state)

    def forward(self, scope: Scope, *inputs: Any, **kwargs: Any) -> Any:
        """Define a composite: compute outputs, calling children as ``scope(name, layer, x)``."""
        raise NotImplementedError


def _bind_or_raise(module: Any, method: str, fn: Callable, args: tuple, kwargs: dict) -> None:
    error = call_error(module, method, fn, args, kwargs)
    if error is not None:
        raise error


def _params_tree(module: Any, params: Any) -> Any:
    """What a layer's own ``init`` returned, if it is a dict of params."""
    if isinstance(params, Mapping):
        return params
    hint = (
        " Hint: a layer with state defines init_with_state(key, x) -> (params, state)."
        if isinstance(params, tuple)
        else " Hint: put arrays under names, e.g. {'weight': w}; without params, return {}."
    )
    raise ParamsError(
        layer_name(module),
        f"init must return the params as a dict, got {type(params).__name__}.{hint}",
    )


def _call(module: Any, method: str, fn: Callable, args: tuple, kwargs: dict) -> Any:
    """``fn(*args, **kwargs)``; a call that cannot bind is answered with the right call."""
    try:
        return fn(*args, **kwargs)
    except TypeError as error:
        if isinstance(error, LayerError):
            raise
        better = call_error(module, method, fn, args, kwargs)
        if better is None:
            raise
        raise better from None


def _context(cls: type, state: Any, key: Any, is_training: bool) -> dict:
    """The context arguments a leaf's own ``apply`` takes by name."""
    context = {"state": state, "key": key, "is_training": is_training}
    return {name: context[name] for name in accepted(cls._raw_apply)}


def apply_raw(module, params, inputs, state, key, is_training, kwargs):
    """A leaf's own ``apply`` with the context arguments it takes; ``(out, new_state)``."""
    cls = type(module)
    extra = _context(cls, state, key, is_training)
    result = _call(module, "apply", cls._raw_apply, (module, params, *inputs), {**extra, **kwargs})
    if "state" in extra:
        if not (isinstance(result, tuple) and len(result) == 2):
            raise TypeError(
                f"{cls.__name__}.apply takes state, so it must return (outputs, new_state)."
            )
        return result
    return result, state


def _apply_leaf(module, params, inputs, state, key, is_training, kwargs):
    cls = type(module)
    if not isinstance(params, Mapping):
        raise ParamsError(
            layer_name(module), f"expected params as a dict, got {type(params).__name__}."
        )
    extra = _context(cls, state, key, is_training)
    _bind_or_raise(module, "apply", cls._raw_apply, (module, params, *inputs), {**extra, **kwargs})
    check_params_leaves(module, params)
    check = getattr(module, "check_inputs", None)
    if check is not None:
        check(params, *inputs, **kwargs)
    expected_params, expected_state = expected_trees(module, inputs, kwargs)
    compare_trees(module, "params", params, expected_params, inputs)
    if state is not None:
        compare_trees(module, "state", state, expected_state, inputs)
    return apply_raw(module, params, inputs, state, key, is_training, kwargs)
