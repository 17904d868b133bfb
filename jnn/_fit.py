"""``fit``: the whole training loop over a ``TrainState``: shuffled epochs run as compiled
chunks or step by step, a guard against non-finite values, evaluation, early stopping,
callbacks, checkpoints and resume, and populations of runs."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import numpy as np
import optax
from jax.sharding import Mesh

from jnn._batching import check_bool, check_pair, count_examples
from jnn._callbacks import as_callbacks
from jnn._checks import check_params_leaves, check_positive_int
from jnn._early_stopping import EarlyStopping, check_early_stopping
from jnn._epochs import EpochRunner
from jnn._fit_support import ProgressBar, Resume, choose_mode, epoch_logs, evaluate_state
from jnn._loops import Layout, Programs, copy, empty_tally
from jnn._module import Module, Params, State
from jnn._sharding import axis_size, checked_batch_sharding, on_mesh
from jnn._step import pure_step
from jnn._train_checks import (
    Batch,
    LossFn,
    MetricFns,
    as_typed_key,
    check_loss_fn,
    check_metrics,
    check_model,
    check_optimizer,
)
from jnn._train_state import TrainState

__all__ = ["fit", "FitResult"]


class FitResult(NamedTuple):
    """What ``fit`` returns: the final train state, the history and how it ran."""

    train_state: TrainState
    """The train state after the last epoch (with the best epoch's params and model
    state when early stopping restored them)."""
    history: dict[str, list]
    """Per-epoch values: ``loss`` and metrics (means over the epoch's steps), ``eval_*``
    on ``eval_data``, ``skipped`` steps with ``on_nonfinite='skip'``. For a population
    each value is a list with one number per member."""
    info: dict
    """How the run went: ``mode`` (``"device"`` or ``"host"``), ``steps_per_call``,
    ``seconds_per_step`` as measured when the mode was chosen, ``reason``,
    ``initial_epoch`` (above 0 when resumed), ``stopped_early``, ``best_epoch``."""

    @property
    def params(self) -> Params:
        return self.train_state.params

    @property
    def opt_state(self) -> Any:
        return self.train_state.opt_state

    @property
    def model_state(self) -> State:
        return self.train_state.model_state

    @property
    def state(self) -> State | None:
        """The model state, or ``None`` for a stateless model (the name before TrainState)."""
        return self.train_state.model_state or None


def fit(
    model: Module,
    train_state: TrainState | Params,
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    train_data: Batch,
    *,
    epochs: int = 1,
    batch_size: int = 32,
    eval_data: Batch | None = None,
    metrics: MetricFns | None = None,
    shuffle: bool = True,
    drop_last: bool = True,
    steps_per_call: int | str = "auto",
    unroll: bool = False,
    on_nonfinite: str = "raise",
    early_stopping: EarlyStopping | None = None,
    callbacks: Any = None,
    checkpoints: Any = None,
    resume: bool = True,
    population: bool = False,
    progress: bool = True,
    mesh: Mesh | None = None,
    batch_axis: str | tuple[str, ...] = "data",
    key: jax.Array | None = None,
    state: State | None = None,
    opt_state: Any = None,
) -> FitResult:
    """Train for ``epochs`` passes over ``train_data``, starting from ``train_state``.

    Each epoch visits the data in an order drawn by NumPy from the key data of
    ``epoch_key(train_state.key, epoch)`` (the stored order with ``shuffle=False``),
    one batch per step; each step gets
    ``step_key(train_state.key, step)`` for stochastic layers. Training metrics are
    averaged over the epoch's steps, and ``eval_data`` is evaluated after each epoch.

    **Two modes, the same numbers.** In device mode the data are copied to the device
    once and ``steps_per_call`` steps run as one XLA program, batches gathered on the
    device: a small model pays no per-step Python. In host mode each step is one call,
    and the next batch is gathered while the current step runs, for data too large for
    the device. ``steps_per_call="auto"`` (the default) takes device mode, with chunks
    sized from their own timing to about a quarter second, except on a CPU for a model
    that convolves: XLA runs convolution gradients inside a compiled loop far more slowly
    than alone (jax-ml/jax#12868), so host mode. It decides from the step's lowered
    program, without timing anything. ``"measure"`` instead compiles and times both
    modes on copies of the state and takes the faster (a second or so on a small model).
    ``1`` forces host mode, a larger int device mode with that many steps per call.
    ``result.info`` says what was chosen and why. Both modes give bit-identical results
    on CPU with XLA's default flags (an unrolled chunk agrees to rounding: XLA may fuse
    its straight-line steps differently).

    **Non-finite values.** Each step checks on the device whether its inputs, loss and
    gradients are finite; the host looks once per chunk (host mode: every 64 steps).
    With ``on_nonfinite="raise"`` (the default) ``fit`` then stops with a
    ``jnn.NonFiniteError`` naming the epoch, the step and whether the inputs, the loss
    or the gradients went non-finite first; ``error.train_state`` is the last finite
    state, recovered by running the steps before the bad one again from a copy taken
    at the chunk's start (so this costs the memory of one more train state, and no
    time per step). With ``"skip"`` such steps leave the state as it was (a select per
    parameter, every step), training goes on, and ``history["skipped"]`` counts them.

    Args:
      model: The model.
      train_state: A ``jnn.TrainState`` (``jnn.init_train_state``); it is copied, so it
        stays valid. Plain params are accepted too (the form before ``TrainState``):
        then ``key`` is required, and ``state``/``opt_state`` may be given.
      loss_fn: ``loss_fn(outputs, targets) -> scalar``.
      optimizer: The optax gradient transformation the state was made with.
      train_data: ``(inputs, targets)`` arrays with a shared leading axis.
      epochs: The total number of epochs, a positive int (a resumed run counts the
        epochs already done).
      batch_size: Examples per step, a positive int.
      eval_data: Optional ``(inputs, targets)``, evaluated after each epoch.
      metrics: Functions ``metric(outputs, targets)`` reported by name.
      shuffle: Visit the data in a new random order every epoch.
      drop_last: Skip each epoch's last incomplete batch (one compiled shape).
      steps_per_call: ``"auto"``, ``"measure"``, or the steps per compiled call (1:
        host mode).
      unroll: In device mode, unroll the steps of a call instead of looping. XLA on CPU
        runs convolution gradients inside a loop body slowly (jax-ml/jax#12868);
        unrolling avoids that at a compile time that grows with ``steps_per_call``.
      on_nonfinite: ``"raise"`` or ``"skip"``.
      early_stopping: A ``jnn.EarlyStopping`` to stop when a metric stops improving.
      callbacks: A ``jnn.Callback``, a function ``f(epoch, logs, train_state)``, or a
        list of them, called after each epoch (return ``True`` to stop).
      checkpoints: A directory (or a ``jnn.CheckpointManager``) to save the run to after
        every epoch: the train state, the history and the early-stopping status.
      resume: With ``checkpoints``, continue from the latest checkpoint there if any.
      population: ``train_state`` holds a population of runs stacked on a leading axis
        (``jax.vmap`` of ``init_train_state``); they train as one program, each with
        its own shuffle, and every history value has one entry per member.
      progress: Show a progress bar (``tqdm.auto``).
      mesh: Train on the devices of this ``jax.sharding.Mesh`` (``jnn.make_mesh``):
        each batch is split over ``batch_axis`` (data parallelism), and the train state
        keeps the layout it was given on ``mesh`` (``jnn.shard`` with tensor-parallel
        rules, ``jnn.fully_sharded``); leaves not yet on ``mesh`` are replicated. Every
        compiled step returns the state in that layout. ``batch_size`` must be a multiple
        of the devices along ``batch_axis``. In device mode every device holds a copy of
        ``train_data``; in host mode each receives only its share of each batch. One
        process only: for several, see ``jnn.shard_batch``.
      batch_axis: The mesh axis (or axes) the batches are split over, with ``mesh``.
      key: Only with plain params: the run's PRNG key.
      state: Only with plain params: the model state.
      opt_state: Only with plain params: the optimizer state to resume from.

    Returns:
      ``FitResult(train_state, history, info)``; ``.params``, ``.model_state`` and
      ``.opt_state`` read the train state.

    Raises:
      TypeError, ValueError: Before training, for arguments of the wrong kind or value.
      NonFiniteError: With ``on_nonfinite="raise"``, when a step goes non-finite.
      CheckpointError: When resuming from a checkpoint of a different model or run.
    """
    name = "fit"
    check_model(name, model)
    check_loss_fn(name, loss_fn)
    check_optimizer(name, optimizer)
    ts = _train_state(name, train_state, optimizer, key, state, opt_state)
    check_pair(name, train_data, "train_data")
    n = count_examples(name, train_data, "train_data")
    for what, value in (("epochs", epochs), ("batch_size", batch_size)):
        check_positive_int(name, what, value)
    epochs, batch_size = int(epochs), int(batch_size)
    if eval_data is not None:
        check_pair(name, eval_data, "eval_data")
        count_examples(name, eval_data, "eval_data")
    metrics = check_metrics(name, metrics)
    for what, value in (("shuffle", shuffle), ("drop_last", drop_last), ("unroll", unroll)):
        check_bool(name, what, value)
    for what, value in (("resume", resume), ("population", population), ("progress", progress)):
        check_bool(name, what, value)
    if steps_per_call not in ("auto", "measure"):
        if isinstance(steps_per_call, str):
            raise ValueError(
                f"{name}: steps_per_call must be 'auto', 'measure' or a positive int, got "
                f"{steps_per_call!r}."
            )
        check_positive_int(name, "steps_per_call", steps_per_call)
    if on_nonfinite not in ("raise", "skip"):
        raise ValueError(f"{name}: on_nonfinite must be 'raise' or 'skip', got {on_nonfinite!r}.")
    names = {"loss", *metrics} | ({"skipped"} if on_nonfinite == "skip" else set())
    if eval_data is not None:
        names |= {"eval_loss"} | {f"eval_{k}" for k in metrics}
    check_early_stopping(name, early_stopping, names)
    if population and early_stopping is not None:
        raise ValueError(f"{name}: early_stopping stops one run; it cannot stop a population.")
    callbacks = as_callbacks(name, callbacks)
    members = _population_size(name, ts) if population else None
    layout = None
    if mesh is not None:
        ts, layout = _place(name, ts, mesh, batch_axis, batch_size, population)
    full = n // batch_size
    tail = 0 if drop_last else n - full * batch_size
    if full == 0 and drop_last:
        raise ValueError(
            f"{name}: {n} examples give no full batch of {batch_size}; lower batch_size "
            "or pass drop_last=False."
        )
    if layout is not None and tail % layout.devices:
        raise ValueError(
            f"{name}: the last batch of each epoch would hold {tail} examples, which the "
            f"{layout.devices} devices of mesh axis {batch_axis!r} cannot split evenly. "
            "Hint: pass drop_last=True, or use a number of examples that is a multiple of "
            f"{layout.devices}."
        )

    host_data = jax.tree.map(np.asarray, train_data)
    setup = (model, loss_fn, optimizer, tuple(sorted(metrics.items())))
    setup += (on_nonfinite, batch_size, population, shuffle, layout)
    try:  # a second fit of the same setup reuses the compiled programs
        core, programs = _programs(*setup)
    except TypeError:  # an unhashable hyperparameter somewhere: build them afresh
        core, programs = _programs.__wrapped__(*setup)
    log_names = sorted(["loss", *metrics])  # the step's logs, in the order it stacks them
    tally0 = empty_tally(log_names, members)

    resumed = Resume.start(name, checkpoints, resume, ts, early_stopping, batch_size, n)
    ts, history, initial_epoch = resumed.train_state, resumed.history, resumed.epoch
    info = {"initial_epoch": initial_epoch, "stopped_early": resumed.stopped, "best_epoch": None}
    if initial_epoch >= epochs or resumed.stopped:
        return FitResult(resumed.finish(ts), history, info | {"mode": None})

    order = programs.orders(ts.key, initial_epoch, n)
    mode, chunk, timings, reason = choose_mode(
        programs, steps_per_call, ts, tally0, host_data, order, full, unroll
    )
    info.update(mode=mode, steps_per_call=chunk, seconds_per_step=timings, reason=reason)
    runner = EpochRunner(programs, mode, chunk, unroll, on_nonfinite)
    runner.setup(host_data, n, full, tail, np.asarray(ts.step))
    steps_per_epoch = full + (tail > 0)
    bar = ProgressBar(progress, (epochs - initial_epoch) * steps_per_epoch, info)
    for callback in callbacks:
        callback.on_train_begin(
            dict(info, epochs=epochs, steps_per_epoch=steps_per_epoch, population=members)
        )
    stop = False
    try:
        for epoch in range(initial_epoch, epochs):
            if epoch > initial_epoch:
                order = programs.orders(ts.key, epoch, n)
            ts, tally = runner.run(ts, tally0, order, epoch, history, bar)
            logs = epoch_logs(tally, log_names, on_nonfinite)
            if eval_data is not None:
                logs |= evaluate_state(model, ts, eval_data, loss_fn, metrics, population)
            for key_, value in logs.items():
                history.setdefault(key_, []).append(value)
            stop = resumed.track(epoch, logs, ts)
            for callback in callbacks:
                stop = bool(callback.on_epoch_end(epoch + 1, logs, ts)) or stop
            resumed.save(epoch, ts, history, logs, stop)
            bar.epoch_done(epoch + 1, epochs, logs)
            if stop:
                break
    finally:
        bar.close()
    info.update(stopped_early=stop, best_epoch=resumed.best_epoch)
    if info["steps_per_call"] is None:  # adaptive chunks: the size they settled on
        info["steps_per_call"] = runner.last_chunk
    ts = resumed.finish(ts)
    for callback in callbacks:
        callback.on_train_end(history)
    return FitResult(ts, history, info)


def _train_state(name, train_state, optimizer, key, state, opt_state) -> TrainState:
    """The caller's train state, copied; plain params are wrapped (the earlier form)."""
    if isinstance(train_state, TrainState):
        for what, value in (("key", key), ("state", state), ("opt_state", opt_state)):
            if value is not None:
                raise TypeError(
                    f"{name}: {what}= goes with plain params; a TrainState already holds it "
                    f"(train_state.{'model_state' if what == 'state' else what})."
                )
        check_params_leaves(name, train_state.params)
        return copy(train_state)
    check_params_leaves(name, train_state)
    if key is None:
        raise TypeError(
            f"{name}: expected a jnn.TrainState, or params with key=. Hint: "
            "train_state = jnn.init_train_state(model, optimizer, key, x_sample)."
        )
    key = as_typed_key(name, key)
    ts = TrainState.create(copy(train_state), optimizer, key=key, model_state=copy(state))
    return ts if opt_state is None else ts._replace(opt_state=copy(opt_state))


def _population_size(name: str, ts: TrainState) -> int:
    sizes = {int(np.shape(leaf)[0]) if np.ndim(leaf) else None for leaf in jax.tree.leaves(ts)}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            f"{name}: population=True expects every leaf of the train state to have the same "
            f"leading (member) axis, got leading sizes {sorted(map(str, sizes))}. Hint: "
            "jax.vmap(lambda k: jnn.init_train_state(model, optimizer, k, x))(keys)."
        )
    return sizes.pop()


def _place(name, ts, mesh, batch_axis, batch_size, population):
    """The train state on ``mesh`` and the ``Layout`` of the run's programs."""
    if not isinstance(mesh, Mesh):
        raise TypeError(
            f"{name}: expected mesh to be a jax.sharding.Mesh (jnn.make_mesh), got "
            f"{type(mesh).__name__}."
        )
    if population:
        raise ValueError(f"{name}: mesh= and population=True cannot be combined.")
    if jax.process_count() > 1:
        raise ValueError(
            f"{name}: mesh= trains in one process, and this is one of "
            f"{jax.process_count()}. Hint: in a multi-process run build each global batch "
            "with jnn.shard_batch and step with jnn.make_train_step."
        )
    batches = checked_batch_sharding(name, mesh, batch_axis)
    devices = axis_size(mesh, batch_axis)
    if batch_size % devices:
        raise ValueError(
            f"{name}: batch_size {batch_size} cannot be split evenly over the {devices} "
            f"devices of mesh axis {batch_axis!r}. Hint: use a multiple of {devices}."
        )
    shardings = on_mesh(ts, mesh)
    leaves, treedef = jax.tree.flatten(shardings)
    return jax.device_put(ts, shardings), Layout(treedef, tuple(leaves), batches, devices)


@functools.lru_cache(maxsize=8)
def _programs(model, loss_fn, optimizer, metrics, policy, batch_size, population, shuffle, layout):
    core = pure_step("fit", model, loss_fn, optimizer, dict(metrics))
    return core, Programs(core, policy, batch_size, population, shuffle, layout)
