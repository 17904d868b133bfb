"""``summary``: every layer's path, kind, output shape and parameters, traced abstractly
(``jax.eval_shape``: nothing computed or allocated). While ``apply`` is traced, a recorder
in ``jnn._scope.APPLY_HOOK`` notes the path and output of each child a composite calls."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from jnn._errors import LayerError, layer_name
from jnn._module import Module
from jnn._scope import APPLY_HOOK, specs

__all__ = ["summary", "Summary", "LayerSummary"]

_CONTEXT = ("key", "is_training")  # keywords of apply that init does not take
_MAX_OUTPUT_CHARS = 48


class LayerSummary(NamedTuple):
    """One call of one layer, as ``summary`` saw it while tracing ``apply``."""

    path: str
    """Child names from the root, joined by ``/`` (``"block_0/attention"``); ``""`` for
    the model itself. It is where the layer's params sit in the params tree."""
    kind: str
    """The layer's class name."""
    depth: int
    """Nesting depth: 0 for the model, 1 for its children, and so on."""
    output: Any
    """The output, as a pytree of ``jax.ShapeDtypeStruct``."""
    params: int
    """Parameters under ``path``, the layer's children's included."""
    bytes: int
    """Bytes of those parameters."""
    own_params: int
    """Parameters the layer holds itself, outside its children: all of a leaf layer's,
    and those a composite makes with ``scope.param``."""
    state: int
    """Entries of non-trainable state under ``path`` (running statistics)."""
    call: int
    """0 for the first call at ``path``; 1, 2, ... for later calls sharing its params
    (a tied embedding used again as the output projection)."""


class Summary(NamedTuple):
    """What ``summary`` returns: the rows, the totals, and the table as ``str(summary)``."""

    rows: tuple[LayerSummary, ...]
    """Every layer call, in the order ``apply`` makes them (a parent before its
    children), down to the ``depth`` asked for."""
    total_params: int
    """All parameters of the model, each counted once."""
    total_bytes: int
    """Their bytes."""
    total_state: int
    """All entries of non-trainable state."""
    total_state_bytes: int
    """Their bytes."""

    def __str__(self) -> str:
        return _table(self)

    def __repr__(self) -> str:
        kind = self.rows[0].kind if self.rows else "model"
        return (
            f"Summary({kind}: {len(self.rows)} rows, {self.total_params:,} params, "
            f"{_human_bytes(self.total_bytes)})"
        )


def summary(
    model: Module,
    *sample_inputs: Any,
    depth: int | None = None,
    print_fn: Callable[[str], Any] | None = print,
    **kwargs: Any,
) -> Summary:
    """Each layer's path, kind, output shape, parameter count and bytes, with totals.

    ``init_with_state`` and then ``apply`` are traced with ``jax.eval_shape``: nothing
    is computed and no parameter is allocated, so a model too large for memory can be
    summarised too (a 1.1-billion-parameter ``TransformerLM`` takes about 1.5 s). As
    Keras's and torchinfo's summaries do, the table is printed; the same information is
    returned as data.

    A row is one call of a layer that a composite made through its ``scope``, in call
    order. Its ``Params`` include the layer's children's, like a directory's size, so
    the column does not add up; the totals count every parameter once. A layer called
    again under the same name (a tied embedding) gets another row, marked ``shared``.
    Layers run inside a leaf layer (the block of ``Repeat``) get no rows of their own,
    except in a wrapper that runs a model on its own params tree (``MixedPrecision``, a
    remat'd ``TransformerBlock``): that model's layers are listed under the wrapper,
    with the dtypes they compute in.

    Args:
      model: A ``jnn.Module``.
      *sample_inputs: Inputs as given to ``apply``: arrays or ``jax.ShapeDtypeStruct``
        (only shapes and dtypes are read).
      depth: Show layers down to this nesting depth (0: the model alone, 1: its
        children too); all of them by default. The totals always cover the whole model.
      print_fn: Called with the table; ``None`` prints nothing.
      **kwargs: Keywords of ``apply`` (``is_training=True``, ``mask=...``). Those
        other than ``key`` and ``is_training`` reach ``init`` too, as in
        ``Module.init``. ``key`` defaults to ``jax.random.key(0)``; only its type is
        read.

    Returns:
      A ``Summary``: ``rows`` (``LayerSummary`` tuples), ``total_params``,
      ``total_bytes``, ``total_state`` and ``total_state_bytes``; ``str()`` gives the
      table.

    Raises:
      TypeError: If ``model`` is not a ``jnn.Module``, no sample input is given, an
        input is not an array, or ``state`` is passed.
      ValueError: If ``depth`` is negative.
      LayerError: If the model rejects the sample inputs (a ``ShapeError`` for a wrong
        shape, say); the message starts with ``summary:`` and names the layer.

    Examples:
      >>> import jax.numpy as jnp, jnn
      >>> model = jnn.MLP([8, 2])
      >>> result = jnn.summary(model, jnp.zeros((4, 3)))
      Path     Kind   Output    Params  Bytes
      ---------------------------------------
      (model)  MLP    f32[4,2]      50  200 B
      dense_0  Dense  f32[4,8]      32  128 B
      dense_1  Dense  f32[4,2]      18   72 B
      ---------------------------------------
      Total params: 50 (200 B)
      >>> [row.path for row in result.rows], result.total_params
      (['', 'dense_0', 'dense_1'], 50)
    """
    _check_arguments(model, sample_inputs, depth, print_fn, kwargs)
    kwargs = dict(kwargs)
    key = kwargs.pop("key", None)
    key = jax.eval_shape(lambda: jax.random.key(0)) if key is None else specs(key)
    init_kw = {k: v for k, v in kwargs.items() if k not in _CONTEXT}
    dynamic, rebuild = _split((sample_inputs, kwargs, init_kw))

    def init(key, dynamic):
        xs, _, kw = rebuild(dynamic)
        return model.init_with_state(key, *xs, **kw)

    params, state = _traced("init_with_state", model, sample_inputs, init, key, dynamic)
    recorder = _Recorder(model)

    def apply(params, state, key, dynamic):
        xs, kw, _ = rebuild(dynamic)
        token = APPLY_HOOK.set(recorder)
        try:
            out = model.apply(params, *xs, state=state or None, key=key, **kw)
        finally:
            APPLY_HOOK.reset(token)
        out = out[0] if state else out
        recorder.rows[0][2] = specs(out)
        return out

    _traced("apply", model, sample_inputs, apply, params, state, key, dynamic)
    result = _summarize(recorder.rows, params, state, depth)
    if print_fn is not None:
        print_fn(str(result))
    return result


# --------------------------------------------------------------------------- arguments


def _is_array(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


def _check_arguments(model, sample_inputs, depth, print_fn, kwargs) -> None:
    if not isinstance(model, Module):
        got, hint = type(model).__name__, "wrap functions with jnn.from_functions."
        if isinstance(model, type) and issubclass(model, Module):
            got, hint = f"the class {model.__name__}", f"create it first: {model.__name__}(...)."
        raise TypeError(f"summary: expected a jnn.Module as the model, got {got}. Hint: {hint}")
    if not sample_inputs:
        raise TypeError(
            f"summary: expected at least one sample input for {layer_name(model)}, got none. "
            "Hint: pass inputs shaped like apply's, e.g. jnn.summary(model, jnp.zeros((1, "
            "784))) or jax.ShapeDtypeStruct((1, 784), jnp.float32)."
        )
    for i, x in enumerate(sample_inputs):
        for leaf in jax.tree.leaves(x):
            if isinstance(x, list | tuple) and not _is_array(leaf):
                raise TypeError(
                    f"summary: expected sample inputs as arrays or jax.ShapeDtypeStruct, got "
                    f"a Python {type(x).__name__} as input {i}. Hint: convert it first, e.g. "
                    "jnp.asarray(x, jnp.float32)."
                )
            if not (_is_array(leaf) or isinstance(leaf, int | float | complex | np.number)):
                raise TypeError(
                    f"summary: expected sample inputs as arrays or jax.ShapeDtypeStruct, got "
                    f"a {type(leaf).__name__} in input {i}."
                )
    if depth is not None:
        if not isinstance(depth, int) or isinstance(depth, bool):
            raise TypeError(f"summary: depth must be an int or None, got {depth!r}.")
        if depth < 0:
            raise ValueError(f"summary: depth must be a non-negative int, got {depth}.")
    if print_fn is not None and not callable(print_fn):
        raise TypeError(
            f"summary: print_fn must be callable or None, got {type(print_fn).__name__}."
        )
    if "state" in kwargs:
        raise TypeError(
            "summary: got state=, but the state comes from the model's own "
            "init_with_state. Hint: drop the state argument."
        )


def _split(tree: Any) -> tuple[list, Callable[[list], Any]]:
    """The array leaves of ``tree`` as specs (to trace), and a function putting traced
    ones back beside the other leaves (Python bools and ints, which stay static)."""
    leaves, treedef = jax.tree.flatten(tree)
    where = [i for i, leaf in enumerate(leaves) if _is_array(leaf)]

    def rebuild(dynamic: list) -> Any:
        full = list(leaves)
        for i, value in zip(where, dynamic, strict=True):
            full[i] = value
        return jax.tree.unflatten(treedef, full)

    return [specs(leaves[i]) for i in where], rebuild


def _traced(method: str, model: Module, sample_inputs: tuple, fn: Callable, *args: Any) -> Any:
    """``jax.eval_shape(fn, *args)``, with the model's own errors restated by ``summary``."""
    try:
        return jax.eval_shape(fn, *args)
    except LayerError as error:
        shapes = ", ".join(_describe(specs(x)) for x in sample_inputs)
        detail = f"{error} (while tracing {layer_name(model)}.{method} on {shapes})"
        try:
            renamed = type(error)("summary", detail)
        except TypeError:  # a subclass with its own constructor: keep it as it is
            raise error from None
        raise renamed from None


# --------------------------------------------------------------------------- recording


class _Recorder:
    """The hook ``Scope`` calls around each child's ``apply`` while ``summary`` traces.

    Rows are ``[path, layer, output]``, opened before the call so that a parent comes
    before its children. A call counts only when the calling scope belongs to the layer
    being applied: layers that a leaf runs by itself (``Repeat``'s block, inside a scan)
    have params laid out by that leaf, not by path, so they get no rows.
    """

    def __init__(self, model: Module):
        self.rows: list[list] = [["", model, None]]
        self._open: list[tuple[Module, str]] = [(model, "")]

    def __call__(self, owner: Module, name: str, layer: Module, *args: Any, **kwargs: Any):
        parent, parent_path = self._open[-1]
        if not _runs_as(parent, owner):
            return layer.apply(*args, **kwargs)
        path = f"{parent_path}/{name}" if parent_path else name
        row = [path, layer, None]
        self.rows.append(row)
        self._open.append((layer, path))
        try:
            result = layer.apply(*args, **kwargs)
        finally:
            self._open.pop()
        row[2] = specs(result if kwargs.get("state") is None else result[0])
        return result


def _runs_as(parent: Module, owner: Module) -> bool:
    """Whether ``owner``'s scope speaks for ``parent``: it is ``parent``, or the model a
    wrapper with the same params runs (``MixedPrecision``'s model, a remat'd block)."""
    node = parent
    while node is not None:
        if node is owner:
            return True
        wrapped = getattr(type(node), "wrapped_model", None)
        node = wrapped(node) if wrapped is not None else None
    return False


def _subtree(tree: Any, path: str) -> Any:
    for name in path.split("/") if path else ():
        if not isinstance(tree, dict) or name not in tree:
            return {}
        tree = tree[name]
    return tree


def _itemsize(dtype: Any) -> int:
    try:
        return int(np.dtype(dtype).itemsize)
    except TypeError:  # PRNG key dtypes
        return int(getattr(dtype, "itemsize", 0))


def _count(tree: Any) -> tuple[int, int]:
    """Number of entries and bytes of the arrays in ``tree``."""
    count = size = 0
    for leaf in jax.tree.leaves(tree):
        n = int(np.prod(np.shape(leaf), dtype=np.int64))
        count += n
        size += n * _itemsize(leaf.dtype if _is_array(leaf) else np.result_type(leaf))
    return count, size


def _kind(layer: Module) -> str:
    """The class name, or what a private wrapper says it is (``TransformerBlock (remat)``)."""
    kind = getattr(type(layer), "summary_kind", None)
    return kind(layer) if kind is not None else type(layer).__name__


def _summarize(raw_rows: list, params: Any, state: Any, depth: int | None) -> Summary:
    children: dict[str, set[str]] = {}
    for path, _, _ in raw_rows[1:]:
        parent, _, name = path.rpartition("/")
        children.setdefault(parent, set()).add(name)
    calls: dict[str, int] = {}
    rows = []
    for path, layer, output in raw_rows:
        level = path.count("/") + 1 if path else 0
        call = calls.get(path, 0)
        calls[path] = call + 1
        if depth is not None and level > depth:
            continue
        count, size = _count(_subtree(params, path))
        prefix = f"{path}/" if path else ""
        inner = sum(_count(_subtree(params, prefix + c))[0] for c in children.get(path, ()))
        rows.append(
            LayerSummary(
                path=path,
                kind=_kind(layer),
                depth=level,
                output=output,
                params=count,
                bytes=size,
                own_params=count - inner,
                state=_count(_subtree(state, path))[0],
                call=call,
            )
        )
    total_params, total_bytes = _count(params)
    total_state, total_state_bytes = _count(state)
    return Summary(tuple(rows), total_params, total_bytes, total_state, total_state_bytes)


# --------------------------------------------------------------------------- the table


_DTYPE_PREFIXES = (("bfloat", "bf"), ("float", "f"), ("uint", "u"), ("int", "i"), ("complex", "c"))


def _short_dtype(dtype: Any) -> str:
    name = str(dtype)
    for long, short in _DTYPE_PREFIXES:
        if name.startswith(long):
            return short + name[len(long) :]
    return name


def _describe(output: Any) -> str:
    """``f32[2,16,50]``; several outputs are joined by commas."""
    parts = []
    for leaf in jax.tree.leaves(output):
        if _is_array(leaf):
            parts.append(f"{_short_dtype(leaf.dtype)}[{','.join(map(str, leaf.shape))}]")
        else:
            parts.append(repr(leaf))
    text = ", ".join(parts) or "()"
    if len(text) > _MAX_OUTPUT_CHARS:
        text = text[: _MAX_OUTPUT_CHARS - 3] + "..."
    return text


def _human_bytes(n: int) -> str:
    value, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            break
        value /= 1024
    return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"


def _table(result: Summary) -> str:
    header = ["Path", "Kind", "Output", "Params", "Bytes"]
    with_state = result.total_state > 0
    if with_state:
        header.append("State")
    lines = []
    for row in result.rows:
        shared = row.call > 0
        params = "shared" if shared else (f"{row.params:,}" if row.params else "--")
        size = "" if shared else (_human_bytes(row.bytes) if row.bytes else "--")
        cells = [row.path or "(model)", row.kind, _describe(row.output), params, size]
        if with_state:
            cells.append(f"{row.state:,}" if row.state and not shared else "--")
        lines.append(cells)
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]
    right = {3, 4, 5}

    def render(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in pairs).rstrip()

    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
    footer = [f"Total params: {result.total_params:,} ({_human_bytes(result.total_bytes)})"]
    if with_state:
        footer.append(
            f"Total state: {result.total_state:,} ({_human_bytes(result.total_state_bytes)})"
        )
    return "\n".join([render(header), rule, *map(render, lines), rule, *footer])
