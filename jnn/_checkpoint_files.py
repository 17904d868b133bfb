"""The checkpoint file itself: its atomic write, and the checks made before reading it.

A checkpoint is a safetensors file whose header metadata (a dict of strings) holds
``format: jnn.checkpoint``, ``version``, and jnn's entries as JSON: the user's
``metadata``, the ``encoded`` record of leaves not stored as themselves (see
``jnn._checkpoint``) and, from ``CheckpointManager``, ``metrics``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from typing import Any

import safetensors

__all__ = ["CheckpointError"]

FORMAT = "jnn.checkpoint"
VERSION = "1"
TEMPORARY_SUFFIX = ".tmp"


class CheckpointError(ValueError):
    """A checkpoint file cannot be read: truncated, empty, not written by jnn, or not
    matching the structure it is loaded into. Nothing is loaded when it is raised."""


CheckpointError.__module__ = "jnn"


def json_entry(name: str, what: str, value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"{name}: {what} must be JSON-serialisable (dicts, lists, strings, numbers, "
            f"booleans, None), got {error}. Hint: convert arrays first, e.g. float(x) or "
            "x.tolist()."
        ) from None


def write_atomically(path: str, write: Any) -> None:
    """Call ``write(temporary_path)``, flush that file to disk and rename it onto ``path``.

    The temporary file sits in ``path``'s directory (a rename is atomic only within one
    file system) under a hidden name ending in ``.tmp``; it is removed if anything fails.
    """
    directory, base = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".{base}.{secrets.token_hex(4)}{TEMPORARY_SUFFIX}")
    try:
        write(temporary)
        fd = os.open(temporary, os.O_RDWR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise
    if os.name == "posix":  # make the rename itself durable; Windows cannot open directories
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def open_checkpoint(name: str, path: str | os.PathLike) -> Iterator[tuple[Any, dict]]:
    """The open safetensors file at ``path`` and jnn's header entries, once both are
    checked: a complete safetensors file, written by jnn, in a format version we read."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{name}: no checkpoint file at '{path}'.")
    if os.path.getsize(path) == 0:
        raise CheckpointError(
            f"{name}: '{path}' is empty (0 bytes): not a checkpoint, or a write that never "
            "finished."
        )
    try:
        # safetensors checks that the header parses and that its tensors cover the file's
        # bytes exactly, so a truncated (or extended) file fails here, before any read.
        handle = safetensors.safe_open(path, framework="np")
    except safetensors.SafetensorError as error:
        raise CheckpointError(
            f"{name}: '{path}' is not a complete safetensors file ({error}). It is "
            "truncated, damaged or not a checkpoint."
        ) from None
    with handle as file:
        yield file, _header(name, path, file.metadata() or {})


def _header(name: str, path: str, entries: dict[str, str]) -> dict:
    if entries.get("format") != FORMAT:
        raise CheckpointError(
            f"{name}: '{path}' is a safetensors file but not a jnn checkpoint (its header "
            f"has no 'format': '{FORMAT}'). Hint: read plain safetensors files with "
            "safetensors.numpy.load_file."
        )
    if entries.get("version") != VERSION:
        raise CheckpointError(
            f"{name}: '{path}' is a jnn checkpoint of format version "
            f"{entries.get('version')!r}; this jnn reads version {VERSION!r}."
        )
    try:
        header = {k: json.loads(v) for k, v in entries.items() if k not in ("format", "version")}
    except ValueError as error:
        raise CheckpointError(f"{name}: the header of '{path}' is damaged ({error}).") from None
    missing = {"metadata", "encoded"} - set(header)
    if missing:
        raise CheckpointError(
            f"{name}: the header of '{path}' is damaged: it lacks {sorted(missing)}."
        )
    return header


def read_header(name: str, path: str | os.PathLike) -> dict:
    """jnn's header entries of the checkpoint at ``path`` (``metadata``, ``encoded`` and,
    from ``CheckpointManager``, ``metrics``), checked; no tensor is read."""
    with open_checkpoint(name, path) as (_, header):
        return header
