"""The compiled programs behind ``fit``: a guarded step, and two ways to run many of them.

* **device** mode keeps the data on the device and runs ``n`` steps in one XLA program
  (``lax.fori_loop``, or a fully unrolled ``lax.scan``), gathering each batch with the
  epoch's permutation inside the program: no Python between steps.
* **host** mode runs one compiled step per batch, gathering batches on the host while the
  previous step runs (dispatch is asynchronous), for data that does not fit on the device.

Both run the same guarded step, so they give the same numbers bit for bit. The guard
keeps a ``Tally`` of the epoch on the device: sums of the logs, how many steps counted,
and the first step whose loss or gradients were not finite. Nothing goes back to the
host per step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jnn._train_state import TrainState, epoch_key

__all__ = ["NonFiniteError"]

CAUSES = ("", "inputs", "loss", "gradients")


class NonFiniteError(FloatingPointError):
    """Training produced a non-finite loss or gradient; raised by ``fit``.

    Attributes:
      epoch: The epoch (from 1) of the first non-finite step.
      step: That step's index (``TrainState.step`` before it, from 0).
      cause: ``"inputs"``, ``"loss"`` or ``"gradients"``: the first stage that was not
        finite, in the order a step computes them.
      train_state: The last finite ``TrainState``, from just before that step.
      history: The history of the epochs completed before it.
    """

    def __init__(self, epoch: int, step: int, cause: str, train_state: Any, history: dict):
        self.epoch, self.step, self.cause = epoch, step, cause
        self.train_state, self.history = train_state, history
        hints = {
            "inputs": "the batch's inputs hold NaN or inf; clean the data (np.isfinite) "
            "before training.",
            "loss": "the loss overflowed or took the log of 0; lower the learning rate, "
            "or check the loss gets the kind of outputs it expects (logits or probabilities).",
            "gradients": "the loss was finite but its gradients were not; lower the learning "
            "rate or clip them (optax.clip_by_global_norm).",
        }
        super().__init__(
            f"fit: the {cause} went non-finite at step {step} (epoch {epoch}); training "
            f"stopped, and error.train_state holds the last finite state. Hint: {hints[cause]} "
            "To skip such steps instead, pass on_nonfinite='skip'."
        )


class Tally(NamedTuple):
    """One epoch's running totals, carried on the device through the steps.

    Two arrays rather than one per number: every argument of a compiled call costs
    dispatch time, which is what a small model's step is made of in host mode.
    """

    sums: jax.Array  # float32[logs]: sums of the counted steps' logs, in sorted name order
    counts: jax.Array  # int32[4]: steps counted, steps skipped, first bad step (-1), cause

    @property
    def count(self) -> jax.Array:
        return self.counts[..., 0]

    @property
    def skipped(self) -> jax.Array:
        return self.counts[..., 1]

    @property
    def first_bad(self) -> jax.Array:
        """``TrainState.step`` of the first non-finite step, or -1."""
        return self.counts[..., 2]

    @property
    def cause(self) -> jax.Array:
        """Index into ``CAUSES`` of that step's first non-finite stage."""
        return self.counts[..., 3]


def empty_tally(log_names: list[str]) -> Tally:
    return Tally(jnp.zeros(len(log_names), jnp.float32), jnp.array([0, 0, -1, 0], jnp.int32))


def guarded(core: Callable, policy: str) -> Callable:
    """Wrap ``core(ts, batch) -> (ts, logs, finite)`` as ``(ts, tally, batch) -> (ts, tally)``.

    A step whose loss or gradients are not finite leaves params, optimizer state and
    model state as they were. ``"raise"`` then freezes the run (the step count too) until
    the host sees ``first_bad`` and raises; ``"skip"`` counts it and goes on.
    """

    def step(ts: TrainState, tally: Tally, batch: Any) -> tuple[TrainState, Tally]:
        new, logs, finite = core(ts, batch)
        bad = ~(finite.loss & finite.grads)
        cause = jnp.where(~finite.inputs, 1, jnp.where(~finite.loss, 2, 3)).astype(jnp.int32)
        fresh = tally.first_bad < 0
        accept = ~bad & fresh if policy == "raise" else ~bad

        def keep(a, b):
            return jax.tree.map(lambda x, y: jnp.where(accept, x, y), a, b)

        if policy == "raise":
            count_step = jnp.where(accept, new.step, ts.step)
        else:
            count_step = new.step
        out = TrainState(
            keep(new.params, ts.params),
            keep(new.opt_state, ts.opt_state),
            keep(new.model_state, ts.model_state),
            count_step,
            ts.key,
        )
        first = fresh & bad
        values = jnp.stack([logs[k].astype(jnp.float32) for k in sorted(logs)])
        counts = jnp.stack(
            [
                tally.count + accept.astype(jnp.int32),
                tally.skipped + (bad & (policy == "skip")).astype(jnp.int32),
                jnp.where(first, ts.step, tally.first_bad),
                jnp.where(first, cause, tally.cause),
            ]
        )
        tally = Tally(tally.sums + jnp.where(accept, values, 0), counts)
        return out, tally

    return step


def gather(data: Any, index: Any) -> Any:
    return jax.tree.map(lambda a: jnp.take(a, index, axis=0), data)


class Programs:
    """The jit-compiled programs of one ``fit`` call (compiled on first use)."""

    def __init__(
        self, core: Callable, policy: str, batch_size: int, population: bool, shuffle: bool
    ):
        step = guarded(core, policy)
        self.batch_size = batch_size

        def run(ts, tally, data, order, start, n):
            def body(i, carry):
                index = jax.lax.dynamic_slice_in_dim(order, (start + i) * batch_size, batch_size)
                return step(*carry, gather(data, index))

            return jax.lax.fori_loop(0, n, body, (ts, tally))

        def run_unrolled(ts, tally, data, order, start, n):
            def body(carry, i):
                index = jax.lax.dynamic_slice_in_dim(order, (start + i) * batch_size, batch_size)
                return step(*carry, gather(data, index)), None

            carry, _ = jax.lax.scan(body, (ts, tally), jnp.arange(n), unroll=True)
            return carry

        def orders(key, epoch, n):
            if not shuffle:
                return jnp.arange(n, dtype=jnp.int32)
            return jax.random.permutation(epoch_key(key, epoch), n).astype(jnp.int32)

        host_step = step
        if population:
            host_step = jax.vmap(step, in_axes=(0, 0, 0))  # each member gets its own batch
            run = jax.vmap(run, in_axes=(0, 0, None, 0, None, None))
            run_unrolled = jax.vmap(run_unrolled, in_axes=(0, 0, None, 0, None, None))
            orders = jax.vmap(orders, in_axes=(0, None, None))
        self.step = jax.jit(host_step, donate_argnums=(0, 1))
        self.run = jax.jit(run, donate_argnums=(0, 1))
        self.run_unrolled = jax.jit(run_unrolled, donate_argnums=(0, 1), static_argnums=(5,))
        self.orders = jax.jit(orders, static_argnums=(2,))
        self.population = population

    def host_batch(self, data: Any, order: np.ndarray, start: int, stop: int) -> Any:
        """The batch of positions ``[start, stop)`` of the epoch, gathered on the host."""
        index = order[..., start:stop]  # [B], or [K, B] for a population: one batch each
        return jax.tree.map(lambda a: a[index], data)

    def device_steps(self, ts, tally, data, order, start: int, n: int, unroll: bool):
        if unroll:
            return self.run_unrolled(ts, tally, data, order, start, n)
        return self.run(ts, tally, data, order, start, n)


def copy(tree: Any) -> Any:
    return jax.tree.map(lambda a: a.copy() if hasattr(a, "copy") else a, tree)


SLOW_STEP = 0.02  # seconds: against a step this long, per-step dispatch (tens of
# microseconds) is noise, and compiling steps together cannot pay for its measurement


def measure(programs: Programs, ts, tally, host_data, device_data, order, steps: int) -> dict:
    """Seconds per step of host mode and, if worth it, device mode, run on copies.

    Each mode first runs (and compiles) once, then two steps are timed. Host mode alone
    is measured when its step takes over ``SLOW_STEP``; device mode stops there when it
    is clearly slower. Otherwise both are timed over ``steps`` steps, the best of two
    runs counting, so one hiccup of a busy machine does not decide.
    """
    host_order = np.asarray(order)
    bs = programs.batch_size

    def host(n):
        s, t = copy(ts), copy(tally)
        jax.block_until_ready((s, t))
        begin = time.perf_counter()
        for i in range(n):
            batch = programs.host_batch(host_data, host_order, i * bs, (i + 1) * bs)
            s, t = programs.step(s, t, batch)
        jax.block_until_ready(t)
        return time.perf_counter() - begin

    def device(n):
        s, t = copy(ts), copy(tally)
        jax.block_until_ready((s, t))
        begin = time.perf_counter()
        jax.block_until_ready(programs.run(s, t, device_data, order, 0, n))
        return time.perf_counter() - begin

    host(1)  # compiles
    timings = {"host": host(2) / 2}
    if timings["host"] > SLOW_STEP:
        return timings
    device(1)
    timings["device"] = device(2) / 2
    if timings["device"] > 1.5 * timings["host"]:
        return timings  # clearly slower (a loop body XLA runs badly): no more slow steps
    for mode, fn in (("host", host), ("device", device)):
        timings[mode] = min(fn(steps), fn(steps)) / steps
    return timings
