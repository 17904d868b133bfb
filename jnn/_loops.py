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

import functools
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

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


def empty_tally(log_names: list[str], members: int | None = None) -> Tally:
    """A host (NumPy) tally with nothing counted; ``[K, ...]`` for a population."""
    lead = () if members is None else (members,)
    counts = np.broadcast_to(np.array([0, 0, -1, 0], np.int32), (*lead, 4))
    return Tally(np.zeros((*lead, len(log_names)), np.float32), counts.copy())


def flagged(core: Callable, policy: str) -> Callable:
    """Wrap ``core(ts, batch) -> (ts, logs, finite)`` as ``(ts, batch) -> (ts, values, code)``.

    ``values`` is float32 ``[logs]`` in sorted name order; ``code`` is 0 for a finite
    step, else the index into ``CAUSES`` of the first stage (inputs, loss, gradients)
    that was not finite. ``"skip"`` keeps params, optimizer state and model state as
    they were on such a step (a select per leaf, every step). ``"raise"`` costs no
    select: the run goes on, and when the host sees the flag it replays the steps before
    it from a copy (``EpochRunner``), so its per-step cost is the finiteness checks.
    """

    def step(ts: TrainState, batch: Any) -> tuple[TrainState, jax.Array, jax.Array]:
        new, logs, finite = core(ts, batch)
        bad = ~(finite.loss & finite.grads)
        cause = jnp.where(~finite.inputs, 1, jnp.where(~finite.loss, 2, 3))
        code = jnp.where(bad, cause, 0).astype(jnp.int32)
        out = new
        if policy == "skip":

            def keep(a, b):
                return jax.tree.map(lambda x, y: jnp.where(bad, y, x), a, b)

            out = new._replace(
                params=keep(new.params, ts.params),
                opt_state=keep(new.opt_state, ts.opt_state),
                model_state=keep(new.model_state, ts.model_state),
                key=ts.key,
            )
        values = jnp.stack([logs[k].astype(jnp.float32) for k in sorted(logs)])
        return out, values, code

    return step


def fold(tally: Tally, step: Any, values: Any, code: Any, policy: str) -> Tally:
    """Count one step (at ``TrainState.step`` ``step``) into ``tally``, on the device
    inside a compiled loop; ``fold_window`` is the same on the host."""
    xp = jnp
    bad = code != 0
    fresh = tally.first_bad < 0
    accept = ~bad & fresh if policy == "raise" else ~bad
    first = fresh & bad
    counts = xp.stack(
        [
            tally.count + accept.astype(xp.int32),
            tally.skipped + (bad & (policy == "skip")).astype(xp.int32),
            xp.where(first, step, tally.first_bad),
            xp.where(first, code, tally.cause),
        ],
        axis=-1,
    ).astype(xp.int32)
    sums = (tally.sums + xp.where(accept[..., None], values, xp.float32(0))).astype(xp.float32)
    return Tally(sums, counts)


def fold_window(tally: Tally, first_step: Any, values: Any, codes: Any, policy: str) -> Tally:
    """``fold`` over ``k`` consecutive steps at once, in NumPy: the same counts, and sums
    added in the same order (``cumsum`` is sequential), so equal to the bit."""
    bad = codes != 0  # [k] or [k, K]
    fresh = tally.first_bad < 0
    seen = np.logical_or.accumulate(bad, axis=0)  # a bad step at or before each step
    earlier = np.concatenate([np.zeros_like(bad[:1]), seen[:-1]])
    accept = ~bad & fresh & ~earlier if policy == "raise" else ~bad
    at = np.argmax(bad, axis=0)  # the window's first bad step, where there is one
    first = fresh & bad.any(axis=0)
    code = np.take_along_axis(codes, at[None], axis=0)[0]
    counts = np.stack(
        [
            tally.count + accept.sum(axis=0),
            tally.skipped + (bad.sum(axis=0) if policy == "skip" else 0),
            np.where(first, first_step + at, tally.first_bad),
            np.where(first, code, tally.cause),
        ],
        axis=-1,
    ).astype(np.int32)
    added = np.where(accept[..., None], values, np.float32(0))
    sums = np.cumsum(np.concatenate([tally.sums[None], added]), axis=0, dtype=np.float32)[-1]
    return Tally(sums, counts)


def guarded(core: Callable, policy: str) -> Callable:
    """``(ts, tally, batch) -> (ts, tally)``: a flagged step folded into the tally."""
    step = flagged(core, policy)

    def guarded_step(ts: TrainState, tally: Tally, batch: Any) -> tuple[TrainState, Tally]:
        out, values, code = step(ts, batch)
        return out, fold(tally, ts.step, values, code, policy)

    return guarded_step


def gather(data: Any, index: Any) -> Any:
    return jax.tree.map(lambda a: jnp.take(a, index, axis=0), data)


class Layout(NamedTuple):
    """Where a ``fit`` on a mesh keeps things; hashable, so it keys the program cache."""

    treedef: Any  # of the TrainState
    state: tuple  # its leaves' NamedShardings, in treedef order
    batch: NamedSharding  # each batch: the leading axis split over the batch axis
    devices: int  # along the batch axis

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.batch.mesh, PartitionSpec())

    def jit_options(self) -> dict:
        """The state comes out as it went in; the tally or logs whole on every device."""
        state = jax.tree.unflatten(self.treedef, self.state)
        return {"out_shardings": (state, self.replicated)}


class Programs:
    """The jit-compiled programs of one ``fit`` call (compiled on first use)."""

    def __init__(
        self,
        core: Callable,
        policy: str,
        batch_size: int,
        population: bool,
        shuffle: bool,
        layout: Layout | None = None,
    ):
        step = guarded(core, policy)
        self.batch_size, self.layout = batch_size, layout

        def split(batch):  # on a mesh: each device steps on its share of the batch
            if layout is None:
                return batch
            return jax.lax.with_sharding_constraint(batch, layout.batch)

        def position(data, order, start, i, carry):  # the step at position start + i
            index = jax.lax.dynamic_slice_in_dim(order, (start + i) * batch_size, batch_size)
            return step(*carry, split(gather(data, index)))

        def run(ts, tally, data, order, start, n):
            body = functools.partial(position, data, order, start)
            return jax.lax.fori_loop(0, n, body, (ts, tally))

        def run_unrolled(ts, tally, data, order, start, n):
            def body(carry, i):
                return position(data, order, start, i, carry), None

            carry, _ = jax.lax.scan(body, (ts, tally), jnp.arange(n), unroll=True)
            return carry

        flagged_step = flagged(core, policy)
        self.core = core
        self._convolves: dict[str, bool] = {}

        def host_step(ts, batch):  # one array out beside the state: each output costs
            out, values, code = flagged_step(ts, split(batch))  # dispatch time on a small model
            return out, jnp.concatenate([values, code.astype(jnp.float32)[None]])

        if population:
            host_step = jax.vmap(host_step)  # each member gets its own batch
            run = jax.vmap(run, in_axes=(0, 0, None, 0, None, None))
            run_unrolled = jax.vmap(run_unrolled, in_axes=(0, 0, None, 0, None, None))
        placed = {} if layout is None else layout.jit_options()
        self.step = jax.jit(host_step, donate_argnums=(0,), **placed)
        self.policy = policy
        self.run = jax.jit(run, donate_argnums=(0, 1), **placed)
        self.run_unrolled = jax.jit(
            run_unrolled, donate_argnums=(0, 1), static_argnums=(5,), **placed
        )
        self.shuffle = shuffle
        self.population = population

    def orders(self, key: jax.Array, epoch: int, n: int) -> np.ndarray:
        """The order of epoch ``epoch``'s examples: int32 ``[n]``, or ``[K, n]`` for a
        population (one per member).

        The permutation is NumPy's, seeded with the key data of ``epoch_key(key, epoch)``:
        drawing it with ``jax.random.permutation`` took 1.3 ms for 1,800 examples on a
        CPU (a sort of random bits), against 0.06 ms, which on a small model is more
        than all its steps' dispatch. The data are still gathered on the device in
        device mode; only the indices come from the host.
        """
        if not self.shuffle:
            order = np.arange(n, dtype=np.int32)
            return np.stack([order] * key.shape[0]) if self.population else order
        seeds = np.asarray(_epoch_seeds(self.population)(key, epoch))

        def permutation(seed: np.ndarray) -> np.ndarray:
            return np.random.default_rng(seed.ravel().tolist()).permutation(n).astype(np.int32)

        return np.stack([permutation(s) for s in seeds]) if self.population else permutation(seeds)

    def absorb(self, tally: Tally, first_step: Any, packed: list) -> Tally:
        """Fold a host-mode window's per-step outputs into a host (NumPy) tally: one
        stacking call and one transfer per window, then ``fold`` step by step."""
        packed = jax.device_get(_stack(packed))  # [k, (K,) logs + 1]: values, then the code
        values, codes = packed[..., :-1], packed[..., -1].astype(np.int32)
        return fold_window(tally, np.asarray(first_step), values, codes, self.policy)

    def has_convolution(self, ts: TrainState, batch: Any) -> bool:
        """Whether a step convolves, read from its lowered program (traced, not compiled)."""
        signature = str(jax.eval_shape(lambda: (ts, batch)))  # shapes, dtypes, structure
        if signature not in self._convolves:  # a repeated fit of this setup lowers once
            fn = (
                (lambda s, b: self.core(s, b)[:2])
                if not self.population
                else (jax.vmap(lambda s, b: self.core(s, b)[:2]))
            )
            text = jax.jit(fn).lower(ts, batch).as_text()
            self._convolves[signature] = "convolution" in text
        return self._convolves[signature]

    def host_batch(self, data: Any, order: np.ndarray, start: int, stop: int) -> Any:
        """The batch of positions ``[start, stop)`` of the epoch, gathered on the host
        (and split over the mesh, on one)."""
        index = order[..., start:stop]  # [B], or [K, B] for a population: one batch each
        batch = jax.tree.map(lambda a: a[index], data)
        return batch if self.layout is None else jax.device_put(batch, self.layout.batch)

    def to_device(self, data: Any) -> Any:
        """Device mode's copy of the data (or an epoch's order): whole on every device."""
        return jax.device_put(data, None if self.layout is None else self.layout.replicated)

    def device_steps(self, ts, tally, data, order, start: int, n: int, unroll: bool):
        if unroll:
            return self.run_unrolled(ts, tally, data, order, start, n)
        return self.run(ts, tally, data, order, start, n)


@functools.lru_cache(maxsize=2)
def _epoch_seeds(population: bool) -> Callable:
    def seeds(key, epoch):
        return jax.random.key_data(epoch_key(key, epoch))

    return jax.jit(jax.vmap(seeds, in_axes=(0, None)) if population else seeds)


@jax.jit
def _stack(packed: list) -> jax.Array:
    return jnp.stack(packed)


def copy(tree: Any) -> Any:
    """A copy of a pytree of arrays in one dispatch (donated buffers then stay apart)."""
    return _copy(tree)


@jax.jit
def _copy(tree: Any) -> Any:
    return jax.tree.map(jnp.copy, tree)


SLOW_STEP = 0.02  # seconds: against a step this long, per-step dispatch (tens of
# microseconds) is noise, and compiling steps together cannot pay for its measurement


def measure(programs: Programs, ts, tally, host_data, device_data, order, steps: int) -> dict:
    """Seconds per step of host mode and, when worth it, of device mode, run on copies
    of the state (the best of two runs counting each time).

    Each mode compiles with one step, then two steps are timed. A host step over
    ``SLOW_STEP`` decides for host mode (``"device"`` is then ``None``), and so does a
    device step three times slower than a host step (XLA on a CPU runs some loop bodies,
    convolution gradients, far slower than the same step alone), without more slow
    steps. Otherwise both are timed over ``steps`` steps.
    """
    host_order, order = order, programs.to_device(order)
    bs = programs.batch_size

    def host(n):
        s = copy(ts)
        jax.block_until_ready(s)
        begin = time.perf_counter()
        for i in range(n):
            batch = programs.host_batch(host_data, host_order, i * bs, (i + 1) * bs)
            s, packed = programs.step(s, batch)
        jax.block_until_ready((s, packed))
        return time.perf_counter() - begin

    def device(n):
        s, t = copy(ts), copy(tally)
        jax.block_until_ready((s, t))
        begin = time.perf_counter()
        jax.block_until_ready(programs.run(s, t, device_data, order, 0, n))
        return time.perf_counter() - begin

    host(1)  # compiles
    timings = {"host": min(host(2), host(2)) / 2, "device": None}
    if timings["host"] > SLOW_STEP:
        return timings
    device(1)
    timings["device"] = min(device(2), device(2)) / 2
    if timings["device"] > 3 * timings["host"]:
        return timings  # clearly slower (a loop body XLA runs badly): no more slow steps
    for mode, fn in (("host", host), ("device", device)):
        timings[mode] = min(fn(steps), fn(steps)) / steps
    return timings
