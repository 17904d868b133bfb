"""Embedding: a learned lookup table from integer ids to vectors, with tied output logits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jnn import initializers
from jnn._checks import check_floating, check_positive_int, check_values, is_concrete
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
      padding_index: The id of a padding token (PyTorch's ``padding_idx``), or
        ``None``. Its row starts at zero, its lookups always give zeros, and they send
        no gradient to the table, so the row never trains. A negative index counts from
        the end (``-1`` is ``num_embeddings - 1``), as in PyTorch. ``attend`` still
        scores against that row, as PyTorch's tied ``F.linear(x, weight)`` does.
      w_init: Initializer of ``embedding``. The default draws from a normal
        distribution with standard deviation ``1 / sqrt(features)`` (as Flax does), so
        tied logits ``x @ embedding.T`` of a unit-scale ``x`` start at unit scale. For
        PyTorch's ``nn.Embedding`` (standard deviation 1) pass
        ``jnn.initializers.normal(1.0)``. It receives ``fan_in=features``, the fan-in
        PyTorch reads from a ``[num_embeddings, features]`` weight.
      param_dtype: Dtype of ``embedding``.

    Shapes:
      ``init`` takes integer ids ``[...]`` (any shape; only the dtype is read) and
      creates ``embedding`` ``[num_embeddings, features]``. ``apply`` maps ids
      ``[...]`` to ``[..., features]``; with ``attend=True`` it maps ``[..., features]``
      to ``[..., num_embeddings]``. A lookup has no batch axis of its own: every axis of
      the ids is kept.

    Ids must lie in ``[0, num_embeddings)``; as in NumPy, negative ids down to
    ``-num_embeddings`` count from the end. Concrete ids out of range raise a
    ``ValueError`` that names the first bad id and where it is. Traced ids (under
    ``jit``, ``grad`` or ``vmap``) cannot be checked without a host round trip on the
    training path, so ids out of range give rows of NaN there, which show up in the
    loss.

    Raises:
      DTypeError: If the ids are not integers, or the attended input is not floating
        point, or ``attend`` is not a Python bool.
      ShapeError: If the attended input's last dimension is not ``features``.
      ValueError: If concrete ids are out of range, or ``padding_index`` is not in
        ``[-num_embeddings, num_embeddings)``.

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
      >>> padded = Embedding(10, 4, padding_index=0)
      >>> padded.apply(padded.init(jax.random.key(0), ids), ids)[1, 2].tolist()
      [0.0, 0.0, 0.0, 0.0]
    """

    num_embeddings: int
    features: int
    padding_index: int | None = None
    w_init: Callable = initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0)
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        for name in ("num_embeddings", "features"):
            check_positive_int(self, name, getattr(self, name))
        n = self.num_embeddings
        if self.padding_index is not None and not -n <= self.padding_index < n:
            raise ValueError(
                f"Embedding: padding_index must be in [-{n}, {n}) (num_embeddings {n}), "
                f"got {self.padding_index}."
            )

    def _padding_row(self) -> int | None:
        """``padding_index`` counted from the start, or ``None``."""
        if self.padding_index is None:
            return None
        return self.padding_index % self.num_embeddings

    def init(self, key: jax.Array, ids: jax.Array, *, attend: Any = False) -> Params:
        # The generic params check calls init with apply's arguments, so ``attend=True``
        # and a float ``x`` arrive here too (``attend`` then abstract); the table depends
        # on neither, and only plain lookups are checked.
        if isinstance(attend, bool) and not attend:
            self._check_ids(ids)
        table = initializers.initialize(
            self.w_init,
            child_key(key, "embedding"),
            (self.num_embeddings, self.features),
            self.param_dtype,
            fan_in=self.features,
        )
        row = self._padding_row()
        if row is not None:
            table = table.at[row].set(0)
        return {"embedding": table}

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

    def _check_id_values(self, ids: Any) -> None:
        """Raise for concrete ids out of ``[-num_embeddings, num_embeddings)``."""
        if not is_concrete(ids):
            return
        values, n = np.asarray(ids), self.num_embeddings
        bad = (values < -n) | (values >= n)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            check_values(
                self,
                ~bad,
                f"expected ids in [0, {n}) (num_embeddings {n}; negative ids down to "
                f"-{n} count from the end), got {values[where]} at index {where} of ids "
                f"of shape {values.shape} ({int(bad.sum())} out of range).",
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
        self._check_id_values(x)
        x = jnp.asarray(x)
        rows = jnp.take(params["embedding"], x, axis=0, mode="fill")
        row = self._padding_row()
        if row is None:
            return rows
        # Masking the output (not the table) keeps the cost per id, and sends the
        # padding row no gradient from lookups, as torch.nn.Embedding(padding_idx=...).
        is_padding = x == row
        if jnp.issubdtype(x.dtype, jnp.signedinteger):
            is_padding |= x == row - self.num_embeddings
        return jnp.where(is_padding[..., None], jnp.zeros((), rows.dtype), rows)

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
