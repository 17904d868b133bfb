r"""Gradient-based attribution: which inputs drove an output.

Three pure functions of ``(model, params, x, target)``, in the spirit of Captum's
``Saliency``, ``IntegratedGradients`` and ``NoiseTunnel(smoothgrad)``, each returning an
array shaped like ``x``:

* ``saliency``: the gradient of the chosen output with respect to the input (optionally
  times the input);
* ``integrated_gradients``: the gradient averaged along the straight path from a
  baseline to the input, times ``x - baseline``; its attributions add up to
  ``f(x) - f(baseline)`` (completeness);
* ``smooth_grad``: the gradient averaged over noisy copies of the input, the noise drawn
  from an explicit ``key``.

``integrated_gradients`` is in ``jnn._integrated_gradients``; this module holds the other
two and what all three share. The model runs in inference mode (``is_training=False``),
where examples do not interact, so the gradient of the *sum* of the chosen outputs over
the batch gives every example's own gradient in one backward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jnn._checks import check_at_run_time, check_floating, check_positive_int, is_concrete
from jnn._errors import DTypeError, ShapeError
from jnn._module import Module, Params, State
from jnn._train_checks import as_typed_key
from jnn._train_state import TrainState

__all__ = ["saliency", "smooth_grad"]


_Forward = Callable[[Params, jax.Array], jax.Array]


# --------------------------------------------------------------------------- checks


def _forward(name: str, model: Any, model_state: State | None) -> _Forward:
    """``params, x -> outputs`` for a ``jnn.Module`` (with its state) or a plain function."""
    if isinstance(model, Module):
        if model_state is None:
            return model.apply
        return lambda params, x: model.apply(params, x, state=model_state)[0]
    if isinstance(model, type) and issubclass(model, Module):
        raise TypeError(
            f"{name}: expected a jnn.Module or a function apply_fn(params, x) as model, got "
            f"the class {model.__name__}. Hint: instantiate it, e.g. {model.__name__}(...)."
        )
    if not callable(model):
        raise TypeError(
            f"{name}: expected a jnn.Module or a function apply_fn(params, x) as model, got "
            f"{type(model).__name__}. Hint: the arguments are (model, params, x, target)."
        )
    if model_state is not None:
        raise TypeError(
            f"{name}: model_state is passed to a jnn.Module's apply; for a plain function, "
            "close over the state instead: lambda params, x: apply_fn(params, x, state)."
        )
    return model


def _check_params(name: str, params: Any) -> None:
    if isinstance(params, TrainState):
        raise TypeError(
            f"{name}: expected params, got a jnn.TrainState. Hint: pass state.params, and "
            "model_state=state.model_state for a model with batch norm."
        )


def _check_inputs(name: str, x: ArrayLike) -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim < 1:
        raise ShapeError(
            name,
            "expected inputs x of shape [batch, ...], got a scalar. Hint: add the batch "
            "axis, e.g. x[None] for a single example.",
        )
    check_floating(name, x, "input x (gradients need it)")
    return x


def _chooser(name: str, forward: _Forward, params: Params, x: jax.Array, target: Any):
    """``x -> sum over the batch of the output picked by target``, after checking the
    output's shape and the target against each other (static shapes: free under jit)."""
    out = jax.eval_shape(forward, params, x)
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise TypeError(
            f"{name}: expected the model to return one array, got "
            f"{type(out).__name__}. Hint: wrap it to return the output to explain, e.g. "
            "lambda params, x: apply_fn(params, x)[0]."
        )
    batch = x.shape[0]
    if out.ndim not in (1, 2) or out.shape[0] != batch:
        raise ShapeError(
            name,
            f"expected the model's output of shape [batch] or [batch, classes] with batch "
            f"{batch} (the first axis of x {tuple(x.shape)}), got {tuple(out.shape)}. "
            "Hint: x needs its batch axis, e.g. x[None] for a single example.",
        )
    if target is None:
        if out.ndim == 2 and out.shape[1] != 1:
            raise ShapeError(
                name,
                f"target=None explains a scalar output per example ([batch] or [batch, 1]), "
                f"but the model returns {tuple(out.shape)}. Hint: pass the class to "
                "explain, e.g. target=logits.argmax(-1) for the predicted class.",
            )
        return lambda xs: forward(params, xs).sum()
    if out.ndim != 2:
        raise ShapeError(
            name,
            f"a target needs an output of shape [batch, classes], got {tuple(out.shape)}. "
            "Hint: target=None explains a scalar output.",
        )
    classes = out.shape[1]
    if isinstance(target, int | np.integer) and not isinstance(target, bool | np.bool_):
        if not 0 <= target < classes:
            raise ValueError(
                f"{name}: expected target in [0, {classes}) for an output of shape "
                f"{tuple(out.shape)}, got {int(target)}."
            )
        index = jnp.full((batch,), int(target), jnp.int32)
    else:
        index = jnp.asarray(target)
        if not jnp.issubdtype(index.dtype, jnp.integer):
            raise DTypeError(
                name,
                f"expected target as integer class indices, got dtype {index.dtype}. "
                "Hint: target=logits.argmax(-1), or target=None for a scalar output.",
            )
        if index.shape not in ((), (batch,)):
            raise ShapeError(
                name,
                f"expected target as an int or an array of shape ({batch},) (one class per "
                f"example), got shape {tuple(index.shape)}.",
            )
        check_at_run_time(
            name,
            (index >= 0) & (index < classes),
            f"expected every target in [0, {classes}) for an output of shape {tuple(out.shape)}.",
        )
        index = jnp.broadcast_to(index, (batch,))

    def chosen(xs):
        outputs = forward(params, xs)
        return jnp.take_along_axis(outputs, index[:, None], axis=1).sum()

    return chosen


def _check_count(name: str, what: str, value: Any) -> None:
    try:
        check_positive_int(name, what, value)
    except TypeError as error:
        raise TypeError(f"{error} Hint: under jax.jit mark it static.") from None


def _weighted_sum(
    fn: Callable[[Any], jax.Array],
    items: Any,
    weights: np.ndarray,
    batch_size: int | None,
    like: jax.Array,
    inputs: Any,
) -> jax.Array:
    """``sum_i weights[i] * fn(items[i])``, ``batch_size`` items at a time (all at once for
    ``None``), each chunk a ``vmap``; the last one is padded with items of weight 0.

    Called on concrete ``inputs``, the chunks run in a Python loop, one after another.
    Under ``jit`` or ``vmap`` (a tracer among ``inputs``) they run in a ``lax.scan``,
    which keeps the program small and its memory at one chunk; a loop would not serve
    eager calls: a new ``scan`` compiles on every call, and XLA's CPU runs convolution
    gradients slowly inside one (jax-ml/jax#12868).
    """
    n = len(weights)
    size = n if batch_size is None else min(batch_size, n)
    if size == n:
        return jnp.tensordot(jnp.asarray(weights, like.dtype), jax.vmap(fn)(items), axes=1)
    chunks = -(-n // size)
    pad = chunks * size - n
    items = jax.tree.map(lambda a: jnp.concatenate([a, a[:pad]]), items)
    items = jax.tree.map(lambda a: a.reshape(chunks, size, *a.shape[1:]), items)
    weights = np.concatenate([weights, np.zeros(pad)]).astype(like.dtype).reshape(chunks, size)

    def add(total, chunk):
        some, w = chunk
        return total + jnp.tensordot(w, jax.vmap(fn)(some), axes=1), None

    total = jnp.zeros_like(like)
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(inputs)):
        return jax.lax.scan(add, total, (items, weights))[0]
    for i in range(chunks):
        total, _ = add(total, (jax.tree.map(lambda a, i=i: a[i], items), weights[i]))
    return total


def saliency(
    model: Module | Callable,
    params: Params,
    x: ArrayLike,
    target: int | ArrayLike | None = None,
    *,
    model_state: State | None = None,
    multiply_by_inputs: bool = False,
) -> jax.Array:
    r"""Saliency: the gradient of the chosen output with respect to the input.

    .. math:: A_i = \frac{\partial f_c(x)}{\partial x_i}
        \qquad\text{or, with } \texttt{multiply\_by\_inputs}, \qquad
        A_i = x_i \frac{\partial f_c(x)}{\partial x_i}

    ``f_c`` is the output of class ``c = target`` (a logit for a classifier; wrap the model
    in a softmax to explain probabilities). The sign says whether raising the input
    raises the output; most pictures show ``abs(A)``.

    Args:
      model: A ``jnn.Module``, or a function ``apply_fn(params, x) -> outputs``.
      params: The model's params.
      x: Inputs with a batch axis, ``[batch, ...]``, floating point.
      target: What to explain: an int (the same class for every example), an int array
        ``[batch]`` (one class per example, e.g. ``logits.argmax(-1)``), or ``None`` when
        the model returns one number per example (``[batch]`` or ``[batch, 1]``).
      model_state: The state of a model with batch norm (from ``init_with_state`` or
        ``TrainState.model_state``); the model runs in inference mode either way.
      multiply_by_inputs: Return gradient times input ("gradient * input").

    Returns:
      The attributions, shaped and typed like ``x``.

    Shapes:
      ``x`` ``[batch, ...]``; the model's output ``[batch, classes]`` (with a target) or
      ``[batch]``/``[batch, 1]`` (without); the result ``[batch, ...]``. For one example,
      pass ``x[None]``; ``jax.vmap`` over examples then works as usual.

    Raises:
      TypeError: If ``model`` is neither a ``jnn.Module`` nor a function, or returns
        more than one array.
      ShapeError: If ``x`` has no batch axis, the output's shape does not fit the target,
        or ``target`` is neither a scalar nor ``[batch]``.
      DTypeError: If ``x`` is not floating point or ``target`` not integer.
      ValueError: If a target is outside ``[0, classes)``.

    Examples:
      >>> import jax.numpy as jnp, jnn
      >>> model = jnn.Dense(1)  # f(x) = 2 x_0 - x_1 + 0.5
      >>> params = {"weight": jnp.array([[2.0], [-1.0]]), "bias": jnp.array([0.5])}
      >>> x = jnp.array([[3.0, 4.0]])
      >>> jnn.saliency(model, params, x).tolist()
      [[2.0, -1.0]]
      >>> jnn.saliency(model, params, x, multiply_by_inputs=True).tolist()
      [[6.0, -4.0]]
    """
    name = "saliency"
    forward = _forward(name, model, model_state)
    _check_params(name, params)
    x = _check_inputs(name, x)
    gradient = jax.grad(_chooser(name, forward, params, x, target))(x)
    return gradient * x if multiply_by_inputs else gradient


def smooth_grad(
    model: Module | Callable,
    params: Params,
    x: ArrayLike,
    target: int | ArrayLike | None = None,
    *,
    key: jax.Array,
    stddev: float | ArrayLike = 0.15,
    samples: int = 25,
    batch_size: int | None = None,
    model_state: State | None = None,
    multiply_by_inputs: bool = False,
) -> jax.Array:
    r"""SmoothGrad (Smilkov et al., 2017): the saliency averaged over noisy copies of ``x``.

    .. math:: A_i = \frac{1}{n} \sum_{k=1}^{n}
        \frac{\partial f_c(x + \varepsilon_k)}{\partial x_i},
        \qquad \varepsilon_k \sim \mathcal{N}(0, \sigma^2 I)

    Averaging removes much of the pixel-to-pixel noise of a plain gradient. With
    ``multiply_by_inputs`` each term is multiplied by its noisy input ``x + eps_k``. With
    ``stddev=0`` the result is ``saliency``'s.

    Args:
      model: A ``jnn.Module``, or a function ``apply_fn(params, x) -> outputs``.
      params: The model's params.
      x: Inputs with a batch axis, ``[batch, ...]``, floating point.
      target: An int, an int array ``[batch]``, or ``None`` for a scalar output, as in
        ``saliency``.
      key: The PRNG key of the noise (keyword-only): the same key gives the same result.
        Sample ``k`` uses ``jax.random.split(key, samples)[k]``, so the result does not
        depend on ``batch_size``.
      stddev: ``sigma``, the noise's standard deviation in the units of ``x``. The paper
        suggests 10-20% of the inputs' range: 0.15 suits inputs scaled to [0, 1].
      samples: ``n``, the number of noisy copies.
      batch_size: How many noisy copies go through the model together; ``None`` runs all
        of them at once. Lower it when memory is short; chunks run as in
        ``integrated_gradients``.
      model_state: The state of a model with batch norm, as in ``saliency``.
      multiply_by_inputs: Average gradient times (noisy) input instead.

    Returns:
      The attributions, shaped and typed like ``x``.

    Shapes:
      As ``saliency``.

    Raises:
      TypeError: As ``saliency``; also if ``key`` is not a PRNG key, or ``samples`` or
        ``batch_size`` not an int.
      ShapeError: As ``saliency``.
      DTypeError: As ``saliency``.
      ValueError: If ``samples`` is not positive, ``stddev`` negative, or a target out
        of range.

    Examples:
      >>> import jax, jax.numpy as jnp, jnn
      >>> model = jnn.Dense(1)  # linear: every noisy gradient is the weight
      >>> params = {"weight": jnp.array([[2.0], [-1.0]]), "bias": jnp.array([0.5])}
      >>> x = jnp.array([[3.0, 4.0]])
      >>> jnn.smooth_grad(model, params, x, key=jax.random.key(0), samples=8).tolist()
      [[2.0, -1.0]]
    """
    name = "smooth_grad"
    forward = _forward(name, model, model_state)
    _check_params(name, params)
    x = _check_inputs(name, x)
    key = as_typed_key(name, key)
    if jnp.shape(key) != ():
        raise ShapeError(name, f"expected one PRNG key, got keys of shape {jnp.shape(key)}.")
    _check_count(name, "samples", samples)
    if batch_size is not None:
        _check_count(name, "batch_size", batch_size)
    if jnp.ndim(stddev) != 0:
        raise ShapeError(name, f"expected stddev as a scalar, got shape {jnp.shape(stddev)}.")
    if is_concrete(stddev) and float(stddev) < 0:
        raise ValueError(f"{name}: expected stddev >= 0, got {float(stddev)}.")
    gradient = jax.grad(_chooser(name, forward, params, x, target))

    def at(sample_key):
        noisy = x + jnp.asarray(stddev, x.dtype) * jax.random.normal(sample_key, x.shape, x.dtype)
        return gradient(noisy) * noisy if multiply_by_inputs else gradient(noisy)

    keys = jax.random.split(key, samples)
    inputs = (params, x, key, stddev, target, model_state)
    return _weighted_sum(at, keys, np.full(samples, 1.0 / samples), batch_size, x, inputs)
