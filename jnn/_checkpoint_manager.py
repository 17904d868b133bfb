"""``CheckpointManager``: numbered checkpoints in one directory, rotated after each save.

The directory is the manager's only state: each file carries its step in its name and its
metrics in its header, so a new manager over the same directory (after a restart, say)
sees exactly what the old one left.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jnn._checkpoint import read_checkpoint, write_checkpoint
from jnn._checkpoint_files import TEMPORARY_SUFFIX, CheckpointError, read_header
from jnn._checks import check_positive_int

__all__ = ["CheckpointManager"]

_NAME = re.compile(r"step_(\d{8,})\.safetensors")
_TEMPORARY = re.compile(r"\.step_\d+\.safetensors\.[0-9a-f]+" + re.escape(TEMPORARY_SUFFIX))


@dataclasses.dataclass(frozen=True)
class CheckpointManager:
    """Checkpoints of a run in ``directory``, one file per step, the old ones rotated out.

    Each ``save`` writes ``step_00001000.safetensors`` (the step, zero-padded to eight
    digits) atomically with ``jnn.save_checkpoint``, then deletes the checkpoints that
    are neither among the ``keep_last`` latest steps nor among the ``keep_best`` best by
    ``metrics[metric]``. Non-finite metric values (a diverged loss) never count as best;
    ties go to the later step. Temporary files left by a write that crashed are never
    read, and the next ``save`` removes them.

    Args:
      directory: The directory of this run's checkpoints; created on the first save. Files
        in it that are not named like a checkpoint are left alone.
      keep_last: How many of the latest steps to keep, at least 1.
      keep_best: How many of the best steps (by ``metric``) to keep besides, 0 for none.
      metric: The name in ``save``'s ``metrics`` that ranks checkpoints; required when
        ``keep_best > 0``, and only then.
      mode: ``"min"`` when lower is better (a loss), ``"max"`` when higher is (accuracy).

    Raises:
      TypeError: If ``keep_last`` or ``keep_best`` is not an int, or ``metric`` not a str.
      ValueError: If ``keep_last < 1``, ``keep_best < 0``, ``mode`` is not ``"min"`` or
        ``"max"``, or ``metric`` is given without ``keep_best`` (or the reverse).

    Examples:
      >>> import tempfile, jax.numpy as jnp, jnn
      >>> manager = jnn.CheckpointManager(
      ...     tempfile.mkdtemp(), keep_last=2, keep_best=1, metric="loss")
      >>> for step, loss in [(10, 0.5), (20, 0.2), (30, 0.4), (40, 0.3)]:
      ...     path = manager.save(step, {"w": jnp.full(2, step)}, metrics={"loss": loss})
      >>> manager.steps(), manager.latest_step(), manager.best_step()
      ([20, 30, 40], 40, 20)
      >>> tree, metadata = manager.restore({"w": jnp.zeros(2, jnp.int32)})
      >>> tree["w"]
      Array([40, 40], dtype=int32)
    """

    directory: str | os.PathLike
    keep_last: int = 3
    keep_best: int = 0
    metric: str | None = None
    mode: str = "min"

    def __post_init__(self):
        name = "CheckpointManager"
        if not isinstance(self.directory, str | os.PathLike):
            raise TypeError(
                f"{name}: expected directory as a str or path, got {type(self.directory).__name__}."
            )
        object.__setattr__(self, "directory", Path(self.directory))
        check_positive_int(name, "keep_last", self.keep_last)
        check_positive_int(name, "keep_best", self.keep_best, minimum=0)
        if self.mode not in ("min", "max"):
            raise ValueError(
                f"{name}: expected mode 'min' (lower is better) or 'max', got {self.mode!r}."
            )
        if self.metric is not None and not isinstance(self.metric, str):
            raise TypeError(f"{name}: expected metric as a str, got {type(self.metric).__name__}.")
        if self.keep_best > 0 and self.metric is None:
            raise ValueError(
                f"{name}: keep_best={self.keep_best} needs a metric to rank checkpoints by. "
                "Hint: e.g. metric='val_loss', mode='min'."
            )
        if self.keep_best == 0 and self.metric is not None:
            raise ValueError(
                f"{name}: metric={self.metric!r} is used only to keep the best checkpoints, "
                "but keep_best is 0. Hint: set keep_best=1 (or more), or drop metric."
            )

    def path(self, step: int) -> Path:
        """The file of ``step`` (whether or not it exists)."""
        return self.directory / f"step_{step:08d}.safetensors"

    def steps(self) -> list[int]:
        """The steps with a checkpoint in ``directory``, in increasing order."""
        if not self.directory.is_dir():
            return []
        steps = []
        for entry in os.scandir(self.directory):
            match = _NAME.fullmatch(entry.name)
            # Only the names ``save`` writes: "step_00000001" but not "step_000000001".
            if match and self.path(int(match.group(1))).name == entry.name:
                steps.append(int(match.group(1)))
        return sorted(steps)

    def latest_step(self) -> int | None:
        """The latest step with a checkpoint, or ``None`` if there is none."""
        steps = self.steps()
        return steps[-1] if steps else None

    def best_step(self) -> int | None:
        """The step whose ``metrics[metric]`` is best (finite values only), or ``None``
        if there is none or no ``metric``."""
        ranked = self._ranked(self.steps())
        return ranked[0] if ranked else None

    def metadata(self, step: int) -> dict:
        """The ``metadata`` saved with ``step``, read from the file's header alone."""
        name = "CheckpointManager.metadata"
        return read_header(name, self._existing(step, name))["metadata"]

    def metrics(self, step: int) -> dict[str, float]:
        """The ``metrics`` saved with ``step`` (``{}`` if none were given)."""
        name = "CheckpointManager.metrics"
        return read_header(name, self._existing(step, name)).get("metrics", {})

    def save(
        self,
        step: int,
        tree: Any,
        *,
        metadata: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> Path:
        """Save ``tree`` as the checkpoint of ``step``, then rotate the old ones out.

        Args:
          step: The step number, a non-negative int (a JAX integer scalar such as
            ``state.step`` works too). Saving a step again replaces its file.
          tree: The pytree to save (see ``jnn.save_checkpoint``).
          metadata: A JSON-serialisable dict stored with it.
          metrics: Numbers stored with it, such as ``{"val_loss": 0.31}``; must hold
            ``metric`` when ``keep_best > 0``.

        Returns:
          The path of the file written.

        Raises:
          TypeError: If ``step`` is not an int or a metric value is not a number.
          ValueError: If ``step`` is negative, or ``metrics`` lacks ``metric`` while
            ``keep_best > 0``.
        """
        name = "CheckpointManager.save"
        try:
            step = operator.index(step)
        except TypeError:
            raise TypeError(
                f"{name}: expected step as an int, got {type(step).__name__}."
            ) from None
        check_positive_int(name, "step", step, minimum=0)
        metrics = self._check_metrics(name, metrics)
        self._remove_temporary_files()
        path = self.path(step)
        write_checkpoint(name, path, tree, metadata, metrics=metrics)
        self._rotate()
        return path

    def restore(self, like: Any, step: int | None = None) -> tuple[Any, dict]:
        """Load the checkpoint of ``step`` (the latest by default) into ``like``'s structure.

        Args:
          like: A pytree with the saved tree's structure (see ``jnn.load_checkpoint``).
          step: The step to restore; ``None`` for the latest.

        Returns:
          ``(tree, metadata)``.

        Raises:
          FileNotFoundError: If there is no checkpoint (of ``step``) in ``directory``.
          CheckpointError: If the file is damaged or does not match ``like``.
        """
        name = "CheckpointManager.restore"
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(f"{name}: no checkpoint in '{self.directory}'.")
        tree, header = read_checkpoint(name, self._existing(step, name), like)
        return tree, header["metadata"]

    # --------------------------------------------------------------------------- helpers

    def _existing(self, step: int, name: str) -> Path:
        path = self.path(step)
        if not path.is_file():
            raise FileNotFoundError(
                f"{name}: no checkpoint of step {step} in '{self.directory}'; the steps "
                f"there are {self.steps()}."
            )
        return path

    def _check_metrics(self, name: str, metrics: Any) -> dict[str, float]:
        if metrics is None:
            metrics = {}
        if not isinstance(metrics, Mapping):
            raise TypeError(
                f"{name}: expected metrics as a dict of name -> number, got "
                f"{type(metrics).__name__}."
            )
        values = {}
        for key, value in metrics.items():
            try:
                values[str(key)] = float(value)
            except (TypeError, ValueError):
                raise TypeError(
                    f"{name}: expected metric {key!r} to be a number, got {type(value).__name__}."
                ) from None
        if self.keep_best > 0 and self.metric not in values:
            raise ValueError(
                f"{name}: metrics must hold {self.metric!r}, which ranks checkpoints for "
                f"keep_best={self.keep_best}; got {sorted(values)}."
            )
        return values

    def _ranked(self, steps: list[int]) -> list[int]:
        """The steps with a finite ``metric``, best first (the later step on ties)."""
        if self.metric is None:
            return []
        scored = []
        for step in steps:
            try:
                metrics = read_header("CheckpointManager", self.path(step)).get("metrics")
            except (CheckpointError, OSError):  # a damaged file never ranks as best
                continue
            value = metrics.get(self.metric) if isinstance(metrics, dict) else None
            if isinstance(value, int | float) and math.isfinite(value):
                scored.append((value if self.mode == "min" else -value, -step))
        return [-negative_step for _, negative_step in sorted(scored)]

    def _rotate(self) -> None:
        steps = self.steps()
        keep = set(steps[-self.keep_last :]) | set(self._ranked(steps)[: self.keep_best])
        for step in steps:
            if step not in keep:
                self.path(step).unlink(missing_ok=True)

    def _remove_temporary_files(self) -> None:
        if not self.directory.is_dir():
            return
        for entry in os.scandir(self.directory):
            if _TEMPORARY.fullmatch(entry.name):
                Path(entry.path).unlink(missing_ok=True)
