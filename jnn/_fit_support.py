"""The parts of ``fit`` around its loop: choosing the mode, the host-mode loop, the
non-finite check, epoch logs, evaluation, progress, early stopping and checkpoints."""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import numpy as np

from jnn._epochs import CHUNK_SECONDS
from jnn._loops import copy, measure
from jnn._train_state import TrainState
from jnn._training import _build_eval_step, average_logs, evaluate


def choose_mode(programs, steps_per_call, ts, tally, host_data, order, full, unroll):
    """``(mode, steps_per_call, seconds_per_step, reason)`` for this run; ``None`` steps
    per call: device mode sizes its chunks from the time they take."""
    if unroll and steps_per_call in ("auto", "measure"):
        raise ValueError(
            "fit: unroll=True needs steps_per_call set (an int > 1): an unrolled call's "
            "compile time grows with its steps."
        )
    if steps_per_call not in ("auto", "measure"):
        steps_per_call = int(steps_per_call)
        if steps_per_call == 1 or full == 0:
            return "host", 1, None, "steps_per_call=1"
        return "device", min(steps_per_call, full), None, f"steps_per_call={steps_per_call}"
    if full <= 1:
        return "host", 1, None, "one step per epoch: nothing to compile together"
    size = sum(np.asarray(a).nbytes for a in jax.tree.leaves(host_data))
    free = _free_device_bytes()
    if free is not None and size > free // 2:
        return "host", 1, None, f"the data ({size / 2**20:.0f} MiB) do not fit on the device"
    if steps_per_call == "auto":
        return _rule(programs, ts, host_data, order)
    device_data = programs.to_device(host_data)
    timings = measure(programs, ts, tally, host_data, device_data, order, min(full, 16))
    host, device = timings["host"], timings["device"]
    if device is None:
        return (
            "host",
            1,
            timings,
            (f"measured {host * 1e3:.0f} ms per step: per-step dispatch is negligible"),
        )
    ratio = f"{device * 1e6:.0f} us per step compiled, {host * 1e6:.0f} us step by step"
    if device <= host:
        chunk = int(min(full, max(2, round(CHUNK_SECONDS / max(device, 1e-9)))))
        return "device", chunk, timings, f"measured {ratio}"
    return "host", 1, timings, f"measured {ratio}"


def _rule(programs, ts, host_data, order):
    """``"auto"``: device mode, except for convolutions on a CPU (one lowering, no timing)."""
    if jax.devices()[0].platform == "cpu":
        bs = programs.batch_size
        batch = programs.host_batch(host_data, order, 0, bs)
        if programs.has_convolution(ts, batch):
            return (
                "host",
                1,
                None,
                (
                    "a convolution on a CPU: XLA runs its gradient slowly inside a compiled "
                    "loop (jax-ml/jax#12868)"
                ),
            )
    return "device", None, None, "device mode is the default; chunks sized to about 0.25 s"


def _free_device_bytes() -> int | None:
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # backends without memory statistics (CPU)
        return None
    if not stats or "bytes_limit" not in stats:
        return None
    return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))


def epoch_logs(tally, names: list[str], policy: str) -> dict[str, Any]:
    """The epoch's means (one transfer); lists with one value per member for populations."""
    sums, counts = jax.device_get(tuple(tally))
    count, skipped = np.asarray(counts[..., 0], np.float64), counts[..., 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        logs = {k: np.asarray(sums[..., i], np.float64) / count for i, k in enumerate(names)}
    if policy == "skip":
        logs["skipped"] = np.asarray(skipped, np.float64)
    return {k: _plain(v) for k, v in logs.items()}


def _plain(value: Any) -> float | list[float]:
    value = np.asarray(value)
    return float(value) if value.ndim == 0 else [float(v) for v in value]


def evaluate_state(model, ts: TrainState, data, loss_fn, metrics, population) -> dict:
    """``eval_*`` logs of the state on ``data``; a population is evaluated member by member
    in one vmapped program."""
    state = ts.model_state or None
    if not population:
        scores = evaluate(model, ts.params, data, loss_fn=loss_fn, metrics=metrics, state=state)
        return {f"eval_{k}": v for k, v in scores.items()}
    step = _population_eval(_build_eval_step("fit", model, loss_fn, metrics), state is not None)
    scores = average_logs(step, ts.params, data, state, 1024)
    return {f"eval_{k}": _plain(v) for k, v in scores.items()}


@functools.lru_cache(maxsize=16)
def _population_eval(eval_step, stateful: bool):
    return jax.jit(jax.vmap(eval_step, in_axes=(0, None, 0 if stateful else None)))


class ProgressBar:
    """A tqdm bar over steps, or nothing."""

    def __init__(self, enabled: bool, total: int, info: dict):
        self.bar = None
        if not enabled:
            return
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, unit="step", dynamic_ncols=True)
        mode, per_call = info["mode"], info["steps_per_call"]
        if per_call is None:
            calls = "chunks of about 0.25 s"
        elif per_call == 1:
            calls = "one step per call"
        else:
            calls = f"{per_call} steps per call"
        self.bar.write(f"fit: {mode} mode, {calls} ({info['reason']})")

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def epoch_done(self, epoch: int, epochs: int, logs: dict) -> None:
        if self.bar is None:
            return
        self.bar.set_description(f"epoch {epoch}/{epochs}")
        shown = {k: v for k, v in logs.items() if isinstance(v, float)}
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()})

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Resume:
    """Early stopping's tracking and the checkpoints of one ``fit`` call."""

    def __init__(self, name, manager, ts, early_stopping, fingerprint):
        self.name, self.manager, self.es = name, manager, early_stopping
        self.fingerprint = fingerprint
        self.train_state, self.history, self.epoch, self.stopped = ts, {}, 0, False
        self.best_value, self.best_epoch, self.wait = None, None, 0
        keep = early_stopping is not None and early_stopping.restore_best
        self.best = copy((ts.params, ts.model_state)) if keep else None

    @classmethod
    def start(cls, name, checkpoints, resume, ts, early_stopping, batch_size, n) -> Resume:
        if checkpoints is None:
            return cls(name, None, ts, early_stopping, {})
        from jnn._checkpoint_files import CheckpointError
        from jnn._checkpoint_manager import CheckpointManager

        if isinstance(checkpoints, CheckpointManager):
            manager = checkpoints
        elif isinstance(checkpoints, str | os.PathLike):
            manager = CheckpointManager(checkpoints)
        else:
            raise TypeError(
                f"{name}: expected checkpoints to be a directory or a jnn.CheckpointManager, "
                f"got {type(checkpoints).__name__}."
            )
        self = cls(name, manager, ts, early_stopping, {"batch_size": batch_size, "examples": n})
        if manager is None or not resume or manager.latest_step() is None:
            return self
        tree, meta = manager.restore(self._tree(ts))
        run = meta.get("fit", {})
        if run.get("fingerprint") != self.fingerprint:
            raise CheckpointError(
                f"{name}: the checkpoint in {manager.directory} is of a run with "
                f"{run.get('fingerprint')}, not {self.fingerprint}. Hint: resume with the "
                "same data and batch_size, or use a new checkpoint directory."
            )
        self.train_state = tree["train_state"]
        self.best = tree.get("best", self.best)
        self.history, self.epoch, self.stopped = run["history"], run["epoch"], run["stopped"]
        self.best_value, self.best_epoch = run["best_value"], run["best_epoch"]
        self.wait = run["wait"]
        return self

    def _tree(self, ts: TrainState) -> dict:
        tree = {"train_state": ts}
        if self.best is not None:
            tree["best"] = self.best
        return tree

    def track(self, epoch: int, logs: dict, ts: TrainState) -> bool:
        """Update early stopping with this epoch's logs; ``True`` when it says stop."""
        if self.es is None:
            return False
        if self.es.improved(logs[self.es.metric], self.best_value):
            self.best_value, self.best_epoch, self.wait = logs[self.es.metric], epoch + 1, 0
            if self.best is not None:
                self.best = copy((ts.params, ts.model_state))
            return False
        self.wait += 1
        return self.wait >= self.es.patience

    def save(self, epoch: int, ts: TrainState, history: dict, logs: dict, stop: bool) -> None:
        if self.manager is None:
            return
        run = {
            "epoch": epoch + 1,
            "history": history,
            "stopped": stop,
            "fingerprint": self.fingerprint,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "wait": self.wait,
        }
        scores = {k: v for k, v in logs.items() if isinstance(v, float)}
        step = int(np.max(np.asarray(ts.step)))  # the members of a population share it
        self.manager.save(step, self._tree(ts), metadata={"fit": run}, metrics=scores)

    def finish(self, ts: TrainState) -> TrainState:
        """The state to return: with the best epoch's params when early stopping keeps them."""
        if self.best is None or self.best_epoch is None:
            return ts
        params, model_state = self.best
        return ts._replace(params=params, model_state=model_state)
