"""Checkpoints: any pytree of arrays in one safetensors file, written atomically.

The file is a plain safetensors file (a JSON header, then raw little-endian bytes): no
pickle, nothing executable, readable by any safetensors reader. One tensor per leaf, named
by the leaf's path (``params/dense_0/weight``, ``opt_state/0/mu/dense_0/weight``). The
pytree's structure is not stored: ``load_checkpoint`` takes it from a template (``like``),
and refuses a file whose paths, shapes or dtypes differ from it. Leaves safetensors has no
dtype for are stored as raw bytes and typed PRNG keys as their key data; the header's
metadata records how to turn them back.

A write goes to a temporary file in the same directory, is flushed to disk, and is renamed
onto the final name, so a crash never leaves a partial file under that name.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from jnn._checkpoint_files import (
    FORMAT,
    VERSION,
    CheckpointError,
    json_entry,
    open_checkpoint,
    read_header,
    write_atomically,
)
from jnn._params_check import path_name

__all__ = ["save_checkpoint", "load_checkpoint", "checkpoint_metadata"]

# safetensors' header code -> NumPy dtype name, for the dtypes it stores natively and its
# NumPy reader gives back. Not float8, which safetensors writes but cannot read into NumPy,
# nor complex64, which it stores only since 0.7: both are stored as bytes.
NATIVE = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "U16": "uint16",
    "I16": "int16",
    "U32": "uint32",
    "I32": "int32",
    "U64": "uint64",
    "I64": "int64",
    "F16": "float16",
    "BF16": "bfloat16",
    "F32": "float32",
    "F64": "float64",
}
_NATIVE_NAMES = frozenset(NATIVE.values())


# ------------------------------------------------------------------------------- paths


def leaf_paths(name: str, tree: Any) -> tuple[list[str], list[Any], Any]:
    """``(paths, leaves, treedef)``: each leaf's path as ``"a/b/0"`` (``"."`` for a tree
    that is a single leaf). Raises ``ValueError`` if two leaves get the same path."""
    with_paths, treedef = jax.tree_util.tree_flatten_with_path(tree)
    paths = [path_name(path) or "." for path, _ in with_paths]
    if "__metadata__" in paths:
        raise ValueError(
            f"{name}: a leaf at the top of the tree is named '__metadata__', a name "
            "safetensors reserves for its header. Hint: rename that key."
        )
    if len(set(paths)) < len(paths):
        clashes = sorted({p for p in paths if paths.count(p) > 1})
        raise ValueError(
            f"{name}: several leaves would be stored under the same name: {clashes}. "
            "Hint: dict keys must not contain '/'."
        )
    return paths, [leaf for _, leaf in with_paths], treedef


def _is_key(dtype: Any) -> bool:
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _is_numeric(dtype: np.dtype) -> bool:
    # JAX's test, not NumPy's: ml_dtypes' types (bfloat16, float8, int4) count as numbers.
    return dtype == np.bool_ or (dtype.kind != "O" and jnp.issubdtype(dtype, jnp.number))


# ---------------------------------------------------------------------------------- save


def _host_arrays(name: str, paths: list[str], leaves: list[Any]) -> tuple[list, dict]:
    """Every leaf as a little-endian, C-contiguous NumPy array, and the ``encoded`` record
    of the leaves not stored as themselves: ``{path: {"dtype", "shape"[, "impl"]}}``."""
    encoded: dict[str, dict] = {}
    staged = []
    for path, leaf in zip(paths, leaves, strict=True):
        if isinstance(leaf, jax.core.Tracer):
            raise TypeError(
                f"{name}: the leaf '{path}' is a traced value; checkpoints are saved outside "
                "jax.jit, grad and vmap."
            )
        if isinstance(leaf, jax.Array):
            if leaf.is_deleted():
                raise ValueError(
                    f"{name}: the array at '{path}' has been deleted (donated to a jitted "
                    "step). Hint: save the state the step returned, not the one passed in."
                )
            if not leaf.is_fully_addressable:
                raise ValueError(
                    f"{name}: the array at '{path}' spans several hosts; save_checkpoint "
                    "writes one file from one process. Hint: use orbax-checkpoint for "
                    "multi-host training."
                )
            if _is_key(leaf.dtype):
                encoded[path] = {
                    "dtype": str(leaf.dtype),
                    "impl": str(jax.random.key_impl(leaf)),
                    "shape": list(leaf.shape),
                }
                leaf = jax.random.key_data(leaf)
        elif not isinstance(leaf, np.ndarray | np.generic | bool | int | float | complex):
            raise TypeError(
                f"{name}: the leaf '{path}' is a {type(leaf).__name__}, not an array. Hint: "
                "put non-array values in metadata=..., or make them arrays."
            )
        staged.append(leaf)
    host = jax.device_get(staged)  # transfers every device array at once
    arrays = []
    for path, array in zip(paths, host, strict=True):
        array = np.asarray(array)
        if not _is_numeric(array.dtype):
            raise TypeError(
                f"{name}: the leaf '{path}' has dtype {array.dtype}, which a checkpoint "
                "cannot hold. Hint: leaves must be numeric or boolean arrays."
            )
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        if not array.flags.c_contiguous:
            array = np.ascontiguousarray(array)
        if path not in encoded and array.dtype.name not in _NATIVE_NAMES:
            encoded[path] = {"dtype": array.dtype.name, "shape": list(array.shape)}
            array = array.reshape(-1).view(np.uint8)
        arrays.append(array)
    return arrays, encoded


def save_checkpoint(
    path: str | os.PathLike, tree: Any, *, metadata: Mapping[str, Any] | None = None
) -> None:
    """Save a pytree of arrays to one safetensors file, atomically.

    Each leaf becomes one tensor named by its path in the tree (``params/dense_0/weight``;
    NamedTuple fields by name, list and tuple items by index). ``None`` and empty
    containers hold no arrays and are not stored; the structure comes back from the
    template given to ``load_checkpoint``. Device arrays are copied to the host first.

    The file is written under a temporary name in the same directory, flushed to disk and
    renamed onto ``path`` (replacing any file there), so ``path`` holds either the old
    file or the whole new one, even if the process dies mid-write.

    Args:
      path: The file to write; its directory is created if needed.
      tree: A pytree of arrays: ``jax.Array`` (typed PRNG keys included), NumPy arrays or
        Python numbers, of any numeric or boolean dtype (bfloat16 and float8 too).
      metadata: A JSON-serialisable dict stored in the file's header, read back by
        ``checkpoint_metadata``. Tuples come back as lists, as JSON has only lists.

    Raises:
      TypeError: If a leaf is not an array (a string, an object) or a traced value, or
        ``metadata`` is not JSON-serialisable.
      ValueError: If two leaves would share a name, or an array was deleted by donation.

    Examples:
      >>> import pathlib, tempfile, jax, jax.numpy as jnp, jnn
      >>> tmp = pathlib.Path(tempfile.mkdtemp())
      >>> tree = {"weight": jnp.ones((2, 3), jnp.bfloat16), "key": jax.random.key(0)}
      >>> jnn.save_checkpoint(tmp / "tree.safetensors", tree, metadata={"epoch": 3})
      >>> jnn.checkpoint_metadata(tmp / "tree.safetensors")
      {'epoch': 3}
    """
    write_checkpoint("save_checkpoint", path, tree, metadata)


def write_checkpoint(
    name: str, path: str | os.PathLike, tree: Any, metadata: Any, **header: Any
) -> None:
    """``save_checkpoint`` for ``name``; ``header`` adds jnn's own entries (``metrics``)."""
    if metadata is not None and not isinstance(metadata, Mapping):
        raise TypeError(
            f"{name}: expected metadata as a dict (or None), got {type(metadata).__name__}."
        )
    entries = {
        "format": FORMAT,
        "version": VERSION,
        "metadata": json_entry(name, "metadata", {} if metadata is None else dict(metadata)),
        **{key: json_entry(name, key, value) for key, value in header.items()},
    }
    paths, leaves, _ = leaf_paths(name, tree)
    arrays, encoded = _host_arrays(name, paths, leaves)
    entries["encoded"] = json.dumps(encoded)
    tensors = dict(zip(paths, arrays, strict=True))
    write_atomically(
        os.fspath(path),
        lambda file: safetensors.numpy.save_file(tensors, file, metadata=entries),
    )


# ---------------------------------------------------------------------------------- load


def _key_data_shape(impl: str) -> tuple:
    """The trailing shape of one key's data under ``impl`` (``(2,)`` for threefry)."""
    return jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0, impl=impl))).shape


def _stored_as(record: dict, code: str, shape: tuple) -> tuple | None:
    """The leaf's ``(shape, dtype name)`` if the tensor is what jnn writes for ``record``."""
    want = tuple(record["shape"])
    if "impl" in record:
        ok = code == "U32" and shape == want + _key_data_shape(record["impl"])
    else:
        ok = code == "U8" and shape == (math.prod(want) * jnp.dtype(record["dtype"]).itemsize,)
    return (want, str(record["dtype"])) if ok else None


def _file_specs(name: str, path: str, file: Any, encoded: Any) -> dict[str, tuple]:
    """``{tensor name: (shape, dtype name)}`` as the tree had them before encoding."""
    damaged = f"{name}: the header of '{path}' is damaged"
    if not isinstance(encoded, dict) or set(encoded) - set(file.keys()):
        raise CheckpointError(f"{damaged}: its record of encoded tensors does not fit the file.")
    specs = {}
    for key in file.keys():
        view = file.get_slice(key)
        code, shape = view.get_dtype(), tuple(view.get_shape())
        if key not in encoded:
            spec = (shape, NATIVE[code]) if code in NATIVE else None
        else:
            try:
                spec = _stored_as(encoded[key], code, shape)
            except (KeyError, TypeError, ValueError):  # a missing entry, an unknown dtype
                spec = None
        if spec is None:
            raise CheckpointError(
                f"{damaged}: tensor '{key}' is stored as {code}{list(shape)}, which jnn does "
                f"not write for it ({encoded.get(key, 'no record')})."
            )
        specs[key] = spec
    return specs


def _like_spec(leaf: Any) -> tuple[tuple, str]:
    dtype, shape = getattr(leaf, "dtype", None), getattr(leaf, "shape", None)
    if dtype is None or shape is None:
        array = np.asarray(leaf)
        dtype, shape = array.dtype, array.shape
    return tuple(shape), (str(dtype) if _is_key(dtype) else np.dtype(dtype).name)


def _describe(spec: tuple) -> str:
    return f"{spec[1]}{list(spec[0])}"


def _mismatches(file_specs: dict, paths: list[str], like_specs: list[tuple]) -> list[str]:
    lines = []
    for path, want in zip(paths, like_specs, strict=True):
        got = file_specs.get(path)
        if got is None:
            lines.append(f"  {path}: missing in the file (expected {_describe(want)})")
        elif got != want:
            what = "shape" if got[1] == want[1] else "dtype" if got[0] == want[0] else None
            what = f"{what} differs" if what else "shape and dtype differ"
            lines.append(
                f"  {path}: {what}: {_describe(got)} in the file, {_describe(want)} expected"
            )
    for path in sorted(set(file_specs) - set(paths)):
        lines.append(f"  {path}: unexpected in the file ({_describe(file_specs[path])})")
    return lines


def _place(value: Any, like: Any) -> Any:
    """``value`` on ``like``'s devices for JAX leaves, as NumPy for NumPy leaves."""
    if isinstance(like, jax.Array | jax.ShapeDtypeStruct):
        sharding = getattr(like, "sharding", None)
        return jax.device_put(value) if sharding is None else jax.device_put(value, sharding)
    if isinstance(like, bool | int | float | complex):
        return value.item()
    return value


def read_checkpoint(name: str, path: str | os.PathLike, like: Any) -> tuple[Any, dict]:
    """``load_checkpoint`` for ``name``, returning jnn's header entries too."""
    paths, like_leaves, treedef = leaf_paths(name, like)
    like_specs = [_like_spec(leaf) for leaf in like_leaves]
    with open_checkpoint(name, path) as (file, header):
        encoded = header["encoded"]
        lines = _mismatches(_file_specs(name, path, file, encoded), paths, like_specs)
        if lines:
            raise CheckpointError(
                f"{name}: the checkpoint '{os.fspath(path)}' does not match the tree it is "
                f"loaded into ({len(lines)} paths differ); nothing was loaded:\n"
                + "\n".join(lines)
                + "\nHint: build `like` the way the saved tree was built (same model, "
                "optimizer and options), e.g. a freshly initialised state or its "
                "jax.eval_shape."
            )
        values = []
        for path_in_file, leaf in zip(paths, like_leaves, strict=True):
            array = file.get_tensor(path_in_file)
            record = encoded.get(path_in_file)
            if record is not None and "impl" in record:
                array = jax.random.wrap_key_data(array, impl=record["impl"])
            elif record is not None:
                array = array.view(jnp.dtype(record["dtype"])).reshape(record["shape"])
            values.append(_place(array, leaf))
    return jax.tree.unflatten(treedef, values), header


def load_checkpoint(path: str | os.PathLike, like: Any) -> Any:
    """Load a checkpoint written by ``save_checkpoint`` into the structure of ``like``.

    Every path, shape and dtype of ``like`` must match the file's: a mismatch raises one
    error listing every differing path (missing in the file, unexpected in the file,
    shape or dtype differs), and nothing is loaded. Restored leaves take ``like``'s kind:
    a leaf that is a ``jax.Array`` (or a ``jax.ShapeDtypeStruct``) comes back as a
    ``jax.Array`` placed with its sharding (the default device when it has none), a NumPy
    leaf as a NumPy array, a Python number as a Python number. Typed PRNG keys come back
    as typed keys of the same implementation.

    Args:
      path: A file written by ``save_checkpoint``.
      like: A pytree with the saved tree's structure: a freshly initialised one, or its
        ``jax.eval_shape`` (only shapes, dtypes and shardings are read from it).

    Returns:
      A pytree with ``like``'s structure holding the file's values, bit for bit.

    Raises:
      FileNotFoundError: If there is no file at ``path``.
      CheckpointError: If the file is empty, truncated or damaged, is not a safetensors
        file written by jnn, or does not match ``like``.

    Examples:
      >>> import pathlib, tempfile, jax, jax.numpy as jnp, jnn
      >>> tmp = pathlib.Path(tempfile.mkdtemp())
      >>> tree = {"weight": jnp.arange(3.0), "step": jnp.asarray(7)}
      >>> jnn.save_checkpoint(tmp / "tree.safetensors", tree)
      >>> like = jax.eval_shape(lambda: tree)
      >>> jnn.load_checkpoint(tmp / "tree.safetensors", like)["weight"]
      Array([0., 1., 2.], dtype=float32)
      >>> jnn.load_checkpoint(tmp / "tree.safetensors", {"weight": jnp.zeros(4)})
      Traceback (most recent call last):
      ...
      jnn.CheckpointError: load_checkpoint: the checkpoint '...' does not match ... loaded:
        weight: shape differs: float32[3] in the file, float32[4] expected
        step: unexpected in the file (int32[])
      Hint: ...
    """
    return read_checkpoint("load_checkpoint", path, like)[0]


def checkpoint_metadata(path: str | os.PathLike) -> dict:
    """The ``metadata`` dict given to ``save_checkpoint``, read from the header alone.

    Args:
      path: A file written by ``save_checkpoint``.

    Returns:
      The metadata as JSON gave it back (``{}`` if none was given).

    Raises:
      FileNotFoundError: If there is no file at ``path``.
      CheckpointError: If the file is not a complete checkpoint written by jnn.

    Examples:
      >>> import pathlib, tempfile, jax.numpy as jnp, jnn
      >>> tmp = pathlib.Path(tempfile.mkdtemp())
      >>> jnn.save_checkpoint(tmp / "w.safetensors", jnp.ones(2), metadata={"note": "hi"})
      >>> jnn.checkpoint_metadata(tmp / "w.safetensors")
      {'note': 'hi'}
    """
    return read_header("checkpoint_metadata", path)["metadata"]
