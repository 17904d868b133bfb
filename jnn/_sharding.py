"""Placing a pytree (params, a ``TrainState``) on a mesh of devices, leaf by leaf.

A leaf is named by its ``/``-joined path, as in a checkpoint: ``block_0/mlp/dense_0/weight``
in a params dict, ``params/block_0/mlp/dense_0/weight`` and
``opt_state/0/mu/block_0/mlp/dense_0/weight`` in a ``TrainState``. Rules are regular
expressions found anywhere in that path (``re.search``), so one rule gives a parameter and
the optimizer's moments of it (adam's ``mu`` and ``nu``, which mirror the params) the same
spec. Anchor a rule at the end (``"mlp/dense_0/weight$"``) or at a name boundary
(``"(^|/)embed/"``), never at the start of the path with ``"^"`` alone: the prefix differs
between params and a train state.

Build meshes with ``make_mesh`` (or ``jax.make_mesh`` with ``AxisType.Auto`` axes): since
JAX 0.7, ``jax.make_mesh``'s default ``Explicit`` axes make every operation on a sharded
array state its output's sharding, which jnn's layers leave to XLA's propagation (an
embedding lookup on a batch split over ``"data"`` fails there).

Sharding is layout only: a step compiled with ``jax.jit`` over placed arrays computes the
same function, and XLA inserts the collectives (the gradient all-reduce of data parallelism,
the all-gathers of a fully sharded state).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jnn._params_check import path_name as leaf_path

__all__ = [
    "partition_specs",
    "named_shardings",
    "shard",
    "fully_sharded_specs",
    "fully_sharded",
    "batch_sharding",
    "make_mesh",
]

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


def _sharding_for(name: str, mesh: Mesh, path: str, leaf: Any, spec: PartitionSpec):
    shape = _shape(leaf)
    used: set[str] = set()
    for dim, entry in enumerate(spec):
        if entry is None:
            continue
        axes = (entry,) if isinstance(entry, str) else tuple(entry)
        for axis in axes:
            _check_axis(name, mesh, axis, f" (in the spec {spec} of '{path}')")
            if axis in used:
                raise ValueError(
                    f"{name}: the spec {spec} of '{path}' uses mesh axis {axis!r} twice."
                )
            used.add(axis)
        size = math.prod(mesh.shape[axis] for axis in axes)
        if shape[dim] % size:
            raise ValueError(
                f"{name}: '{path}' of shape {shape} cannot take the spec {spec}: axis {dim} "
                f"has size {shape[dim]}, not divisible by the {size} devices of mesh "
                f"{'axis' if isinstance(entry, str) else 'axes'} {entry!r}. "
                "Replicate that axis (None) or pick a mesh that divides it."
            )
    return NamedSharding(mesh, spec)


def _shardings_from_specs(name: str, tree: Any, mesh: Mesh, specs: Any) -> Any:
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    spec_leaves = treedef.flatten_up_to(specs)
    shardings = [
        _sharding_for(name, mesh, leaf_path(path), leaf, spec)
        for (path, leaf), spec in zip(flat, spec_leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, shardings)


def named_shardings(
    tree: Any, mesh: Mesh, rules: Rules = (), *, default: PartitionSpec = REPLICATED
) -> Any:
    """A ``NamedSharding`` per leaf of ``tree``: ``partition_specs`` on ``mesh``, checked.

    Use it as ``in_shardings``/``out_shardings`` of ``jax.jit``; for instance, to create a
    state already sharded, with no full copy on any device::

        shapes = jax.eval_shape(init, key)
        state = jax.jit(init, out_shardings=jnn.named_shardings(shapes, mesh, rules))(key)

    Args:
      tree: A pytree of arrays or ``jax.ShapeDtypeStruct``\\ s.
      mesh: The device mesh (``jnn.make_mesh((2, 4), ("data", "model"))``).
      rules: As for ``partition_specs``.
      default: As for ``partition_specs``.

    Returns:
      A tree of ``jax.sharding.NamedSharding`` with ``tree``'s structure.

    Raises:
      TypeError: As ``partition_specs``, or if ``mesh`` is not a ``Mesh``.
      ValueError: As ``partition_specs``; or if a spec names an axis the mesh lacks, uses
        an axis twice, or splits an array axis whose size the mesh axis does not divide
        (the message names the path, the spec and the shape).
    """
    name = "named_shardings"
    _check_mesh(name, mesh)
    specs = partition_specs(tree, rules, default=default)
    return _shardings_from_specs(name, tree, mesh, specs)


def shard(tree: Any, mesh: Mesh, rules: Rules = (), *, default: PartitionSpec = REPLICATED) -> Any:
    """``tree`` placed on ``mesh`` by ``jax.device_put``, each leaf split as the rules say.

    With no rules every leaf is replicated: the train state of data parallelism. Scalars and
    PRNG keys are always replicated. Under ``jax.jit``, a step over placed arrays runs on
    every device of the mesh; pass ``out_shardings=jax.tree.map(lambda a: a.sharding,
    state)`` to keep the new state laid out as the old one.

    Args:
      tree: A pytree of arrays (params, a ``TrainState``).
      mesh: The device mesh.
      rules: ``(pattern, PartitionSpec)`` pairs; see ``partition_specs``.
      default: The spec of leaves no rule matches (replicated by default).

    Returns:
      A tree of ``jax.Array``\\ s with ``tree``'s structure and values, sharded on ``mesh``.

    Raises:
      TypeError, ValueError: As ``named_shardings``, before anything is copied.

    Examples:
      >>> import jax, jax.numpy as jnp, jnn
      >>> from jax.sharding import PartitionSpec as P
      >>> mesh = jnn.make_mesh((1,), ("model",))
      >>> params = {"weight": jnp.ones((4, 8)), "bias": jnp.ones(8)}
      >>> placed = jnn.shard(params, mesh, [("weight", P(None, "model"))])
      >>> placed["weight"].sharding.spec == P(None, "model")
      True
    """
    name = "shard"
    _check_mesh(name, mesh)
    specs = partition_specs(tree, rules, default=default)
    return jax.device_put(tree, _shardings_from_specs(name, tree, mesh, specs))


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


def fully_sharded(tree: Any, mesh: Mesh, axis: str = "data", *, min_size: int = 1024) -> Any:
    """``tree`` with every large leaf split over mesh axis ``axis``: FSDP / ZeRO-3.

    Each device holds ``1 / mesh.shape[axis]`` of the params and of the optimizer state
    that mirrors them; under ``jax.jit`` XLA gathers a weight where it is used and
    reduce-scatters its gradient. Combined with a batch split over the same axis
    (``batch_sharding``), this is fully sharded data parallelism. See
    ``fully_sharded_specs`` for the choice of axis and the arguments.

    Returns:
      A tree of ``jax.Array``\\ s with ``tree``'s structure and values, placed on ``mesh``.

    Examples:
      >>> import jax, jax.numpy as jnp, jnn
      >>> mesh = jnn.make_mesh((1,), ("data",))
      >>> placed = jnn.fully_sharded({"weight": jnp.ones((64, 32))}, mesh)
      >>> tuple(placed["weight"].sharding.spec)
      ('data',)
    """
    name = "fully_sharded"
    specs = fully_sharded_specs(tree, mesh, axis, min_size=min_size)
    return jax.device_put(tree, _shardings_from_specs(name, tree, mesh, specs))


def batch_sharding(mesh: Mesh, axis: str | tuple[str, ...] = "data") -> NamedSharding:
    """The sharding that splits the leading (batch) axis of every array over ``axis``.

    ``jax.device_put(batch, jnn.batch_sharding(mesh))`` places a whole batch tree at once;
    the batch size must be divisible by the size of ``axis``. Other mesh axes replicate.

    Args:
      mesh: The device mesh.
      axis: The mesh axis (or a tuple of axes) the batch is split over.

    Returns:
      ``NamedSharding(mesh, PartitionSpec(axis))``.

    Raises:
      TypeError: If ``mesh`` is not a ``Mesh``.
      ValueError: If ``axis`` is not an axis of ``mesh``.

    Examples:
      >>> import jax, jnn
      >>> tuple(jnn.batch_sharding(jnn.make_mesh((1,), ("data",))).spec)
      ('data',)
    """
    name = "batch_sharding"
    _check_mesh(name, mesh)
    for one in (axis,) if isinstance(axis, str) else tuple(axis):
        _check_axis(name, mesh, one)
    return NamedSharding(mesh, PartitionSpec(axis))


def make_mesh(
    axis_shapes: Sequence[int], axis_names: Sequence[str], *, devices: Sequence | None = None
) -> Mesh:
    """``jax.make_mesh`` with ``Auto`` axes, whose shardings XLA propagates through a step.

    JAX 0.7 and later make ``Explicit`` axes the default of ``jax.make_mesh``; under them
    every operation must be able to name its output's sharding, and jnn's layers (the
    gather of an embedding lookup) leave that to XLA. Older JAX has only ``Auto`` axes.

    Args:
      axis_shapes: The number of devices along each mesh axis; their product is the
        number of devices used (all of them by default).
      axis_names: A name for each axis, such as ``("data", "model")``.
      devices: The devices to lay out (``jax.devices()`` by default).

    Returns:
      A ``jax.sharding.Mesh``.

    Examples:
      >>> import jnn
      >>> mesh = jnn.make_mesh((1, 1), ("data", "model"))
      >>> dict(mesh.shape)
      {'data': 1, 'model': 1}
    """
    axis_shapes, axis_names = tuple(axis_shapes), tuple(axis_names)
    kwargs: dict[str, Any] = {} if devices is None else {"devices": devices}
    axis_type = getattr(jax.sharding, "AxisType", None)
    if axis_type is not None:
        kwargs["axis_types"] = (axis_type.Auto,) * len(axis_names)
    return jax.make_mesh(axis_shapes, axis_names, **kwargs)
