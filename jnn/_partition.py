"""Partition specs for a pytree (params, a ``TrainState``), chosen leaf by leaf by rules on
its path, or by the fully sharded layout.

A leaf is named by its ``/``-joined path, as in a checkpoint: ``block_0/mlp/dense_0/weight``
in a params dict, ``params/block_0/mlp/dense_0/weight`` and
``opt_state/0/mu/block_0/mlp/dense_0/weight`` in a ``TrainState``. Rules are regular
expressions found anywhere in that path (``re.search``), so one rule gives a parameter and
the optimizer's moments of it (adam's ``mu`` and ``nu``, which mirror the params) the same
spec. Anchor a rule at the end (``"mlp/dense_0/weight$"``) or at a name boundary
(``"(^|/)embed/"``), never at the start of the path with ``"^"`` alone: the prefix differs
between params and a train state.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from jnn._params_check import path_name as leaf_path

__all__ = ["partition_specs", "fully_sharded_specs", "tensor_parallel_rules"]

REPLICATED = PartitionSpec()
"""The spec of a leaf copied whole to every device."""

Rules = Sequence[tuple[str | re.Pattern, PartitionSpec]] | Mapping[str, PartitionSpec]


def _is_key(leaf: Any) -> bool:
    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _shape(leaf: Any) -> tuple[int, ...]:
    return tuple(leaf.shape) if hasattr(leaf, "shape") else tuple(np.shape(leaf))


def _always_replicated(leaf: Any) -> bool:
    """Scalars and PRNG keys: never split, whatever the rules say."""
    return _is_key(leaf) or not _shape(leaf)


def _check_spec(name: str, what: str, spec: Any) -> PartitionSpec:
    if not isinstance(spec, PartitionSpec):
        raise TypeError(
            f"{name}: expected {what} to be a jax.sharding.PartitionSpec, got "
            f"{type(spec).__name__} {spec!r}. Write PartitionSpec(None, 'model') for a tuple."
        )
    return spec


def _compile_rules(name: str, rules: Any) -> list[tuple[re.Pattern, PartitionSpec]]:
    if isinstance(rules, Mapping):
        rules = list(rules.items())
    if isinstance(rules, str | bytes) or not isinstance(rules, Sequence):
        raise TypeError(
            f"{name}: expected rules to be a sequence of (pattern, PartitionSpec) pairs, got "
            f"{type(rules).__name__}."
        )
    compiled = []
    for i, rule in enumerate(rules):
        if not (isinstance(rule, tuple | list) and len(rule) == 2):
            raise TypeError(
                f"{name}: expected rule {i} to be a (pattern, PartitionSpec) pair, got {rule!r}."
            )
        pattern, spec = rule
        if not isinstance(pattern, str | re.Pattern):
            raise TypeError(
                f"{name}: expected the pattern of rule {i} to be a regex string, got "
                f"{type(pattern).__name__} {pattern!r}."
            )
        try:
            regex = re.compile(pattern)
        except re.error as error:
            raise ValueError(
                f"{name}: the pattern of rule {i}, {pattern!r}, is not a valid regex: {error}."
            ) from None
        compiled.append((regex, _check_spec(name, f"the spec of rule {i}", spec)))
    return compiled


def _spec_for(name: str, path: str, leaf: Any, rules: list, default: PartitionSpec):
    if _always_replicated(leaf):
        return PartitionSpec()
    shape = _shape(leaf)
    source = "the default"
    spec = default
    for i, (regex, rule_spec) in enumerate(rules):
        if regex.search(path):
            source, spec = f"rule {i} ({regex.pattern!r})", rule_spec
            break
    if len(spec) > len(shape):
        raise ValueError(
            f"{name}: {source} gives '{path}' of shape {shape} the spec {spec}, with "
            f"{len(spec)} entries for an array of rank {len(shape)}. Make the pattern match "
            "only the leaves it fits (end it with '/weight$'), or put a rule for this leaf "
            "before it."
        )
    return spec


def partition_specs(tree: Any, rules: Rules = (), *, default: PartitionSpec = REPLICATED) -> Any:
    """The ``PartitionSpec`` of every leaf of ``tree``, chosen by regex rules on its path.

    Each leaf's path is its keys joined by ``/`` (``params/block_0/mlp/dense_0/weight`` in a
    ``TrainState``; ``block_0/mlp/dense_0/weight`` in a params dict). The first rule whose
    pattern is found in the path (``re.search``) gives the spec; a leaf no rule matches gets
    ``default``. Scalars and PRNG key arrays always get ``PartitionSpec()`` (replicated).
    Since the search is not anchored at the start, a rule for a parameter also matches the
    optimizer state that mirrors it (``opt_state/0/mu/block_0/mlp/dense_0/weight``): anchor
    at the end (``"/weight$"``) or a name boundary (``"(^|/)embed/"``), not at ``"^"``.

    Args:
      tree: A pytree of arrays or ``jax.ShapeDtypeStruct``\\ s (from ``jax.eval_shape``).
      rules: ``(pattern, PartitionSpec)`` pairs, tried in order (or a dict, in its order).
      default: The spec of leaves no rule matches.

    Returns:
      A tree of ``PartitionSpec``\\ s with ``tree``'s structure.

    Raises:
      TypeError: If a rule is not a ``(str, PartitionSpec)`` pair or ``default`` is not a
        ``PartitionSpec``.
      ValueError: If a pattern is not a valid regex, or the spec a leaf gets has more entries
        than the leaf has axes; the message names the path, the spec and the shape.

    Examples:
      >>> import jax.numpy as jnp, jnn
      >>> from jax.sharding import PartitionSpec as P
      >>> params = {"dense": {"weight": jnp.ones((4, 8)), "bias": jnp.ones(8)}}
      >>> specs = jnn.partition_specs(params, [("weight$", P(None, "model"))])
      >>> specs["dense"]["weight"] == P(None, "model"), specs["dense"]["bias"] == P()
      (True, True)
    """
    name = "partition_specs"
    compiled = _compile_rules(name, rules)
    default = _check_spec(name, "default", default)
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: _spec_for(name, leaf_path(path), leaf, compiled, default), tree
    )


def _check_mesh(name: str, mesh: Any) -> None:
    if not isinstance(mesh, Mesh):
        raise TypeError(
            f"{name}: expected mesh to be a jax.sharding.Mesh (from jax.make_mesh), got "
            f"{type(mesh).__name__}."
        )


def _check_axis(name: str, mesh: Mesh, axis: str, where: str = "") -> None:
    if axis not in mesh.shape:
        raise ValueError(
            f"{name}: mesh axis {axis!r}{where} is not in the mesh, whose axes are "
            f"{dict(mesh.shape)}."
        )


def _fsdp_spec(leaf: Any, axis: str, size: int, min_size: int) -> PartitionSpec:
    if _always_replicated(leaf):
        return PartitionSpec()
    shape = _shape(leaf)
    if math.prod(shape) < min_size:
        return PartitionSpec()
    divisible = [d for d in range(len(shape)) if shape[d] % size == 0 and shape[d] >= size]
    if not divisible:
        return PartitionSpec()
    dim = max(divisible, key=lambda d: shape[d])  # the first of the largest
    return PartitionSpec(*([None] * dim), axis)


def fully_sharded_specs(tree: Any, mesh: Mesh, axis: str = "data", *, min_size: int = 1024) -> Any:
    """The specs of ``fully_sharded``: each leaf's largest divisible axis split over ``axis``.

    Args:
      tree: A pytree of arrays or ``jax.ShapeDtypeStruct``\\ s.
      mesh: The device mesh.
      axis: The mesh axis to split over.
      min_size: Leaves with fewer elements are replicated (biases, norms): their share
        would cost more to gather than it saves.

    Returns:
      A tree of ``PartitionSpec``\\ s: ``PartitionSpec(None, ..., axis)`` at the largest
      array axis the mesh axis divides (the first of equals), or ``PartitionSpec()`` for
      scalars, keys, leaves under ``min_size`` elements and leaves no axis of which divides.

    Raises:
      TypeError: If ``mesh`` is not a ``Mesh`` or ``min_size`` not an int.
      ValueError: If ``axis`` is not an axis of ``mesh`` or ``min_size`` is negative.
    """
    name = "fully_sharded_specs"
    _check_mesh(name, mesh)
    _check_axis(name, mesh, axis)
    if isinstance(min_size, bool) or not isinstance(min_size, int):
        raise TypeError(f"{name}: expected min_size to be an int, got {min_size!r}.")
    if min_size < 0:
        raise ValueError(f"{name}: expected min_size >= 0, got {min_size}.")
    size = mesh.shape[axis]
    return jax.tree.map(lambda leaf: _fsdp_spec(leaf, axis, size, min_size), tree)


def tensor_parallel_rules(axis: str = "model") -> list[tuple[str, PartitionSpec]]:
    """Rules that split jnn's transformer blocks over mesh axis ``axis`` (Megatron style).

    Every ``MultiHeadAttention`` splits its heads: the ``query``/``key``/``value`` kernels
    ``[features, heads, head_dim]`` and their biases along the heads axis, the ``output``
    kernel ``[heads, head_dim, features]`` along its first. Every ``TransformerBlock``'s
    MLP splits its hidden units: ``mlp/dense_0`` by columns (weight and bias),
    ``mlp/dense_1`` by rows. Each device then computes its heads and hidden units, and XLA
    adds one all-reduce after the attention and one after the MLP. Embeddings and norms
    are left to the other rules (replicated by default). With grouped heads the key and
    value heads must be divisible by the axis size too.

    Args:
      axis: The mesh axis to split over.

    Returns:
      ``(pattern, PartitionSpec)`` pairs for ``partition_specs``, ``shard`` and
      ``named_shardings``; put your own rules before or after them.

    Examples:
      >>> import jax, jax.numpy as jnp, jnn
      >>> model = jnn.TransformerLM(vocab_size=16, num_layers=1, features=8, num_heads=2)
      >>> params = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
      >>> specs = jnn.partition_specs(params, jnn.tensor_parallel_rules())
      >>> mlp = specs["block_0"]["mlp"]
      >>> tuple(mlp["dense_0"]["weight"]), tuple(mlp["dense_1"]["weight"])
      ((None, 'model'), ('model', None))
    """
    if not isinstance(axis, str):
        raise TypeError(f"tensor_parallel_rules: expected axis to be a str, got {axis!r}.")
    return [
        (r"attention/(query|key|value)/weight$", PartitionSpec(None, axis, None)),
        (r"attention/(query|key|value)/bias$", PartitionSpec(axis, None)),
        (r"attention/output/weight$", PartitionSpec(axis, None, None)),
        (r"mlp/dense_0/weight$", PartitionSpec(None, axis)),
        (r"mlp/dense_0/bias$", PartitionSpec(axis)),
        (r"mlp/dense_1/weight$", PartitionSpec(axis, None)),
    ]
