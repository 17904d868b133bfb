"""The carry of a recurrent cell: what ``initial_carry(batch)`` makes, and the checks that
name what a given carry gets wrong (its structure, a batch or hidden size, its dtype)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jnn._errors import DTypeError, ShapeError, layer_name
from jnn._module import Shape

__all__ = ["batch_tuple", "describe_carry", "check_cell_carry", "check_carry_like"]


def batch_tuple(batch_shape: int | Shape) -> Shape:
    return (int(batch_shape),) if isinstance(batch_shape, int) else tuple(batch_shape)


def describe_carry(tree: Any) -> str:
    """A carry as a message names it: ``an array of shape (2, 4)``, ``a tuple of 2
    arrays of shapes (2, 4) and (2, 4)``, ``None``."""
    if tree is None:
        return "None"
    if isinstance(tree, tuple | list):
        kind = type(tree).__name__
        if tree and all(hasattr(t, "shape") for t in tree):
            shapes = [str(tuple(t.shape)) for t in tree]
            if len(shapes) == 1:
                return f"a {kind} of 1 array of shape {shapes[0]}"
            listed = f"{', '.join(shapes[:-1])} and {shapes[-1]}"
            return f"a {kind} of {len(tree)} arrays of shapes {listed}"
        return f"a {kind} of {len(tree)} ({', '.join(describe_carry(t) for t in tree)})"
    if hasattr(tree, "shape"):
        return f"an array of shape {tuple(jnp.shape(tree))}"
    return f"a {type(tree).__name__}"


def _structure_problem(cell: Any, carry: Any) -> tuple[str | None, tuple | None]:
    """What is wrong with ``carry``'s structure for a built-in cell, and its parts."""
    names, cell_name = cell._carry_names, type(cell).__name__
    if len(names) == 1 and hasattr(carry, "shape"):
        return None, (carry,)
    if (
        len(names) > 1
        and isinstance(carry, tuple)
        and len(carry) == len(names)
        and all(hasattr(c, "shape") for c in carry)
    ):
        return None, carry
    problem = f"got {describe_carry(carry)}"
    if len(names) > 1 and hasattr(carry, "shape"):
        problem += f" ({cell_name} carries both {' and '.join(names)})"
    elif len(names) > 1 and isinstance(carry, list) and len(carry) == len(names):
        problem += "; pass it as a tuple, tuple(carry)"
    elif len(names) == 1 and isinstance(carry, tuple | list):
        problem += f" ({cell_name} carries h alone)"
    return problem, None


def check_cell_carry(
    owner: Any, cell: Any, carry: Any, batch: Shape, context: str, what: str = "carry"
) -> None:
    """Raise ``ShapeError`` (or ``DTypeError``) naming ``owner`` unless ``carry`` is what
    the built-in ``cell.initial_carry(batch)`` makes: its structure, shapes, a float dtype.

    ``context`` says what the batch comes from (``"for input of shape (2, 3)"``).
    """
    names, shape = cell._carry_names, (*batch, cell.features)
    if len(names) == 1:
        expected = f"{what} h, an array of shape {shape}"
    else:
        expected = f"{what} ({', '.join(names)}), a tuple of {len(names)} arrays of shape {shape}"
    problem, parts = _structure_problem(cell, carry)
    for name, part in zip(names, parts, strict=True) if parts is not None else ():
        got = tuple(jnp.shape(part))
        if got == shape:
            continue
        if len(got) != len(shape) or got[:-1] != batch:
            problem = f"got {name} of shape {got}, whose batch {got[:-1]} is not {batch}"
            if got[1:] == shape:
                problem += (
                    f" (PyTorch's {name}0 is [layers * directions, batch, hidden]; "
                    f"one layer's is {name}0[0])"
                )
        else:
            problem = f"got {name} of shape {got}, whose last axis is not features={cell.features}"
        break
    if problem is not None:
        raise ShapeError(
            layer_name(owner),
            f"expected {expected} {context}; {problem}. Hint: make it with "
            f"cell.initial_carry({batch}).",
        )
    for name, part in zip(names, parts, strict=True):
        dtype = jnp.result_type(part)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise DTypeError(
                layer_name(owner),
                f"expected a floating-point {what}, got {name} of dtype {dtype}. "
                f"Hint: make it with cell.initial_carry({batch}, dtype).",
            )


def _shapes(tree: Any) -> Any:
    """Shapes of the arrays in a carry, as nested tuples (``(h, c)`` gives two shapes)."""
    if isinstance(tree, tuple | list):
        return tuple(_shapes(t) for t in tree)
    return tuple(jnp.shape(tree)) if hasattr(tree, "shape") else type(tree).__name__


def check_carry_like(
    owner: Any, cell: Any, carry: Any, batch: Shape, context: str, what: str = "carry"
) -> None:
    """``check_cell_carry`` for any cell: ``carry`` must have the tree structure and
    shapes of ``cell.initial_carry(batch)``."""
    if hasattr(cell, "_carry_names") and hasattr(cell, "features"):
        return check_cell_carry(owner, cell, carry, batch, context, what)
    expected = jax.eval_shape(lambda: cell.initial_carry(batch))
    same = jax.tree.structure(carry) == jax.tree.structure(expected) and all(
        hasattr(c, "shape") and tuple(c.shape) == tuple(e.shape)
        for c, e in zip(jax.tree.leaves(carry), jax.tree.leaves(expected), strict=True)
    )
    if not same:
        raise ShapeError(
            layer_name(owner),
            f"expected {what} of shape {_shapes(expected)} {context}, got "
            f"{describe_carry(carry)}. Hint: make it with cell.initial_carry({batch}).",
        )
