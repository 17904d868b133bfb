"""``EarlyStopping``: stop ``fit`` when a validation metric stops improving, and go back to
the best epoch's parameters."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

__all__ = ["EarlyStopping"]


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
    """Stop training when ``metric`` has not improved for ``patience`` epochs.

    Pass it to ``fit(..., early_stopping=EarlyStopping("eval_loss"))``. The metric is
    read from each epoch's logs (``"eval_*"`` names need ``eval_data``). A NaN value never
    counts as an improvement.

    Args:
      metric: The name in the history to watch, e.g. ``"eval_loss"`` or
        ``"eval_accuracy"``.
      patience: Epochs without improvement to wait before stopping, a positive int.
      mode: ``"min"``, ``"max"``, or ``"auto"``: ``"max"`` for names that contain
        ``accuracy``, ``auc``, ``precision``, ``recall`` or ``f1``, else ``"min"``.
      min_delta: How much better than the best so far a value must be to count.
      restore_best: At the end, return the params and model state of the best epoch
        (optimizer state and step stay those of the last epoch, as in Keras).

    Examples:
      >>> import jnn
      >>> jnn.EarlyStopping("eval_accuracy").direction
      'max'
    """

    metric: str = "eval_loss"
    patience: int = 5
    mode: str = "auto"
    min_delta: float = 0.0
    restore_best: bool = True

    def __post_init__(self):
        name = "EarlyStopping"
        if not isinstance(self.metric, str) or not self.metric:
            raise TypeError(
                f"{name}: metric must be a name such as 'eval_loss', got {self.metric!r}."
            )
        if not isinstance(self.patience, int) or isinstance(self.patience, bool):
            raise TypeError(f"{name}: patience must be an int, got {self.patience!r}.")
        if self.patience < 1:
            raise ValueError(f"{name}: patience must be a positive int, got {self.patience}.")
        if self.mode not in ("min", "max", "auto"):
            raise ValueError(f"{name}: mode must be 'min', 'max' or 'auto', got {self.mode!r}.")
        if not isinstance(self.min_delta, int | float) or not self.min_delta >= 0:
            raise ValueError(
                f"{name}: min_delta must be a non-negative number, got {self.min_delta!r}."
            )
        if not isinstance(self.restore_best, bool):
            raise TypeError(f"{name}: restore_best must be a bool, got {self.restore_best!r}.")

    @property
    def direction(self) -> str:
        """``"min"`` or ``"max"``, with ``"auto"`` resolved from the metric's name."""
        if self.mode != "auto":
            return self.mode
        larger = ("accuracy", "auc", "precision", "recall", "f1")
        return "max" if any(word in self.metric for word in larger) else "min"

    def improved(self, value: float, best: float | None) -> bool:
        """Whether ``value`` beats ``best`` (``None``: nothing yet) by ``min_delta``."""
        if value is None or not math.isfinite(value):
            return False
        if best is None:
            return True
        if self.direction == "min":
            return value < best - self.min_delta
        return value > best + self.min_delta


def check_early_stopping(name: str, early_stopping: Any, history_names: set[str]) -> None:
    """``early_stopping`` must be ``None`` or an ``EarlyStopping`` whose metric will exist."""
    if early_stopping is None:
        return
    if not isinstance(early_stopping, EarlyStopping):
        hint = (
            " Hint: instantiate it, e.g. jnn.EarlyStopping('eval_loss')."
            if early_stopping is EarlyStopping
            else ""
        )
        raise TypeError(
            f"{name}: expected early_stopping to be a jnn.EarlyStopping, got "
            f"{type(early_stopping).__name__}.{hint}"
        )
    if early_stopping.metric not in history_names:
        hint = (
            " Hint: 'eval_*' metrics need eval_data."
            if early_stopping.metric.startswith("eval_")
            else ""
        )
        raise ValueError(
            f"{name}: early_stopping watches '{early_stopping.metric}', but the history will "
            f"hold only {sorted(history_names)}.{hint}"
        )
