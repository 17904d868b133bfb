"""Mixed precision: one ``Policy`` of dtypes, applied to a whole model by ``MixedPrecision``.

A policy names three dtypes: the params are stored (and updated by the optimizer) in
``param_dtype``, the model computes in ``compute_dtype``, and its outputs come back in
``output_dtype``. The usual accelerator setting keeps float32 params and outputs and
computes in bfloat16, which halves activation memory and runs matrix products on the
bfloat16 units. What must stay in float32 does so whatever the policy: normalisation
statistics (``LayerNorm``, ``RMSNorm``, ``BatchNorm``, ``GroupNorm``), attention's softmax,
and losses, which promote half-precision inputs to float32.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jnn._checks import check_floating_dtype
from jnn._module import Module, Params, State

__all__ = ["Policy", "MixedPrecision"]

_DTYPE = "a floating-point dtype such as jnp.bfloat16 or 'float32'"


def _cast_floating(tree: Any, dtype: np.dtype) -> Any:
    """``tree`` with every floating-point array cast to ``dtype``; other leaves (integer
    ids, boolean masks, PRNG keys, Python numbers) are left as they are."""

    def cast(leaf: Any) -> Any:
        leaf_dtype = getattr(leaf, "dtype", None)
        if leaf_dtype is None or not isinstance(leaf, jax.Array | np.ndarray):
            return leaf
        if jnp.issubdtype(leaf_dtype, jnp.floating) and leaf_dtype != dtype:
            return leaf.astype(dtype)
        return leaf

    return jax.tree.map(cast, tree)


@dataclasses.dataclass(frozen=True)
class Policy:
    """The dtypes a model keeps its params in, computes in, and returns.

    Args:
      compute_dtype: Dtype of the forward (and so the backward) pass: params and
        floating-point inputs are cast to it on entry. ``jnp.bfloat16`` on GPUs and
        TPUs; ``jnp.float16`` needs a ``jnn.DynamicLossScale`` in training.
      param_dtype: Dtype the params are created and stored in, and so the dtype of
        their gradients and of the optimizer's state. float32 by default.
      output_dtype: Dtype of the model's floating-point outputs. float32 by default, so
        the loss and metrics see float32 values.

    Dtypes may be given as NumPy/JAX dtypes or names (``"bfloat16"``).

    Examples:
      >>> import jax.numpy as jnp, jnn
      >>> policy = jnn.Policy(compute_dtype=jnp.bfloat16)
      >>> policy
      Policy(compute_dtype=bfloat16, param_dtype=float32, output_dtype=float32)
      >>> policy.cast_to_compute({"w": jnp.ones(2), "ids": jnp.arange(2)})["w"].dtype
      dtype(bfloat16)
    """

    compute_dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    output_dtype: Any = jnp.float32

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = check_floating_dtype("Policy", field.name, getattr(self, field.name), _DTYPE)
            object.__setattr__(self, field.name, value)

    def __repr__(self) -> str:
        names = (f"{f.name}={getattr(self, f.name).name}" for f in dataclasses.fields(self))
        return f"Policy({', '.join(names)})"

    def cast_to_compute(self, tree: Any) -> Any:
        """``tree`` with its floating-point arrays in ``compute_dtype``."""
        return _cast_floating(tree, self.compute_dtype)

    def cast_to_param(self, tree: Any) -> Any:
        """``tree`` with its floating-point arrays in ``param_dtype``."""
        return _cast_floating(tree, self.param_dtype)

    def cast_to_output(self, tree: Any) -> Any:
        """``tree`` with its floating-point arrays in ``output_dtype``."""
        return _cast_floating(tree, self.output_dtype)


class MixedPrecision(Module):
    """``model`` under a mixed-precision ``policy``: the same params, computed in another dtype.

    ``init`` creates the model's params and casts them to ``policy.param_dtype``.
    ``apply`` casts the params and every floating-point input (keyword inputs, such as
    a KV cache, included) to ``policy.compute_dtype``, runs the model, and casts its
    floating-point outputs to ``policy.output_dtype``. Integer ids, boolean masks and
    keys pass unchanged. The gradient of a cast is the cast back, so gradients arrive
    in the params' dtype and the optimizer updates float32 master weights. The model's
    state (batch-norm running statistics) is neither cast nor changed in dtype.

    The params tree is the model's own (no extra level), so a checkpoint of the plain
    model loads into the wrapped one and back, and the model's other methods are
    reached through the wrapper (``MixedPrecision(lm).init_cache(params, 1)``). A KV
    cache passed to ``apply`` is computed on in ``compute_dtype`` and comes back in
    ``output_dtype``, like every floating-point output: create it in that dtype (the
    params' dtype, float32, by default) so a decoding loop's carry keeps one dtype.

    Args:
      model: Any ``jnn.Module``.
      policy: A ``jnn.Policy``, or just a compute dtype (``jnp.bfloat16`` or
        ``"bfloat16"``), meaning ``Policy(compute_dtype=that)``; bfloat16 by default.

    Shapes:
      Those of ``model``; only floating-point dtypes change.

    Examples:
      >>> import jax, jax.numpy as jnp, jnn
      >>> model = jnn.MixedPrecision(jnn.MLP([32, 10]), jnp.bfloat16)
      >>> params = model.init(jax.random.key(0), jnp.zeros((4, 8)))
      >>> params["dense_0"]["weight"].dtype
      dtype('float32')
      >>> model.apply(params, jnp.ones((4, 8))).dtype
      dtype('float32')
    """

    model: Module
    policy: Any = jnp.bfloat16

    def __post_init__(self):
        if not isinstance(self.model, Module):
            raise TypeError(
                f"MixedPrecision: model must be a jnn.Module, got {type(self.model).__name__}."
            )
        if not isinstance(self.policy, Policy):
            expected = "a jnn.Policy or a floating-point compute dtype such as jnp.bfloat16"
            dtype = check_floating_dtype("MixedPrecision", "policy", self.policy, expected)
            object.__setattr__(self, "policy", Policy(compute_dtype=dtype))

    def wrapped_model(self) -> Module:
        """The model run with this wrapper's params tree (``summary`` lists its layers)."""
        return self.model

    def layer_name(self) -> str:
        # Errors are about the model: they name it, as if it ran alone.
        model = self.__dict__.get("model")
        return model.layer_name() if isinstance(model, Module) else "MixedPrecision"

    def check_inputs(self, params: Params, *inputs: Any, **kwargs: Any) -> None:
        """The model's own input checks, when it has them (``Dense`` names its width)."""
        check = getattr(type(self.model), "check_inputs", None)
        if check is not None:
            check(self.model, params, *inputs, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # The model's own methods (TransformerLM.init_cache, stack_blocks...) stay in
        # reach: they take the same params tree.
        model = self.__dict__.get("model")
        if name.startswith("_") or model is None:
            raise AttributeError(name)
        try:
            return getattr(model, name)
        except AttributeError:
            raise AttributeError(
                f"'MixedPrecision' object has no attribute {name!r}, nor has its model "
                f"{type(model).__name__}."
            ) from None

    def init_with_state(self, key: jax.Array, *inputs: Any, **kwargs: Any) -> tuple[Params, State]:
        params, state = self.model.init_with_state(key, *inputs, **kwargs)
        return self.policy.cast_to_param(params), state

    def apply(self, params, *inputs, state=None, key=None, is_training=False, **kwargs):
        policy = self.policy
        params = policy.cast_to_compute(params)
        inputs, kwargs = policy.cast_to_compute((inputs, kwargs))
        run = dict(key=key, is_training=is_training, **kwargs)
        if state is None:
            return policy.cast_to_output(self.model.apply(params, *inputs, **run)), None
        outputs, new_state = self.model.apply(params, *inputs, state=state, **run)
        return policy.cast_to_output(outputs), new_state
