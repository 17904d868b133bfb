"""Positional information for sequence models: sinusoidal and learned tables, and RoPE.

Attention is blind to order, so a sequence model adds where each element sits. Two ways:

* *absolute* encodings added to the input ``[batch, length, features]`` once, before the
  first block: ``SinusoidalPositions`` (fixed) and ``LearnedPositions`` (a trained table);
* *rotary* encodings (RoPE) that rotate each query and key inside attention by an angle
  proportional to its position, so their dot product depends only on the offset between
  them: ``rotary_embedding``, used by ``MultiHeadAttention(use_rope=True)``.

Both layers take an ``offset`` so that, when decoding one step at a time, step ``t``
gets position ``t`` rather than ``0``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jnn import initializers
from jnn._checks import (
    check_floating,
    check_positive_int,
    check_rank,
    is_apply_check,
    is_concrete,
    raise_at_run_time,
)
from jnn._errors import DTypeError, ShapeError, layer_name
from jnn._module import Module, Params
from jnn._scope import child_key

__all__ = ["sinusoidal_positions", "SinusoidalPositions", "LearnedPositions", "rotary_embedding"]


def _check_base(owner: str, base: Any, name: str = "base") -> None:
    if not isinstance(base, int | float | np.integer | np.floating) or isinstance(base, bool):
        raise TypeError(f"{owner}: {name} must be a number, got {base!r} ({type(base).__name__}).")
    if not base > 1:
        raise ValueError(f"{owner}: {name} must be a number greater than 1, got {base!r}.")


def _concrete_int(value: Any) -> int | None:
    """``value`` as a Python int, or ``None`` when it is traced (known only at run time)."""
    try:
        return int(value)
    except (jax.errors.ConcretizationTypeError, TypeError):
        return None


def _sinusoids(positions: jax.Array, features: int, base: float) -> jax.Array:
    # Interleaved columns (sin, cos, sin, cos, ...), as in Vaswani et al.; an odd
    # ``features`` keeps the final sine column alone.
    pairs = (features + 1) // 2
    inv_freq = base ** (-2.0 * np.arange(pairs) / features)
    angles = jnp.asarray(positions, jnp.float32)[:, None] * inv_freq.astype(np.float32)
    table = jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1)
    return table.reshape(-1, 2 * pairs)[:, :features]


def sinusoidal_positions(length: int, features: int, base: float = 10000.0) -> jax.Array:
    r"""The fixed sinusoidal position table of Vaswani et al. (2017).

    Even columns hold sines and odd columns cosines of the same frequency:

    .. math::
       P_{p,\,2i} = \sin\!\big(p \,/\, b^{2i/d}\big), \qquad
       P_{p,\,2i+1} = \cos\!\big(p \,/\, b^{2i/d}\big)

    with position ``p``, ``d = features`` and ``b = base``. For an odd ``features`` the
    last column is a sine.

    Args:
      length: Number of positions ``0 ... length - 1``.
      features: Number of columns ``d``.
      base: The wavelength scale ``b``; wavelengths range from ``2 pi`` to about
        ``2 pi b``.

    Returns:
      A float32 table ``[length, features]``.

    Examples:
      >>> from jnn import sinusoidal_positions
      >>> table = sinusoidal_positions(4, 6)
      >>> table.shape
      (4, 6)
      >>> table[0].tolist()   # position 0: sin 0 = 0, cos 0 = 1
      [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    """
    check_positive_int("sinusoidal_positions", "length", length, minimum=0)
    check_positive_int("sinusoidal_positions", "features", features)
    _check_base("sinusoidal_positions", base)
    return _sinusoids(jnp.arange(length), features, base)


class SinusoidalPositions(Module):
    """Add the fixed table ``sinusoidal_positions`` to a sequence; no parameters.

    Args:
      base: The wavelength scale of ``sinusoidal_positions``.

    Shapes:
      ``apply`` maps ``[..., length, features]`` (for example ``[batch, length,
      features]``, or ``[length, features]`` unbatched) to the same shape. Its keyword
      ``offset`` (a number, or a traced scalar inside ``jit``/``scan``) shifts the
      positions to ``offset ... offset + length - 1``, for decoding step by step.

    Raises:
      ShapeError: If the input has fewer than 2 dimensions, or ``offset`` is not a
        scalar.
      DTypeError: If the input is not floating point, or ``offset`` is not a number.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jnn import SinusoidalPositions, sinusoidal_positions
      >>> layer = SinusoidalPositions()
      >>> y = layer.apply({}, jnp.zeros((2, 5, 8)))
      >>> bool((y[1] == sinusoidal_positions(5, 8)).all())
      True
      >>> step = layer.apply({}, jnp.zeros((2, 1, 8)), offset=3)   # position 3
      >>> bool((step[0, 0] == y[0, 3]).all())
      True
    """

    base: float = 10000.0

    def __post_init__(self):
        _check_base("SinusoidalPositions", self.base)

    def check_inputs(self, params: Params, x: jax.Array, *, offset: Any = 0) -> None:
        """Check the input's rank and dtype, and the offset's."""
        del params
        check_rank(self, x, what="input [..., length, features]", min_rank=2)
        check_floating(self, x)
        _check_offset(self, offset, integer=False)

    def apply(self, params: Params, x: jax.Array, *, offset: Any = 0) -> jax.Array:
        del params
        length, features = x.shape[-2:]
        table = _sinusoids(offset + jnp.arange(length), features, self.base)
        return x + table.astype(x.dtype)


def _check_offset(owner: Any, offset: Any, integer: bool) -> int | None:
    """Check that ``offset`` is a numeric (``integer``: an integer) scalar; return it as
    an int when concrete."""
    kind = "an integer" if integer else "a number"
    if not hasattr(offset, "dtype") and not isinstance(offset, int | float | np.number):
        raise DTypeError(
            layer_name(owner),
            f"expected offset to be {kind} (a scalar array inside jit), got "
            f"{type(offset).__name__}.",
        )
    dtype = jnp.result_type(offset)
    wanted = jnp.integer if integer else jnp.number
    if jnp.issubdtype(dtype, jnp.bool_) or not jnp.issubdtype(dtype, wanted):
        raise DTypeError(layer_name(owner), f"expected offset to be {kind}, got dtype {dtype}.")
    if jnp.ndim(offset) != 0:
        raise ShapeError(
            layer_name(owner),
            f"expected a scalar offset, got shape {tuple(jnp.shape(offset))}. Hint: one "
            "offset serves the whole batch (every sequence at the same position).",
        )
    return _concrete_int(offset) if integer else None


class LearnedPositions(Module):
    r"""Add a learned table of ``max_length`` position vectors to a sequence.

    .. math:: y_{\ldots, p, j} = x_{\ldots, p, j} + E_{p + \mathrm{offset},\, j}

    Args:
      max_length: Number of rows of the table: the longest sequence it can encode.
      w_init: Initializer of ``embedding`` (normal with standard deviation 0.02, as in
        GPT-2). It receives ``fan_in=features``, as PyTorch reads the fan-in of an
        ``nn.Embedding`` table.
      param_dtype: Dtype of ``embedding``.

    Shapes:
      ``init`` takes a batched sample ``[batch, ..., length, features]`` (rank 3 or
      more) and creates ``embedding`` ``[max_length, features]``; it refuses a rank-2
      sample, which is either one sequence without its batch axis (add it: ``x[None]``)
      or a ``(batch, features)`` table without positions (add a length axis:
      ``x[:, None, :]``). ``apply`` maps ``[..., length, features]`` to the same shape,
      and also takes one unbatched sequence ``[length, features]`` (for ``jax.vmap``).
      The keyword ``offset`` (an int, or a traced int scalar inside ``jit``/``scan``)
      selects rows ``offset ... offset + length - 1``, for decoding.

    An ``offset`` that runs past the table is an error: at once when it is concrete,
    and, when it is traced (under ``jit`` or ``scan``), when the compiled program runs
    (a ``ValueError`` wrapped in JAX's runtime error). The rows read past the table are
    NaN meanwhile, never a repeated row.

    Raises:
      ShapeError: If the sequence (plus a concrete ``offset``) is longer than
        ``max_length``, a concrete ``offset`` is negative, ``offset`` is not a scalar,
        the input's rank is wrong, or its last dimension differs from ``features`` set
        at init.
      DTypeError: If the input is not floating point, or ``offset`` not an integer.
      ValueError: At run time, for a traced ``offset`` out of range (see above).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jnn import LearnedPositions
      >>> layer = LearnedPositions(max_length=16)
      >>> params = layer.init(jax.random.key(0), jnp.zeros((2, 10, 4)))
      >>> params["embedding"].shape
      (16, 4)
      >>> layer.apply(params, jnp.zeros((2, 10, 4))).shape
      (2, 10, 4)
    """

    max_length: int
    w_init: Callable = initializers.normal(0.02)
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        check_positive_int("LearnedPositions", "max_length", self.max_length)

    def _check_length(self, x: jax.Array, offset: Any, batched: bool = False) -> None:
        hint = ""
        if batched and jnp.ndim(x) == 2:
            hint = (
                "Hint: for one sequence add a batch axis, x[None]; a (batch, features) "
                "table has no positions: add a length axis, x[:, None, :]."
            )
        layout = "[batch, ..., length, features]" if batched else "[..., length, features]"
        check_rank(self, x, what=f"input {layout}", min_rank=3 if batched else 2, hint=hint)
        check_floating(self, x)
        length = x.shape[-2]
        start = _check_offset(self, offset, integer=True)
        if start is not None:
            self._check_rows(start, length, f" (input shape {tuple(x.shape)})")

    def _check_rows(self, start: int, length: int, suffix: str = "") -> None:
        message = self._rows_error(start, length, suffix)
        if message:
            raise ShapeError(self.layer_name(), message)

    def _rows_error(self, start: int, length: int, suffix: str = "") -> str:
        if start < 0:
            return f"offset must be >= 0, got {start}."
        if start + length > self.max_length:
            where = f"offset {start} plus input length {length}" if start else "input length"
            return (
                f"{where} = {start + length} exceeds max_length {self.max_length}"
                f"{suffix}. Hint: make the table longer."
            )
        return ""

    def init(self, key: jax.Array, x: jax.Array, *, offset: Any = 0) -> Params:
        # init needs a batched sample, except when apply runs it on its own inputs to
        # check the params: those may be one unbatched sequence (jax.vmap).
        self._check_length(x, offset, batched=not is_apply_check())
        features = x.shape[-1]
        table = initializers.initialize(
            self.w_init,
            child_key(key, "embedding"),
            (self.max_length, features),
            self.param_dtype,
            fan_in=features,
        )
        return {"embedding": table}

    def check_inputs(self, params: Params, x: jax.Array, *, offset: Any = 0) -> None:
        """Check the length (and a concrete offset) against ``max_length``, and features."""
        self._check_length(x, offset)
        table = params.get("embedding")
        if table is not None and jnp.ndim(table) == 2 and x.shape[-1] != table.shape[1]:
            raise ShapeError(
                self.layer_name(),
                f"expected input with last dimension {table.shape[1]} (set at init), "
                f"got shape {tuple(x.shape)}.",
            )

    def apply(self, params: Params, x: jax.Array, *, offset: Any = 0) -> jax.Array:
        table = params["embedding"]
        length = x.shape[-2]
        if isinstance(offset, int) and not isinstance(offset, bool):
            rows = table[offset : offset + length]  # checked above
        else:
            if not is_concrete(offset):
                name = self.layer_name()

                def raise_past_the_table(start):
                    for s in np.atleast_1d(np.asarray(start)).tolist():
                        message = self._rows_error(s, length)
                        if message:
                            raise ValueError(f"{name}: {message}")

                fails = (offset < 0) | (offset + length > self.max_length)
                raise_at_run_time(fails, raise_past_the_table, offset)
            positions = offset + jnp.arange(length)
            rows = jnp.take(table, positions, axis=0, mode="fill", fill_value=jnp.nan)
        return x + rows.astype(x.dtype)


def rotary_embedding(
    x: jax.Array, positions: jax.typing.ArrayLike, base: float = 10000.0
) -> jax.Array:
    r"""Rotary position embedding (RoPE, Su et al. 2021), in the rotate-half convention.

    The last axis of ``x`` is split into halves ``x_1 = x[..., :d/2]`` and
    ``x_2 = x[..., d/2:]``; feature ``i`` is paired with feature ``i + d/2`` (the
    GPT-NeoX / LLaMA-in-Hugging-Face layout, *not* the interleaved pairs ``(2i, 2i+1)``
    of the original paper and of GPT-J). Each pair is rotated by the angle
    :math:`\theta_i\, p` at position ``p``:

    .. math::
       \theta_i = b^{-2i/d}, \qquad
       y_1 = x_1 \cos(\theta p) - x_2 \sin(\theta p), \qquad
       y_2 = x_2 \cos(\theta p) + x_1 \sin(\theta p)

    Rotations compose, so for a query at position ``m`` and a key at ``n`` the score
    :math:`\langle R_m q, R_n k \rangle = \langle q, R_{n-m} k \rangle` depends only on
    ``n - m``.

    Args:
      x: Queries or keys ``[..., length, heads, head_dim]`` with an even ``head_dim``.
      positions: Positions ``[..., length]`` (ints or floats) that broadcast against
        ``x.shape[:-2]``, e.g. ``[length]`` or ``[batch, length]``.
      base: The base ``b`` of the frequencies.

    Returns:
      The rotated ``x``, same shape and dtype. Angles are computed in at least float32.

    Raises:
      ShapeError: If ``x`` has fewer than 3 axes, ``head_dim`` is odd, or ``positions``
        does not broadcast against ``x.shape[:-2]``.
      DTypeError: If ``x`` is not floating point, or ``positions`` not numbers.
      ValueError: If ``base`` is not a number greater than 1.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jnn import rotary_embedding
      >>> q = jnp.ones((2, 5, 4, 8))        # [batch, length, heads, head_dim]
      >>> rotary_embedding(q, jnp.arange(5)).shape
      (2, 5, 4, 8)
      >>> bool((rotary_embedding(q, jnp.zeros(5)) == q).all())   # position 0: identity
      True
    """
    name = "rotary_embedding"
    _check_base(name, base)
    check_rank(name, x, what="x [..., length, heads, head_dim]", min_rank=3)
    check_floating(name, x, "x")
    head_dim = x.shape[-1]
    if head_dim % 2:
        raise ShapeError(
            name, f"expected an even head_dim (the last axis of x), got shape {tuple(x.shape)}."
        )
    positions = jnp.asarray(positions)
    if positions.dtype == bool or not jnp.issubdtype(positions.dtype, jnp.number):
        raise DTypeError(name, f"expected integer or float positions, got dtype {positions.dtype}.")
    try:
        ok = np.broadcast_shapes(positions.shape, x.shape[:-2]) == x.shape[:-2]
    except ValueError:
        ok = False
    if not ok:
        raise ShapeError(
            name,
            f"expected positions broadcastable to {tuple(x.shape[:-2])} "
            f"(x.shape[:-2]), got shape {tuple(positions.shape)}.",
        )
    half = head_dim // 2
    dtype = jnp.promote_types(x.dtype, jnp.float32)  # low-precision x: rotate in float32
    inv_freq = (base ** (-2.0 * np.arange(half) / head_dim)).astype(dtype)
    angles = positions.astype(dtype)[..., None, None] * inv_freq  # [..., length, 1, d/2]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x1, x2 = x[..., :half].astype(dtype), x[..., half:].astype(dtype)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)
