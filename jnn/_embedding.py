"""Embedding: a learned lookup table from integer ids to vectors, with tied output logits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jnn import initializers
from jnn._checks import check_floating
from jnn._errors import DTypeError, ShapeError
from jnn._module import Module, Params
from jnn._scope import child_key

__all__ = ["Embedding"]


class Embedding(Module):
    r"""A learned table of ``num_embeddings`` vectors, looked up by integer id.

    ``apply(params, ids)`` returns the rows ``embedding[ids]``. With ``attend=True``,
    ``apply(params, x, attend=True)`` instead scores vectors against every row, which
    gives the output logits of a language model whose output weights are *tied* to its
    input embedding (Press & Wolf, 2017):

    .. math::
       \text{lookup: } y_{\ldots} = E_{\mathrm{id}_{\ldots}}, \qquad
       \text{attend: } z_{\ldots, v} = \sum_j x_{\ldots, j} E_{v j}

    Tying inside a composite: call the *same* layer under the *same* name twice, once
    per use. A name called twice shares its parameters, so both uses read the one
    matrix ``params["embed"]["embedding"]`` and its gradient sums both contributions::

        def forward(self, scope, ids):
            embed = Embedding(self.vocab, self.features)
            h = scope("embed", embed, ids)              # [batch, time, features]
            h = scope("encoder", self.encoder, h)
            return scope("embed", embed, h, attend=True)  # [batch, time, vocab]

    Outside a composite, with the params at hand, ``embed.attend(params, x)`` is the
    same as ``embed.apply(params, x, attend=True)``.

    Args:
      num_embeddings: Number of rows (the vocabulary size).
      features: Size of each vector.
      w_init: Initializer of ``embedding``. The default draws from a normal
        distribution with standard deviation ``1 / sqrt(features)`` (as Flax does), so
        tied logits ``x @ embedding.T`` of a unit-scale ``x`` start at unit scale. For
        PyTorch's ``nn.Embedding`` (standard deviation 1) pass
        ``jnn.initializers.normal(1.0)``.
      param_dtype: Dtype of ``embedding``.

    Shapes:
      ``init`` takes integer ids ``[...]`` (any shape; only the dtype is read) and
      creates ``embedding`` ``[num_embeddings, features]``. ``apply`` maps ids
      ``[...]`` to ``[..., features]``; with ``attend=True`` it maps ``[..., features]``
      to ``[..., num_embeddings]``.

    Ids must lie in ``[0, num_embeddings)``. As in NumPy, negative ids count from the
    end; ids out of range give rows of NaN, since a compiled function cannot raise.

    Raises:
      DTypeError: If the ids are not integers, or the attended input is not floating
        point, or ``attend`` is not a Python bool.
      ShapeError: If the attended input's last dimension is not ``features``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jnn import Embedding
      >>> embed = Embedding(num_embeddings=10, features=4)
      >>> ids = jnp.array([[1, 2, 3], [4, 5, 0]])
      >>> params = embed.init(jax.random.key(0), ids)
      >>> params["embedding"].shape
      (10, 4)
      >>> h = embed.apply(params, ids)
      >>> h.shape
      (2, 3, 4)
      >>> embed.apply(params, h, attend=True).shape
      (2, 3, 10)
    """

    num_embeddings: int
    features: int
    w_init: Callable = initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0)
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        for name in ("num_embeddings", "features"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Embedding: {name} must be a positive int, got {value!r}.")

    def init(self, key: jax.Array, ids: jax.Array, *, attend: Any = False) -> Params:
        # The generic params check calls init with apply's arguments, so ``attend=True``
        # and a float ``x`` arrive here too (``attend`` then abstract); the table depends
        # on neither, and only plain lookups are checked.
        if isinstance(attend, bool) and not attend:
            self._check_ids(ids)
        shape = (self.num_embeddings, self.features)
        return {"embedding": self.w_init(child_key(key, "embedding"), shape, self.param_dtype)}

    def check_inputs(self, params: Params, x: jax.Array, *, attend: Any = False) -> None:
        """Check the ids (or the attended input) before the generic params check."""
        if not isinstance(attend, bool):
            raise DTypeError(
                self.layer_name(),
                f"attend must be a Python bool, got {type(attend).__name__}. Hint: under "
                "jax.jit mark it static, or bind it with functools.partial.",
            )
        if attend:
            self._check_attended(x)
        else:
            self._check_ids(x)

    def _check_ids(self, ids: jax.Array) -> None:
        dtype = jnp.result_type(ids)
        if not jnp.issubdtype(dtype, jnp.integer):
            raise DTypeError(
                self.layer_name(),
                f"expected integer ids, got dtype {dtype} (shape {tuple(jnp.shape(ids))}). "
                "Hint: cast them, e.g. ids.astype(jnp.int32); to score vectors against "
                "the table use attend=True.",
            )

    def _check_attended(self, x: jax.Array) -> None:
        check_floating(self, x, "attended input")
        if jnp.ndim(x) < 1 or jnp.shape(x)[-1] != self.features:
            raise ShapeError(
                self.layer_name(),
                f"expected attended input with last dimension {self.features} (features), "
                f"got shape {tuple(jnp.shape(x))}.",
            )

    def apply(self, params: Params, x: jax.Array, *, attend: bool = False) -> jax.Array:
        if attend:
            return self.attend(params, x)
        return jnp.take(params["embedding"], x, axis=0, mode="fill")

    def attend(self, params: Params, x: jax.Array) -> jax.Array:
        """Score ``x`` against every row: ``x @ embedding.T``, for tied output weights.

        Args:
          params: This layer's params, ``{"embedding": [num_embeddings, features]}``.
          x: Vectors ``[..., features]``.

        Returns:
          Logits ``[..., num_embeddings]``.
        """
        self._check_attended(x)
        return x @ params["embedding"].T
