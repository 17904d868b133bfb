"""Placing a pytree (params, a ``TrainState``, a batch) on a mesh of devices, leaf by leaf,
with the specs of ``jnn._partition``.

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
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jnn._params_check import path_name as leaf_path
from jnn._partition import (
    REPLICATED,
    Rules,
    _check_axis,
    _check_mesh,
    _shape,
    fully_sharded_specs,
    partition_specs,
)

__all__ = [
    "named_shardings",
    "shard",
    "fully_sharded",
    "batch_sharding",
    "shard_batch",
    "make_mesh",
]


def place(tree: Any, shardings: Any) -> Any:
    """``jax.device_put(tree, shardings)``, also across processes: in a run of several
    (``jax.distributed.initialize``) a sharding spanning other processes' devices takes
    each device's part from the host value, which every process must hold whole."""
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)
    return jax.tree.map(_place_leaf, tree, shardings)


def _place_leaf(leaf: Any, sharding: NamedSharding) -> jax.Array:
    if sharding.is_fully_addressable:
        return jax.device_put(leaf, sharding)
    key = isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)
    value = np.asarray(jax.random.key_data(leaf) if key else leaf)
    if key:  # key data has a trailing axis the key's spec does not name
        sharding = NamedSharding(sharding.mesh, PartitionSpec(*sharding.spec))
    placed = jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])
    return jax.random.wrap_key_data(placed, impl=jax.random.key_impl(leaf)) if key else placed


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
    return place(tree, _shardings_from_specs(name, tree, mesh, specs))


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
    return place(tree, _shardings_from_specs(name, tree, mesh, specs))


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
    return checked_batch_sharding("batch_sharding", mesh, axis)


def checked_batch_sharding(name: str, mesh: Mesh, axis: str | tuple[str, ...]) -> NamedSharding:
    """``batch_sharding`` for ``name`` (its errors name the caller)."""
    _check_mesh(name, mesh)
    axes = (axis,) if isinstance(axis, str) else axis
    if not (isinstance(axes, tuple | list) and axes and all(isinstance(a, str) for a in axes)):
        raise TypeError(
            f"{name}: expected the batch axis to be a mesh axis name or a tuple of them, got "
            f"{axis!r}."
        )
    for one in axes:
        _check_axis(name, mesh, one)
    return NamedSharding(mesh, PartitionSpec(axis if isinstance(axis, str) else tuple(axes)))


def axis_size(mesh: Mesh, axis: str | tuple[str, ...]) -> int:
    return math.prod(mesh.shape[a] for a in ((axis,) if isinstance(axis, str) else axis))


def shard_batch(batch: Any, mesh: Mesh, axis: str | tuple[str, ...] = "data") -> Any:
    """A batch placed on ``mesh`` with its leading axis split over ``axis``.

    In one process ``batch`` is the whole batch, and this is
    ``jax.device_put(batch, jnn.batch_sharding(mesh, axis))`` with the sizes checked. In a
    run of several processes (``jax.distributed.initialize``) each process passes only its
    own rows, the part of the global batch its devices hold, and gets back the global
    array (``jax.make_array_from_process_local_data``): a global batch of ``B`` rows over
    ``P`` processes is ``B / P`` rows in each.

    Args:
      batch: A pytree of arrays (NumPy or JAX) sharing a leading batch axis: ``[B, ...]``
        in one process, this process's ``[B / P, ...]`` in several.
      mesh: The device mesh.
      axis: The mesh axis (or a tuple of axes) the batch is split over.

    Returns:
      The batch as ``jax.Array``\\ s of the global shape, sharded on ``mesh``.

    Raises:
      TypeError: If ``mesh`` is not a ``Mesh``.
      ValueError: If ``axis`` is not an axis of ``mesh``, a leaf has no leading axis, or
        the leading size is not divisible by this process's devices along ``axis`` (the
        message names the leaf and its shape).

    Examples:
      >>> import numpy as np, jnn
      >>> mesh = jnn.make_mesh((1,), ("data",))
      >>> x, y = jnn.shard_batch((np.ones((4, 3)), np.arange(4)), mesh)
      >>> x.shape, tuple(y.sharding.spec)
      ((4, 3), ('data',))
    """
    name = "shard_batch"
    sharding = checked_batch_sharding(name, mesh, axis)
    processes = jax.process_count()
    local = axis_size(mesh, axis) // processes  # this process's devices along axis
    flat, treedef = jax.tree_util.tree_flatten_with_path(batch)
    for path, leaf in flat:
        shape = np.shape(leaf)
        where = f"the batch leaf '{leaf_path(path)}'" if path else "the batch"
        if not shape:
            raise ValueError(f"{name}: {where} is a scalar; expected a leading batch axis.")
        if local and shape[0] % local:
            raise ValueError(
                f"{name}: {where} has shape {shape}; its leading size {shape[0]} is not "
                f"divisible by the {local} devices of mesh axis {axis!r}"
                + (f" in this process (of {processes})" if processes > 1 else "")
                + ". Hint: use a batch size that is a multiple of it."
            )
    leaves = [leaf for _, leaf in flat]
    if processes == 1:
        return jax.device_put(jax.tree.unflatten(treedef, leaves), sharding)
    placed = [jax.make_array_from_process_local_data(sharding, np.asarray(a)) for a in leaves]
    return jax.tree.unflatten(treedef, placed)


def on_mesh(tree: Any, mesh: Mesh) -> Any:
    """The shardings that put ``tree`` on ``mesh``: a leaf already laid out on ``mesh``
    keeps its spec, any other leaf is replicated (``fit``'s placement of a train state)."""

    def sharding(leaf: Any) -> NamedSharding:
        current = getattr(leaf, "sharding", None)
        if isinstance(current, NamedSharding) and current.mesh == mesh:
            return current
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(sharding, tree)


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

    Raises:
      ValueError: If the sizes and names differ in number, or the sizes need more
        devices than there are (with the CPU flag that makes more, on a CPU).

    Examples:
      >>> import jnn
      >>> mesh = jnn.make_mesh((1, 1), ("data", "model"))
      >>> dict(mesh.shape)
      {'data': 1, 'model': 1}
    """
    axis_shapes, axis_names = tuple(axis_shapes), tuple(axis_names)
    if len(axis_shapes) != len(axis_names):
        raise ValueError(
            f"make_mesh: got {len(axis_shapes)} axis sizes {axis_shapes} but "
            f"{len(axis_names)} names {axis_names}; give one name per axis."
        )
    available = len(jax.devices()) if devices is None else len(devices)
    if math.prod(axis_shapes) > available:
        if devices is not None:
            have = f"{available} were given"
        else:
            have = f"there are {available} ({jax.devices()[0].platform})"
        hint = (
            " Hint: on a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N (set "
            "before JAX starts) makes N devices to try a layout."
            if devices is None and jax.devices()[0].platform == "cpu"
            else ""
        )
        raise ValueError(
            f"make_mesh: axis sizes {axis_shapes} need {math.prod(axis_shapes)} devices, "
            f"but {have}.{hint}"
        )
    kwargs: dict[str, Any] = {} if devices is None else {"devices": devices}
    axis_type = getattr(jax.sharding, "AxisType", None)
    if axis_type is not None:
        kwargs["axis_types"] = (axis_type.Auto,) * len(axis_names)
    return jax.make_mesh(axis_shapes, axis_names, **kwargs)
