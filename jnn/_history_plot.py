"""``plot_history``: the loss and metrics of a history per epoch, as a matplotlib figure."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jnn._json_lines import _check_path

__all__ = ["plot_history"]


def _check_history(name: str, history: Any) -> dict[str, np.ndarray]:
    """``history`` as name -> float array, every one of the same, non-zero length."""
    if not isinstance(history, Mapping):
        hint = " Hint: pass result.history." if hasattr(history, "history") else ""
        raise TypeError(
            f"{name}: expected history as a dict of name -> list of numbers, got "
            f"{type(history).__name__}.{hint}"
        )
    if not history:
        raise ValueError(f"{name}: history is empty; there is nothing to plot.")
    columns = {}
    for key, values in history.items():
        if not isinstance(key, str):
            raise TypeError(f"{name}: expected the names in history to be str, got {key!r}.")
        try:
            column = None if isinstance(values, str) else np.asarray(values, dtype=float)
        except (TypeError, ValueError):
            column = None
        if column is None or column.ndim not in (1, 2):
            shape = "" if column is None else f" of shape {column.shape}"
            raise TypeError(
                f"{name}: expected history[{key!r}] to be a list of numbers (or of lists, one "
                f"value per member of a population), got {type(values).__name__}{shape}."
            )
        columns[key] = column
    lengths = {key: len(column) for key, column in columns.items()}
    if len(set(lengths.values())) != 1 or 0 in lengths.values():
        raise ValueError(
            f"{name}: expected one value per epoch in every list of history (the same, "
            f"non-zero length), got lengths {lengths}. Hint: fill epochs without a value "
            "with float('nan')."
        )
    return columns


def plot_history(
    history: Mapping[str, Sequence[float]],
    path: str | os.PathLike | None = None,
    *,
    metrics: Sequence[str] | None = None,
    title: str | None = None,
) -> Any:
    """Plot a training history against the epoch, one subplot per quantity.

    Each subplot shows a quantity and its ``eval_`` twin: ``loss`` with ``eval_loss``
    (always first), ``accuracy`` with ``eval_accuracy``, and so on. NaN and ``None``
    leave gaps. Needs matplotlib (in the ``examples`` and ``tests`` extras); the figure is built
    without ``pyplot``, so no window opens and no global state changes.

    Args:
      history: A dict of name -> list of per-epoch numbers, all of the same length, as
        in ``fit(...).history`` or ``history_from_json_lines(path)``. For a population,
        each epoch holds a list (one value per member), drawn as one line per member.
      path: Where to save the figure; the format follows the extension (PNG by default).
      metrics: The quantities to plot, named without ``eval_`` (``["loss"]``); all of
        them by default.
      title: A title over the whole figure.

    Returns:
      The ``matplotlib.figure.Figure`` (in a notebook, it displays itself).

    Raises:
      TypeError: If ``history`` is not a dict of lists of numbers, ``metrics`` not a
        list of names, or ``path`` not a path.
      ValueError: If the lists differ in length or are empty, or ``metrics`` names a
        quantity not in ``history``.
      ImportError: If matplotlib is not installed.

    Examples:
      >>> import jnn
      >>> history = {"loss": [0.9, 0.5], "accuracy": [0.6, 0.8], "eval_loss": [1.0, 0.7]}
      >>> figure = jnn.plot_history(history)
      >>> [ax.get_title() for ax in figure.axes]
      ['loss', 'accuracy']
      >>> [line.get_label() for line in figure.axes[0].lines]
      ['loss', 'eval_loss']
    """
    name = "plot_history"
    columns = _check_history(name, history)
    if path is not None:
        _check_path(name, path)
    bases = sorted(dict.fromkeys(k.removeprefix("eval_") for k in columns), key="loss".__ne__)
    families = {b: [k for k in (b, f"eval_{b}") if k in columns] for b in bases}
    if metrics is not None:
        if isinstance(metrics, str) or not isinstance(metrics, list | tuple):
            raise TypeError(
                f"{name}: expected metrics as a list of names, got {metrics!r}. "
                f"Hint: metrics=[{metrics!r}]."
            )
        unknown = [m for m in metrics if m not in families]
        if unknown:
            raise ValueError(
                f"{name}: metrics {unknown} are not in history; it holds {list(families)}."
            )
        families = {m: families[m] for m in metrics}
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError as error:
        raise ImportError(
            f"{name}: needs matplotlib, which jnn does not install by itself. "
            "Hint: pip install matplotlib (or jnn[examples])."
        ) from error
    cols = min(len(families), 3)
    rows = math.ceil(len(families) / cols)
    figure = Figure(figsize=(4.5 * cols, 3.2 * rows), layout="constrained")
    axes = figure.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(families) :]:
        figure.delaxes(ax)
    epochs = np.arange(1, len(next(iter(columns.values()))) + 1)
    marker = "o" if len(epochs) <= 30 else None
    for ax, (family, keys) in zip(axes, families.items(), strict=False):
        for key in keys:
            column = columns[key].reshape(len(epochs), -1)  # a column per member
            labels = [key] + ["_" + key] * (column.shape[1] - 1)  # "_": not in the legend
            color = "C1" if key.startswith("eval_") else "C0"
            ax.plot(epochs, column, marker=marker, markersize=3, color=color, label=labels)
        ax.set(title=family, xlabel="epoch", ylabel=family)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    if title is not None:
        figure.suptitle(str(title))
    if path is not None:
        figure.savefig(os.fspath(path), dpi=100)
    return figure
