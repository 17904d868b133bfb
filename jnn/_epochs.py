"""One epoch of ``fit``: its steps in segments (compiled chunks, or windows of host steps),
with a look at the non-finite flag after each, and the replay that recovers the last
finite state when there was one."""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np

from jnn._loops import CAUSES, NonFiniteError, Programs, Tally, copy

HOST_CHECK_EVERY = 64  # host mode: steps between looks at the non-finite flag
CHUNK_SECONDS = 0.25  # what an adaptive device-mode chunk aims for: the progress bar
# moves, and a non-finite step is seen, this often, while Python's share stays negligible
FIRST_CHUNK = 8  # steps of the first adaptive chunks, until one has been timed


class EpochRunner:
    """Runs the epochs of one ``fit`` call in the chosen mode.

    With ``on_nonfinite="raise"`` each segment starts from a copy of the state (one
    elementwise copy per chunk or per ``HOST_CHECK_EVERY`` steps, and the memory of one
    more train state). When the tally reports a non-finite step, the steps before it are
    run again from that copy with the same programs and batches, which gives the exact
    state before it, and ``NonFiniteError`` is raised with it.
    """

    def __init__(self, programs: Programs, mode: str, chunk, unroll: bool, policy: str):
        self.programs, self.mode, self.chunk = programs, mode, chunk
        self.seconds_per_step, self.calls, self.last_chunk = None, 0, chunk
        self.unroll, self.policy = unroll, policy
        # On an accelerator the next batch is copied while a step runs; on a CPU the
        # device is the host, and an explicit copy costs more than it could hide.
        self.prefetch = jax.devices()[0].platform != "cpu"

    def setup(self, host_data: Any, n: int, full: int, tail: int, step: np.ndarray) -> None:
        self.host_data, self.n, self.full, self.tail = host_data, n, full, tail
        self.step = step  # TrainState.step, followed on the host: no waiting to read it
        # flattened once: a generic tree map per batch costs more than the gather itself
        self.leaves, self.treedef = jax.tree.flatten(host_data)
        self.device_data = self.programs.to_device(host_data) if self.mode == "device" else None
        self.placement = self.programs.layout and self.programs.layout.batch

    def segments(self):
        """``(first position, steps)`` of each segment, the short last batch its own; an
        adaptive chunk (``chunk=None``) is sized from the time the previous one took."""
        start = 0
        while start < self.full:
            if self.mode == "host":
                size = HOST_CHECK_EVERY
            else:
                size = self.chunk if self.chunk is not None else self._adaptive()
            count = min(size, self.full - start)
            yield start, count
            start += count
        if self.tail:
            yield self.full, 1

    def _adaptive(self) -> int:
        if self.seconds_per_step is None:
            return FIRST_CHUNK
        steps = round(CHUNK_SECONDS / max(self.seconds_per_step, 1e-9))
        return int(min(self.full, max(1, steps)))

    def run(self, ts, tally, order, epoch: int, history: dict, bar: Any):
        """The steps of one epoch from an empty host tally: ``(train state, tally)``; the
        tally stays in NumPy arrays, read back once per segment."""
        host_order = order
        if self.mode == "device":
            order = self.programs.to_device(order)  # once per epoch, not per call
        for start, count in self.segments():
            snapshot = (copy(ts), tally, self.step) if self.policy == "raise" else None
            begin = time.perf_counter()
            ts, tally = self._segment(ts, tally, order, host_order, start, count, self.step)
            if self.mode == "device" and start < self.full:  # the segment's tally was read
                if self.calls:  # the first call also compiled
                    self.seconds_per_step = (time.perf_counter() - begin) / count
                self.calls += 1
                self.last_chunk = count
            self.step = self.step + count
            if snapshot is not None:
                self._check(snapshot, tally, order, host_order, start, epoch, history)
            bar.update(count)
        return ts, tally

    def _segment(self, ts, tally, order, host_order, start: int, count: int, first_step):
        if self.mode == "device" and start < self.full:
            ts, tally = self.programs.device_steps(
                ts, tally, self.device_data, order, start, count, self.unroll
            )
            return ts, Tally(*jax.device_get(tuple(tally)))
        packed = []
        upcoming = self._batch(host_order, start)
        for i in range(start, start + count):
            batch = upcoming
            ts, logs = self.programs.step(ts, batch)  # returns before it has run
            packed.append(logs)
            if i + 1 < start + count:
                upcoming = self._batch(host_order, i + 1)
        return ts, self.programs.absorb(tally, first_step, packed)

    def _batch(self, host_order, i: int):
        bs = self.programs.batch_size
        index = host_order[..., i * bs : min(i * bs + bs, self.n)]  # [K, B] for a population
        batch = self.treedef.unflatten([leaf[index] for leaf in self.leaves])
        if self.placement is not None:  # split over the mesh
            return jax.device_put(batch, self.placement)
        return jax.device_put(batch) if self.prefetch else batch

    def _check(self, snapshot, tally, order, host_order, start, epoch, history) -> None:
        first = np.asarray(tally.first_bad).reshape(-1)  # waits for the segment
        if (first < 0).all():
            return
        member = int(np.argmin(np.where(first >= 0, first, np.iinfo(np.int64).max)))
        cause = CAUSES[int(np.asarray(tally.cause).reshape(-1)[member])]
        good, good_tally, good_step = snapshot
        before = int(first[member]) - int(np.asarray(good_step).reshape(-1)[member])
        if before > 0:
            good, _ = self._segment(good, good_tally, order, host_order, start, before, good_step)
        raise NonFiniteError(epoch + 1, int(first[member]), cause, good, history)
