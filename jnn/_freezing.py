"""Freezing part of a model: an optimizer that leaves the named parameters unchanged.

``optax.masked(optimizer, mask)`` is not the tool for this: it applies ``optimizer`` where
the mask is true and passes the *other* updates through unchanged, so the "frozen"
parameters get the raw gradient added to them (a step of gradient ascent with learning
rate 1). ``freeze`` sends them to ``optax.set_to_zero()`` through
``optax.multi_transform`` instead, so their update is exactly zero, and the optimizer keeps
no state (moments) for them.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Sequence

import jax
import optax

from jnn._checks import check_params_leaves
from jnn._module import Params
from jnn._params_check import key_name
from jnn._train_checks import check_optimizer

__all__ = ["freeze"]

Pattern = str | re.Pattern


def _prefixes(names: tuple[str, ...]) -> list[str]:
    """``("a", "b", "c")`` -> ``["a", "a/b", "a/b/c"]``: the subtrees holding a leaf."""
    return ["/".join(names[: i + 1]) for i in range(len(names))]


def _matches(pattern: Pattern, path: str) -> bool:
    if isinstance(pattern, re.Pattern):
        return pattern.fullmatch(path) is not None
    return fnmatch.fnmatchcase(path, pattern)


def _no_match(pattern: Pattern, paths: list[str]) -> ValueError:
    shown = pattern.pattern if isinstance(pattern, re.Pattern) else pattern
    names = sorted({p for p in paths if p.count("/") <= 1})
    listing = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    hint = ""
    if isinstance(pattern, str):
        if "." in pattern and "/" not in pattern:
            hint = f" Hint: paths use '/' between names, e.g. '{pattern.replace('.', '/')}'."
        else:
            close = difflib.get_close_matches(pattern, paths, n=3)
            hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return ValueError(
        f"freeze: pattern {shown!r} matches no parameter. The params hold: {listing}.{hint}"
    )


def freeze(
    optimizer: optax.GradientTransformation,
    params: Params,
    patterns: Pattern | Sequence[Pattern],
) -> optax.GradientTransformation:
    """Wrap ``optimizer`` so that the parameters matching ``patterns`` never change.

    The frozen parameters get an update of exactly zero (``optax.set_to_zero()``), so
    they stay bit-identical however long you train, with any optimizer (weight decay
    and momentum included); the optimizer's state covers only the trainable ones. Their
    gradients are still computed; wrap their use in ``jax.lax.stop_gradient`` if that
    cost matters. Use the result like any optax transformation, e.g. with
    ``jnn.make_train_step`` or ``jnn.fit``.

    Do not use ``optax.masked(optimizer, trainable_mask)`` for this: it passes the
    updates outside the mask through unchanged, so the "frozen" parameters are moved by
    their raw gradient (the loss soon diverges).

    Patterns name parameters by their path in the params dict, with ``/`` between names,
    e.g. ``"encoder/dense_0/weight"``. A pattern matches a parameter when it matches its
    path or the path of a subtree that holds it, so ``"encoder"`` freezes everything
    under ``encoder``. A string is a glob (``fnmatch``: ``*`` matches any run of
    characters, ``/`` included, so ``"*/bias"`` is every bias below the top level); a
    compiled ``re.compile(...)`` pattern must match a whole path (``fullmatch``). Paths
    start at the root and have no ``/`` at either end (one there is ignored).

    Args:
      optimizer: The optax transformation for the trainable parameters.
      params: The model's params (only their names are read; a tree of
        ``jax.ShapeDtypeStruct`` will do).
      patterns: One pattern, or a list of them; each must match at least one parameter.

    Returns:
      ``optax.multi_transform({"trainable": optimizer, "frozen": optax.set_to_zero()},
      labels)``, with one label per parameter.

    Raises:
      TypeError: If ``optimizer`` is not an optax transformation, ``params`` not a dict,
        or a pattern neither a string nor a compiled regular expression.
      ValueError: If ``patterns`` is empty, or a pattern matches no parameter (the
        message lists the names the params hold).

    Examples:
      >>> import jax, jax.numpy as jnp, optax, jnn
      >>> model = jnn.Sequential({"encoder": jnn.Dense(8), "head": jnn.Dense(2)})
      >>> params = model.init(jax.random.key(0), jnp.zeros((1, 4)))
      >>> optimizer = jnn.freeze(optax.adam(1e-2), params, "encoder")
      >>> opt_state = optimizer.init(params)
      >>> grads = jax.tree.map(jnp.ones_like, params)
      >>> updates, opt_state = optimizer.update(grads, opt_state, params)
      >>> jax.tree.map(lambda u: bool((u == 0).all()), updates)  # which are frozen
      {'encoder': {'bias': True, 'weight': True}, 'head': {'bias': False, 'weight': False}}
    """
    name = "freeze"
    check_optimizer(name, optimizer)
    check_params_leaves(name, params)
    if isinstance(patterns, str | re.Pattern):
        patterns = [patterns]
    elif not isinstance(patterns, Sequence) or isinstance(patterns, bytes):
        raise TypeError(
            f"{name}: expected patterns as a string, a compiled regular expression, or a "
            f"list of them, got {type(patterns).__name__}."
        )
    patterns = list(patterns)
    if not patterns:
        raise ValueError(f"{name}: expected at least one pattern, got none.")
    for pattern in patterns:
        if not isinstance(pattern, str | re.Pattern):
            raise TypeError(
                f"{name}: expected each pattern to be a string such as 'encoder/*' or a "
                f"re.compile(...) pattern, got {pattern!r} ({type(pattern).__name__})."
            )
    patterns = [p.strip("/") if isinstance(p, str) else p for p in patterns]
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = [_prefixes(tuple(key_name(k) for k in path)) for path, _ in leaves]
    used = [False] * len(patterns)
    labels = []
    for prefixes in paths:
        frozen = False
        for i, pattern in enumerate(patterns):
            if any(_matches(pattern, p) for p in prefixes):
                used[i] = frozen = True
        labels.append("frozen" if frozen else "trainable")
    for pattern, hit in zip(patterns, used, strict=True):
        if not hit:
            raise _no_match(pattern, sorted({p for prefixes in paths for p in prefixes}))
    return optax.multi_transform(
        {"trainable": optimizer, "frozen": optax.set_to_zero()},
        jax.tree_util.tree_unflatten(treedef, labels),
    )
