"""``JSONLinesLogger``: one JSON object per epoch, appended and flushed line by line, and
the readers that turn such a log back into records or a history."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from jnn._batching import check_bool
from jnn._callbacks import Callback

__all__ = ["JSONLinesLogger", "read_json_lines", "history_from_json_lines"]

_RESERVED = ("epoch", "step", "time")  # the fields JSONLinesLogger adds to each record


def _check_path(name: str, path: Any) -> None:
    if not isinstance(path, str | os.PathLike):
        raise TypeError(
            f"{name}: expected path to be a str or os.PathLike, got {type(path).__name__}."
        )


def _json_scalar(value: bool | int | float) -> int | float | None:
    if isinstance(value, bool | int):
        return int(value)
    return value if math.isfinite(value) else None  # JSON has no NaN or inf: null


def _json_value(name: str, key: str, value: Any) -> Any:
    """A log value as JSON: a number, or a list of numbers (a population's members)."""
    array = np.asarray(value) if not isinstance(value, str) else np.asarray([value])
    if array.dtype.kind not in "biuf" or array.ndim > 1:
        shape = f" of shape {array.shape}" if array.ndim > 1 else ""
        raise TypeError(
            f"{name}: expected logs[{key!r}] to be a real number, or a list of them (one per "
            f"member of a population), got {type(value).__name__}{shape}."
        )
    if array.ndim == 1:
        return [_json_scalar(v) for v in array.tolist()]
    return _json_scalar(array.item())


def _repair_tail(path: str) -> None:
    """Drop a partial last line left by a crash (or end a complete one), so that appended
    records start on a line of their own."""
    with open(path, "rb+") as f:
        data = f.read()
        if not data or data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        try:
            json.loads(data[cut:])
        except ValueError:
            f.truncate(cut)
        else:
            f.write(b"\n")


@dataclasses.dataclass(eq=False)
class JSONLinesLogger(Callback):
    """Write one JSON object per epoch to ``path``: a log that survives a crash.

    Each line reads ``{"epoch": 1, "step": 120, "time": 3.52, "loss": 0.41, ...}``:
    the epoch (from 1), ``int(state.step)`` (left out when the state has no ``step``),
    the seconds since ``on_train_begin`` (or since the logger was made), then the logs.
    For a population of runs, the step and each log are lists, one value per member.
    The file is opened, written and closed for each line, so a crash loses at most the
    line being written; appending to a file whose last line a crash cut short drops that
    partial line first.

    JSON has no NaN: non-finite values (NaN, ``inf``) are written as ``null``, as
    JavaScript's ``JSON.stringify`` does, so every line is valid JSON for any reader.
    ``history_from_json_lines`` reads them back as NaN.

    Args:
      path: The file to write (a str or ``os.PathLike``); its directory must exist.
      append: Add to an existing file (resuming a run). ``False`` empties the file at
        the start of each training run.

    Raises:
      TypeError: If ``path`` is not a path or ``append`` not a bool; at an epoch's end,
        if a log value is not a real number (or a list of them).
      FileNotFoundError: If the directory of ``path`` does not exist.
      ValueError: If ``path`` is a directory; at an epoch's end, if the logs hold a key
        the logger writes itself (``epoch``, ``step``, ``time``).

    Examples:
      >>> import os, tempfile, jnn
      >>> path = os.path.join(tempfile.mkdtemp(), "log.jsonl")
      >>> logger = jnn.JSONLinesLogger(path, append=False)
      >>> logger.on_train_begin({"epochs": 2})
      >>> logger.on_epoch_end(1, {"loss": 0.5}, None)
      >>> logger.on_epoch_end(2, {"loss": float("nan")}, None)
      >>> jnn.history_from_json_lines(path)
      {'loss': [0.5, nan]}
    """

    path: str | os.PathLike
    _: dataclasses.KW_ONLY
    append: bool = True
    _start: float = dataclasses.field(init=False, repr=False, default=0.0)
    _ready: bool = dataclasses.field(init=False, repr=False, default=False)

    def __post_init__(self):
        name = "JSONLinesLogger"
        _check_path(name, self.path)
        check_bool(name, "append", self.append)
        path = os.fspath(self.path)
        if os.path.isdir(path):
            raise ValueError(f"{name}: path {path!r} is a directory; expected a file name.")
        folder = os.path.dirname(path) or "."
        if not os.path.isdir(folder):
            raise FileNotFoundError(
                f"{name}: the directory {folder!r} of path {path!r} does not exist. "
                f"Hint: create it first, e.g. os.makedirs({folder!r}, exist_ok=True)."
            )
        self._start = time.monotonic()

    def _prepare(self) -> None:
        path = os.fspath(self.path)
        if not self.append:
            open(path, "w").close()
        elif os.path.exists(path):
            _repair_tail(path)
        self._ready = True

    def on_train_begin(self, info: dict[str, Any]) -> None:
        del info
        self._start = time.monotonic()
        self._prepare()

    def on_epoch_end(self, epoch: int, logs: dict[str, float], state: Any) -> None:
        name = "JSONLinesLogger"
        if not isinstance(logs, Mapping):
            raise TypeError(f"{name}: expected logs to be a dict, got {type(logs).__name__}.")
        record: dict[str, Any] = {"epoch": int(epoch)}
        if getattr(state, "step", None) is not None:
            record["step"] = np.asarray(state.step).tolist()  # a list for populations
        record["time"] = round(time.monotonic() - self._start, 3)
        for key, value in logs.items():
            if key in _RESERVED:
                raise ValueError(
                    f"{name}: the log key {key!r} is taken by the record's own field. "
                    f"Hint: rename the metric, e.g. 'train_{key}'."
                )
            record[str(key)] = _json_value(name, key, value)
        line = json.dumps(record, allow_nan=False) + "\n"
        if not self._ready:
            self._prepare()
        with open(os.fspath(self.path), "a", encoding="utf-8") as f:
            f.write(line)

    def on_train_end(self, history: dict[str, list[float]]) -> None:
        del history
        self._ready = False  # the next run prepares the file again (empties it, or repairs)


def read_json_lines(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a JSON-lines file into a list of dicts, one per non-blank line.

    A last line without its newline that is not valid JSON (a crash cut it short) is
    skipped; any other invalid line is an error.

    Args:
      path: The file, e.g. one written by ``JSONLinesLogger``.

    Returns:
      The records in file order; ``null`` values read as ``None``.

    Raises:
      TypeError: If ``path`` is not a str or ``os.PathLike``.
      ValueError: If a complete line is not valid JSON, or not a JSON object.

    Examples:
      >>> import os, tempfile, jnn
      >>> path = os.path.join(tempfile.mkdtemp(), "log.jsonl")
      >>> with open(path, "w") as f:
      ...     _ = f.write('{"epoch": 1, "loss": null}\\n{"epoch": 2, "lo')
      >>> jnn.read_json_lines(path)
      [{'epoch': 1, 'loss': None}]
    """
    name = "read_json_lines"
    _check_path(name, path)
    with open(os.fspath(path), encoding="utf-8") as f:
        lines = f.read().split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            if number == len(lines):
                break  # the partial last line of a crash
            raise ValueError(
                f"{name}: line {number} of {os.fspath(path)!r} is not valid JSON ({error}): "
                f"{line[:80]!r}."
            ) from None
        if not isinstance(record, dict):
            raise ValueError(
                f"{name}: expected a JSON object on line {number} of {os.fspath(path)!r}, "
                f"got {type(record).__name__}."
            )
        records.append(record)
    return records


def history_from_json_lines(path: str | os.PathLike) -> dict[str, list[float]]:
    """Rebuild a ``fit``-style history from a ``JSONLinesLogger`` file.

    Records are ordered by ``"epoch"``; an epoch logged more than once (a run resumed
    from an earlier checkpoint, or runs appended to one file) keeps its last record.
    ``null`` and missing values become NaN, so every list has one value per epoch. The
    ``epoch``, ``step`` and ``time`` fields are left out.

    Args:
      path: The log file.

    Returns:
      A dict of name -> list of floats (of lists of floats, one per member, for a
      population), in the order the names first appear.

    Raises:
      ValueError: If the file is not valid JSON lines, a record has no int ``"epoch"``,
        or a value is not a number or a list of numbers.
    """
    name = "history_from_json_lines"
    by_epoch: dict[int, dict[str, Any]] = {}
    for i, record in enumerate(read_json_lines(path)):
        epoch = record.get("epoch")
        if not isinstance(epoch, int) or isinstance(epoch, bool):
            raise ValueError(
                f"{name}: expected an int 'epoch' in record {i} of {os.fspath(path)!r}, "
                f"got {epoch!r}."
            )
        by_epoch[epoch] = record
    names = list(dict.fromkeys(k for r in by_epoch.values() for k in r if k not in _RESERVED))
    history: dict[str, list[float]] = {key: [] for key in names}
    for epoch in sorted(by_epoch):
        for key in names:
            value = by_epoch[epoch].get(key)
            values = value if isinstance(value, list) else [value]
            if not all(v is None or isinstance(v, int | float) for v in values):
                raise ValueError(
                    f"{name}: expected a number (or a list of them) for {key!r} at epoch "
                    f"{epoch}, got {value!r}."
                )
            values = [math.nan if v is None else float(v) for v in values]
            history[key].append(values if isinstance(value, list) else values[0])
    return history
