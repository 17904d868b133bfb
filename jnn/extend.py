"""Tools for writing layers: the checks and helpers jnn's own layers use.

A layer author imports from here; a model user never needs to::

    from jnn.extend import check_rank, check_floating

    class Scale(jnn.Module):
        def init(self, key, x):
            check_floating(self, x)
            return {"scale": jnp.ones(x.shape[-1:], x.dtype)}

        def apply(self, params, x):
            check_rank(self, x, min_rank=1)
            return x * params["scale"]

Every check names the layer (pass ``self``), says what was expected and what arrived,
and reads only static shapes and dtypes, so it costs nothing under ``jit``.
"""

from jnn._checks import (
    check_at_run_time,
    check_floating,
    check_integer,
    check_key,
    check_params_leaves,
    check_positive_int,
    check_rank,
    check_values,
    is_apply_check,
    is_concrete,
    raise_at_run_time,
)
from jnn._errors import layer_name
from jnn._module import Shape
from jnn._scope import child_key, spec

__all__ = [
    "check_rank",
    "check_floating",
    "check_integer",
    "check_positive_int",
    "check_key",
    "check_params_leaves",
    "is_concrete",
    "is_apply_check",
    "check_values",
    "check_at_run_time",
    "raise_at_run_time",
    "child_key",
    "layer_name",
    "spec",
    "Shape",
]
