"""The errors every layer raises, each naming the layer and where it sits in the model."""

from __future__ import annotations

from typing import Any

__all__ = [
    "LayerError",
    "ShapeError",
    "DTypeError",
    "ParamsError",
    "MissingKeyError",
]


class LayerError(Exception):
    """An error raised by a layer; combinators add the layer's path as it propagates.

    The message reads ``"{layer} at '{path}': {detail}"``, where ``path`` is the
    slash-separated chain of child names from the model's root to the layer.
    """

    def __init__(self, layer: str, detail: str):
        super().__init__(layer, detail)
        self.layer = layer
        self.detail = detail
        self.path: list[str] = []

    def __str__(self) -> str:
        where = f" at '{'/'.join(self.path)}'" if self.path else ""
        return f"{self.layer}{where}: {self.detail}"


class ShapeError(LayerError, ValueError):
    """An input or output of a layer has the wrong shape."""


class DTypeError(LayerError, TypeError):
    """An input of a layer has the wrong dtype, or an argument the wrong kind."""


class ParamsError(LayerError, ValueError):
    """A params or state tree does not match the model (missing or extra key, wrong shape)."""


class MissingKeyError(LayerError, ValueError):
    """A stochastic layer was asked to train without a PRNG key."""


def layer_name(module: Any) -> str:
    """The name a layer goes by in messages: its ``layer_name()``, or a given string."""
    if isinstance(module, str):
        return module
    name = getattr(module, "layer_name", None)
    return name() if callable(name) else type(module).__name__


# Tracebacks name the errors as users import them: ``jnn.ShapeError``.
for _error in (LayerError, ShapeError, DTypeError, ParamsError, MissingKeyError):
    _error.__module__ = "jnn"
