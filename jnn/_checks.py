"""Checks shared by the layers: ranks, dtypes, keys, counts and values known only at run time.

Each check names the layer it runs for, says what it expected and what arrived, and
costs nothing under ``jit``: it reads static shapes and dtypes, or, for values, acts only
when they are concrete (see ``is_concrete``).
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jnn._errors import DTypeError, ParamsError, ShapeError, layer_name

__all__ = [
    "check_rank",
    "check_positive_int",
    "check_floating",
    "check_floating_dtype",
    "check_integer",
    "check_key",
    "check_array_inputs",
    "check_params_leaves",
    "is_concrete",
    "check_values",
    "check_at_run_time",
    "is_apply_check",
    "is_shape_trace",
    "raise_at_run_time",
]

# True while ``apply`` traces a leaf's ``init`` on apply's own inputs, to compare the
# params it was given with those ``init`` would make (see ``jnn._module``).
APPLY_CHECK = contextvars.ContextVar("jnn_apply_check", default=False)


# True while a composite's ``init`` traces ``forward`` abstractly (``jax.eval_shape``)
# to learn its children's input shapes: nothing is computed, only shapes and dtypes.
SHAPE_TRACE = contextvars.ContextVar("jnn_shape_trace", default=False)


def is_shape_trace() -> bool:
    """Whether ``apply`` is being traced only for shapes, inside a composite's ``init``.

    A layer may then take any path that gives the same shapes and dtypes: attention
    forced to cuDNN (which refuses float32) traces the portable form instead.
    """
    return SHAPE_TRACE.get()


def is_apply_check() -> bool:
    """Whether ``init`` is running for ``apply``'s params check rather than for the user.

    ``apply`` checks params by tracing ``init`` on apply's own inputs. A layer whose
    ``init`` insists on a batch axis, but whose ``apply`` also takes one unbatched
    example (so ``jax.vmap`` works), relaxes that rule when this is true.
    """
    return APPLY_CHECK.get()


def check_rank(
    module: Any,
    x: Any,
    rank: int | tuple[int, ...] | None = None,
    what: str = "input",
    *,
    min_rank: int | None = None,
    hint: str = "",
) -> None:
    """Raise ``ShapeError`` naming ``module`` unless ``x.ndim`` is ``rank`` (or one of
    them), or at least ``min_rank``. ``hint`` is appended to the message.

    Example:
      >>> import jax.numpy as jnp
      >>> from jnn.extend import check_rank
      >>> check_rank("MyLayer", jnp.zeros((2, 3)), 3)
      Traceback (most recent call last):
      ...
      jnn.ShapeError: MyLayer: expected input of rank 3, got shape (2, 3).
    """
    suffix = f" {hint}" if hint else ""
    if min_rank is not None:
        if jnp.ndim(x) < min_rank:
            raise ShapeError(
                layer_name(module),
                f"expected {what} of rank at least {min_rank}, got shape "
                f"{tuple(jnp.shape(x))}.{suffix}",
            )
        return
    ranks = (rank,) if isinstance(rank, int) else tuple(rank)
    if jnp.ndim(x) not in ranks:
        want = " or ".join(str(r) for r in ranks)
        raise ShapeError(
            layer_name(module),
            f"expected {what} of rank {want}, got shape {tuple(jnp.shape(x))}.{suffix}",
        )


def check_positive_int(owner: Any, name: str, value: Any, minimum: int = 1) -> None:
    """Raise ``ValueError`` naming ``owner`` unless ``value`` is an int of at least
    ``minimum``, which is 1 ("a positive int", the default) or 0 ("a non-negative int").
    NumPy integers count as ints; ``bool`` does not."""
    if not isinstance(value, int | np.integer) or isinstance(value, bool | np.bool_):
        raise TypeError(
            f"{layer_name(owner)}: {name} must be an int, got {value!r} ({type(value).__name__})."
        )
    if value < minimum:
        kind = "a positive" if minimum == 1 else "a non-negative"
        raise ValueError(f"{layer_name(owner)}: {name} must be {kind} int, got {value!r}.")


def check_floating(module: Any, x: Any, what: str = "input") -> None:
    """Raise ``DTypeError`` naming ``module`` unless ``x`` has a floating-point dtype."""
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise DTypeError(
            layer_name(module),
            f"expected a floating-point {what}, got dtype {dtype}. "
            f"Hint: cast it first, e.g. x.astype(jnp.float32).",
        )


def check_floating_dtype(
    owner: Any,
    name: str,
    value: Any,
    expected: str = "a floating-point dtype such as jnp.float32",
) -> np.dtype:
    """``value`` as a NumPy dtype, or a ``TypeError`` naming ``owner`` unless it is a
    floating-point dtype (``param_dtype``, a policy's dtypes). ``None`` is refused, since
    ``jnp.dtype(None)`` would mean float64."""
    try:
        dtype = None if value is None else jnp.dtype(value)
    except TypeError:
        dtype = None
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        shown = repr(value) if dtype is None else dtype.name
        raise TypeError(f"{layer_name(owner)}: {name} must be {expected}, got {shown}.")
    return dtype


def check_integer(module: Any, x: Any, what: str = "input", hint: str = "") -> None:
    """Raise ``DTypeError`` naming ``module`` unless ``x`` has an integer dtype."""
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.integer):
        suffix = f" {hint}" if hint else " Hint: cast it first, e.g. x.astype(jnp.int32)."
        raise DTypeError(
            layer_name(module), f"expected an integer {what}, got dtype {dtype}.{suffix}"
        )


def check_key(module: Any, key: Any, where: str) -> None:
    """Raise ``DTypeError`` naming ``module`` unless ``key`` is a PRNG key (typed, or a
    legacy ``uint32[2]`` one)."""
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return
    if dtype == jnp.uint32 and getattr(key, "shape", None) == (2,):
        return  # a legacy ``jax.random.PRNGKey``
    got = f"array of shape {key.shape} and dtype {dtype}" if dtype is not None else type(key)
    raise DTypeError(
        layer_name(module),
        f"{where} expected a PRNG key such as jax.random.key(0), got {got}. "
        "Hint: the key comes first, as in model.init(key, x).",
    )


def is_concrete(x: Any) -> bool:
    """Whether ``x`` holds known values (not a tracer inside ``jit``, ``grad`` or ``vmap``).

    Checks of *values* (a label out of range, a length past the end) can raise only on
    concrete inputs; under ``jit`` a layer answers bad values another documented way
    (NaN, for instance).
    """
    return not isinstance(x, jax.core.Tracer)


def check_values(module: Any, ok: Any, message: str) -> bool:
    """Raise ``ValueError`` naming ``module`` if the boolean array ``ok`` is concrete and
    not all true; return whether the check could run (``False`` under a trace).

    For value checks on a training path, where a host round trip per step would cost
    too much: under ``jit`` the caller answers bad values in a documented way instead
    (``jnp.where(ok, out, jnp.nan)``, say), so they never pass for good ones.
    """
    if not is_concrete(ok):
        return False
    if not bool(np.all(np.asarray(ok))):
        raise ValueError(f"{layer_name(module)}: {message}")
    return True


def check_at_run_time(module: Any, ok: Any, message: str) -> None:
    """Raise ``ValueError`` naming ``module`` unless the boolean array ``ok`` is all true,
    under ``jit`` too.

    Concrete values are checked at once. Traced ones are checked when the compiled program
    runs: a failing check calls back to the host and raises there (under ``jit`` the
    error arrives wrapped in JAX's runtime error, with this message inside). A passing
    check costs no host round trip (see ``raise_at_run_time``).
    """
    if check_values(module, ok, message):
        return
    name = layer_name(module)

    def raise_unless(ok_value):
        if not bool(np.all(ok_value)):
            raise ValueError(f"{name}: {message}")

    raise_at_run_time(~jnp.all(ok), raise_unless, ok)


def raise_at_run_time(fails: Any, raise_for: Callable, *values: Any) -> None:
    """Call ``raise_for(*values)`` on the host when the compiled program runs, if ``fails``.

    ``raise_for`` receives the values as NumPy arrays, so its message can name what the
    program actually reached (a cache position, say). The callback sits in one branch of
    a ``jax.lax.cond``, so a check that passes costs no host round trip: a bare
    ``jax.debug.callback`` cost about 120 us per call on a CPU, which tripled the time of
    cached decoding. Under ``vmap`` both branches may run, so ``raise_for`` must check
    the values itself.
    """
    jax.lax.cond(fails, lambda *v: jax.debug.callback(raise_for, *v), lambda *v: None, *values)


def _is_number_list(x: Any) -> bool:
    if isinstance(x, list | tuple):
        return len(x) > 0 and all(_is_number_list(v) for v in x)
    return isinstance(x, int | float | bool | np.number)


def check_array_inputs(module: Any, inputs: tuple, where: str) -> None:
    """Raise ``DTypeError`` if an input is a Python list of numbers instead of an array, a
    string, or ``None`` in the first place, where every layer takes its main input (later
    inputs may be optional, as attention's ``key_value``). A recurrent cell's first input
    is its carry, which the cell checks itself, with the hint to make one."""
    carry_first = hasattr(module, "initial_carry")
    for i, x in enumerate(inputs):
        if isinstance(x, str | bytes) or (i == 0 and x is None and not carry_first):
            raise DTypeError(
                layer_name(module),
                f"{where} expected arrays as inputs, got {type(x).__name__} "
                f"{x!r:.40} as input {i}.",
            )
        if isinstance(x, list) and _is_number_list(x):
            raise DTypeError(
                layer_name(module),
                f"{where} expected arrays as inputs, got a Python list as input {i}. "
                "Hint: convert it first, e.g. jnp.asarray(x, jnp.float32).",
            )


def check_params_leaves(module: Any, tree: Any, what: str = "params") -> None:
    """Raise ``ParamsError`` if ``tree`` is not a dict whose leaves are arrays.

    Lists in place of arrays are the usual result of a JSON round trip.
    """
    if not isinstance(tree, Mapping):
        raise ParamsError(
            layer_name(module), f"expected {what} as a dict, got {type(tree).__name__}."
        )
    stack = [("", tree)]
    while stack:
        prefix, node = stack.pop()
        for name, value in node.items():
            path = f"{prefix}{name}"
            if isinstance(value, Mapping):
                stack.append((f"{path}/", value))
            elif not (
                (hasattr(value, "shape") and hasattr(value, "dtype"))
                or isinstance(value, int | float | complex | np.number)
            ):
                hint = (
                    " Hint: convert loaded lists back to arrays, e.g. jax.tree.map(jnp.asarray, "
                    "params, is_leaf=lambda x: isinstance(x, list))."
                    if isinstance(value, list | tuple)
                    else ""
                )
                raise ParamsError(
                    layer_name(module),
                    f"{what} '{path}' is a {type(value).__name__}, not an array.{hint}",
                )
