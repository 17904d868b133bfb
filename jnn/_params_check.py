"""The params check of ``apply``: the tree given against the tree ``init`` would make.

Every leaf's ``apply`` compares its params (and state) with the shapes its ``init``
creates for the same inputs, computed abstractly once per layer and input shape, so a
mismatched checkpoint is caught by name even in user-written layers that check nothing
themselves.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jnn._calls import init_kwargs
from jnn._checks import APPLY_CHECK, check_params_leaves
from jnn._errors import ParamsError, layer_name
from jnn._scope import specs

__all__ = ["compare_trees", "expected_trees", "leaf_paths", "key_name", "path_name"]


def leaf_paths(tree: Any) -> dict[str, Any]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {path_name(path): leaf for path, leaf in flat}


def key_name(entry: Any) -> str:
    """One entry of a ``jax.tree_util`` key path as a plain name: a dict key, an attribute
    (NamedTuple field) or a sequence index."""
    for attr in ("key", "name", "idx"):  # DictKey / FlattenedIndexKey, GetAttrKey, SequenceKey
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def path_name(path: tuple) -> str:
    """The ``/``-joined names of a key path: ``opt_state/0/mu/dense/weight``."""
    return "/".join(key_name(entry) for entry in path)


def compare_trees(module: Any, what: str, actual: Any, expected: Any, inputs: Any) -> None:
    """Raise ``ParamsError`` at the first missing, extra or mis-shaped leaf, or an integer or
    boolean param where ``init`` makes a floating-point one (a layer's state has its
    layer's own dtype checks: BatchNorm names its running statistics)."""
    check_params_leaves(module, actual, what)
    got, want = leaf_paths(actual), leaf_paths(expected)
    missing = [p for p in want if p not in got]
    extra = [p for p in got if p not in want]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {what} {missing}")
        if extra:
            parts.append(f"unexpected {what} {extra}")
        raise ParamsError(
            layer_name(module),
            f"{' and '.join(parts)}; expected the keys {sorted(want)}.",
        )
    for path, spec in want.items():
        shape = tuple(jnp.shape(got[path]))
        if shape != tuple(spec.shape):
            shapes = [tuple(jnp.shape(x)) for x in jax.tree.leaves(inputs)]
            raise ParamsError(
                layer_name(module),
                f"{what} '{path}' has shape {shape}, but inputs of shape "
                f"{', '.join(map(str, shapes))} need {tuple(spec.shape)}. "
                f"Hint: was this {what} made by init with inputs of another shape?",
            )
        dtype = jnp.result_type(got[path])
        floating = jnp.issubdtype(spec.dtype, jnp.inexact)
        if what == "params" and floating and not jnp.issubdtype(dtype, jnp.inexact):
            # Another float width is a choice (a mixed-precision policy casts params);
            # integers or booleans where init makes floats are a mistake.
            raise ParamsError(
                layer_name(module),
                f"{what} '{path}' has dtype {dtype}, but init makes it {spec.dtype}. "
                "Hint: cast the params back, e.g. "
                "jax.tree.map(lambda a: a.astype(jnp.float32), params).",
            )


def expected_trees(module: Any, inputs: Any, kwargs: Any) -> tuple[Any, Any]:
    """Shapes of the params and state that ``init`` would create for these inputs."""
    inputs, kwargs = specs(inputs), specs(init_kwargs(module, kwargs))
    try:
        return _expected_cached(module, inputs, tuple(sorted(kwargs.items())))
    except TypeError:  # an unhashable hyperparameter or input
        return _expected_uncached(module, inputs, kwargs)


@functools.lru_cache(maxsize=2048)
def _expected_cached(module: Any, inputs: tuple, kwargs: tuple) -> tuple[Any, Any]:
    return _expected_uncached(module, inputs, dict(kwargs))


def _expected_uncached(module: Any, inputs: tuple, kwargs: dict) -> tuple[Any, Any]:
    token = APPLY_CHECK.set(True)
    try:
        return jax.eval_shape(
            lambda xs, kw: module.init_with_state(jax.random.key(0), *xs, **kw), inputs, kwargs
        )
    finally:
        APPLY_CHECK.reset(token)
