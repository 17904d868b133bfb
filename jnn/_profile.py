"""See where a step function spends its time: tracing, compiling, dispatching, running."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["StepProfile", "profile_step"]


class StepProfile(NamedTuple):
    """Timings of one step function, in seconds (medians over the timed calls)."""

    trace: float
    """Python tracing of the function into a jaxpr (where library overhead shows)."""
    lower: float
    """Lowering the jaxpr to StableHLO."""
    compile: float
    """XLA compilation."""
    dispatch: float
    """Host time until a call returns, before its result is ready (asynchronous dispatch)."""
    run: float
    """Time from the call until the result is ready: dispatch plus device execution."""
    flops: float | None
    """Floating-point operations per call, as XLA's cost analysis estimates them."""

    def __str__(self) -> str:
        rate = "" if not self.flops else f", {self.flops / self.run / 1e9:.1f} GFLOP/s"
        return (
            f"trace {self.trace * 1e3:.1f} ms, lower {self.lower * 1e3:.1f} ms, "
            f"compile {self.compile * 1e3:.1f} ms; per call: dispatch "
            f"{self.dispatch * 1e6:.0f} us, run {self.run * 1e6:.0f} us{rate}"
        )


def profile_step(step: Callable, *args: Any, repeats: int = 50, warmup: int = 3) -> StepProfile:
    """Time the stages of ``step(*args)`` separately.

    ``step`` may be a plain function or a ``jax.jit``-wrapped one (its donation settings
    are kept). The arguments are copied before each timed call, so a step that donates
    its buffers can be profiled with the same arguments over and over; the copies are
    not timed.

    Args:
      step: The function to profile.
      *args: Its arguments.
      repeats: Timed calls.
      warmup: Untimed calls first (at least one).

    Returns:
      A ``StepProfile``; ``print`` it for a one-line summary.

    Examples:
      >>> import jax, jax.numpy as jnp, jnn
      >>> profile = jnn.profile_step(lambda x: jnp.sin(x) @ x, jnp.ones((64, 64)), repeats=5)
      >>> profile.compile > 0 and profile.run > 0
      True
    """
    if not callable(step):
        raise TypeError(
            f"profile_step: expected the step function first, got {type(step).__name__}. "
            "Hint: jnn.profile_step(step, *args)."
        )
    jitted = step if hasattr(step, "trace") else jax.jit(step)
    start = time.perf_counter()
    traced = jitted.trace(*args)
    traced_at = time.perf_counter()
    lowered = traced.lower()
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    compiled_at = time.perf_counter()
    flops = None
    try:
        analysis = compiled.cost_analysis()
        if isinstance(analysis, list | tuple):
            analysis = analysis[0] if analysis else {}
        flops = float(analysis.get("flops", 0.0)) or None
    except Exception:  # cost analysis is optional on some backends
        flops = None

    def fresh():
        return jax.block_until_ready(
            jax.tree.map(lambda a: jnp.copy(a) if isinstance(a, jax.Array) else a, args)
        )

    # Timed calls go through the jitted function itself, cache lookup and all, as a
    # user's calls do; the ahead-of-time compile above does not fill jit's cache, so the
    # warm-up (at least one call) does.
    for _ in range(max(1, warmup)):
        jax.block_until_ready(jitted(*fresh()))
    dispatch, run = [], []
    for _ in range(repeats):
        inputs = fresh()
        t0 = time.perf_counter()
        out = jitted(*inputs)
        t1 = time.perf_counter()
        jax.block_until_ready(out)
        t2 = time.perf_counter()
        dispatch.append(t1 - t0)
        run.append(t2 - t0)
    return StepProfile(
        trace=traced_at - start,
        lower=lowered_at - traced_at,
        compile=compiled_at - lowered_at,
        dispatch=float(np.median(dispatch)),
        run=float(np.median(run)),
        flops=flops,
    )
