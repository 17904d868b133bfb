"""Stacks of identical blocks: unrolled with per-block remat, or stacked in one scan.

``TransformerLM`` runs its blocks with these; its ``scan_blocks`` and ``remat`` options
are their public face. ``Checkpointed`` keeps the block's params and errors unchanged;
this module's ``Repeat`` is ``jnn.Repeat`` that can also decode with a KV cache, and
has its name so that summaries and errors call it what the docs do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jnn import _combinators
from jnn._combinators import remat_block
from jnn._errors import LayerError, ParamsError, layer_name
from jnn._module import Module, Params, State

__all__ = ["Checkpointed", "Repeat", "stack_params", "unstack_params"]


class Checkpointed(Module):
    """``block``, with its activations recomputed in the backward pass.

    The params, state and errors are the block's own; ``remat`` is ``True`` or a policy
    from ``jax.checkpoint_policies``.
    """

    block: Module
    remat: bool | Callable = True

    def layer_name(self) -> str:
        return self.block.layer_name()

    def wrapped_model(self) -> Module:
        """The block, whose params are this layer's (``summary`` lists its layers)."""
        return self.block

    def summary_kind(self) -> str:
        return f"{type(self.block).__name__} (remat)"

    def init_with_state(self, key: jax.Array, x: Any) -> tuple[Params, State]:
        return self.block.init_with_state(key, x)

    def apply(self, params, x, *, state=None, key=None, is_training=False):
        if state is None:

            def run(params, x, key):
                return self.block.apply(params, x, key=key, is_training=is_training)

            return remat_block(run, self.remat)(params, x, key), None

        def run_with_state(params, state, x, key):
            return self.block.apply(params, x, state=state, key=key, is_training=is_training)

        return remat_block(run_with_state, self.remat)(params, state, x, key)


class Repeat(_combinators.Repeat):
    """``jnn.Repeat``, whose blocks can also decode with a KV cache stacked like the params.

    ``apply(params, x, cache=cache)`` scans over the blocks' params and their caches
    together (each leaf of ``cache`` has a leading axis of ``count``) and returns
    ``(y, new_cache)``.
    """

    def init_with_state(self, key: jax.Array, x: Any) -> tuple[Params, State]:
        # Only x: apply's cache has no say in the params.
        return _combinators.Repeat._raw_init_with_state(self, key, x)

    def apply(self, params, x, *, state=None, key=None, is_training=False, cache=None):
        if cache is None:
            return _combinators.Repeat._raw_apply(
                self, params, x, state=state, key=key, is_training=is_training
            )

        def body(h, layer):
            p, s, c, i = layer
            k = None if key is None else jax.random.fold_in(key, i)
            if s is None:
                y, c = self.block.apply(p, h, cache=c, key=k, is_training=is_training)
            else:
                (y, c), s = self.block.apply(p, h, state=s, cache=c, key=k, is_training=is_training)
            return y, (s, c)

        layers = (params, state, cache, jnp.arange(self.count))
        try:
            y, (new_state, new_cache) = jax.lax.scan(body, x, layers)
        except LayerError as error:
            error.path.insert(0, "block")
            raise
        return (y, new_cache), new_state


def _check_names(owner: Any, params: Any, names: Sequence[str], what: str) -> None:
    missing = [n for n in names if not isinstance(params, Mapping) or n not in params]
    if missing:
        got = sorted(params) if isinstance(params, Mapping) else type(params).__name__
        raise ParamsError(layer_name(owner), f"expected {what} with {missing}, got {got}.")


def stack_params(owner: Any, params: Params, names: Sequence[str], stacked: str) -> Params:
    """``params`` with the entries ``names`` replaced by one entry ``stacked`` holding
    them stacked along a new leading axis, where the first of them was."""
    _check_names(owner, params, names, "unrolled params")
    trees = [params[n] for n in names]
    structures = {jax.tree.structure(t) for t in trees}
    if len(structures) > 1:
        raise ParamsError(
            layer_name(owner), f"cannot stack {list(names)}: their params differ in structure."
        )
    merged = jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)
    out = {}
    for name, value in params.items():
        if name == names[0]:
            out[stacked] = merged
        elif name not in names:
            out[name] = value
    return out


def unstack_params(owner: Any, params: Params, names: Sequence[str], stacked: str) -> Params:
    """The inverse of ``stack_params``: entry ``stacked`` split into ``names``."""
    _check_names(owner, params, [stacked], "stacked params")
    leaves = jax.tree.leaves(params[stacked])
    shapes = sorted({tuple(jnp.shape(leaf))[:1] for leaf in leaves})
    if shapes and shapes != [(len(names),)]:
        raise ParamsError(
            layer_name(owner),
            f"expected every leaf of params['{stacked}'] to have a leading axis of "
            f"{len(names)} (one per block), got leading shapes {shapes}.",
        )
    out = {}
    for name, value in params.items():
        if name != stacked:
            out[name] = value
            continue
        for i, block in enumerate(names):
            out[block] = jax.tree.map(lambda a, i=i: a[i], value)
    return out
