"""``draw_network``: a stack of Dense layers drawn as textbooks do, neurons and weights."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from jnn._combinators import Identity, Lambda, Sequential, _function_name
from jnn._dense import MLP, Dense
from jnn._dropout import Dropout
from jnn._errors import ParamsError, ShapeError
from jnn._json_lines import _check_path
from jnn._module import Module, Params
from jnn._train_state import TrainState

__all__ = ["draw_network"]

_NAME = "draw_network"
_DENSE_ONLY = (
    "Hint: draw_network draws a stack of Dense layers: an MLP, a Dense, or a Sequential "
    "of Dense layers and activations (Dropout and Identity are skipped)."
)


class _Layer(NamedTuple):
    path: str
    weight: np.ndarray  # [in_features, out_features]
    bias: np.ndarray | None  # [out_features]
    activation: str | None


def _activation_name(fn: Any) -> str | None:
    return None if fn is None else _function_name(fn)


def _dense_params(path: str, params: Any) -> tuple[np.ndarray, np.ndarray | None]:
    if not isinstance(params, Mapping) or "weight" not in params:
        got = f"keys {sorted(params)}" if isinstance(params, Mapping) else type(params).__name__
        raise ParamsError(
            _NAME,
            f"expected a Dense layer's params {{'weight': [in, out], 'bias': [out]}} at "
            f"'{path or '(root)'}', got {got}. {_DENSE_ONLY}",
        )
    weight = np.asarray(params["weight"])
    if weight.ndim != 2:
        raise ShapeError(
            _NAME,
            f"expected a Dense weight of shape [in_features, out_features] at "
            f"'{path or '(root)'}', got shape {weight.shape}. {_DENSE_ONLY}",
        )
    bias = params.get("bias")
    return weight, None if bias is None else np.asarray(bias).reshape(-1)


def _child(params: Any, name: str, path: str) -> Any:
    if not isinstance(params, Mapping) or name not in params:
        got = sorted(params) if isinstance(params, Mapping) else type(params).__name__
        raise ParamsError(
            _NAME,
            f"the params have no entry '{name}' for the layer at '{path}'; got {got}. "
            "Hint: pass the params that model.init made for this model.",
        )
    return params[name]


def _from_model(model: Module, params: Any, path: str = "") -> list[_Layer]:
    """The Dense layers of ``model`` in the order they run, with activations attached."""
    where = path or "(root)"
    if isinstance(model, Dense):
        weight, bias = _dense_params(path, params)
        return [_Layer(path, weight, bias, _activation_name(model.activation))]
    if isinstance(model, MLP):
        layers = []
        for i in range(len(model.features)):
            name = f"dense_{i}"
            child = f"{path}/{name}".lstrip("/")
            weight, bias = _dense_params(child, _child(params, name, child))
            last = i == len(model.features) - 1
            activation = model.final_activation if last else model.activation
            layers.append(_Layer(child, weight, bias, _activation_name(activation)))
        return layers
    if isinstance(model, Sequential):
        layers: list[_Layer] = []
        for name, layer in zip(model.names, model.layers, strict=True):
            child = f"{path}/{name}".lstrip("/")
            if isinstance(layer, Lambda):
                if layers and layers[-1].activation is None:
                    label = layer.name or _function_name(layer.fn)
                    layers[-1] = layers[-1]._replace(activation=label)
            elif not isinstance(layer, Dropout | Identity):
                layers.extend(_from_model(layer, _child(params, name, child), child))
        return layers
    raise TypeError(f"{_NAME}: cannot draw {type(model).__name__} at '{where}'. {_DENSE_ONLY}")


def _chains(layers: list[_Layer]) -> bool:
    return all(
        a.weight.shape[1] == b.weight.shape[0] for a, b in zip(layers[:-1], layers[1:], strict=True)
    )


def _from_params(params: Any) -> list[_Layer]:
    """The Dense layers of a params dict: ``{"weight", "bias"}`` itself, or a dict of them
    in the order they chain (as given, else by name with numbers compared as numbers)."""
    if not isinstance(params, Mapping):
        raise TypeError(
            f"{_NAME}: expected a jnn.Module and its params, or the params of a stack of "
            f"Dense layers, got {type(params).__name__}."
        )
    if "weight" in params:
        return [_Layer("", *_dense_params("", params), None)]
    if not params:
        raise ParamsError(_NAME, f"the params are empty: there is nothing to draw. {_DENSE_ONLY}")
    layers = [_Layer(name, *_dense_params(name, value), None) for name, value in params.items()]
    if _chains(layers):
        return layers

    def natural(layer: _Layer) -> list:
        return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", layer.path)]

    ordered = sorted(layers, key=natural)
    if _chains(ordered):
        return ordered
    shapes = ", ".join(f"'{layer.path}': {layer.weight.shape}" for layer in layers)
    raise ShapeError(
        _NAME,
        f"the weights do not chain into one stack of Dense layers (each layer's "
        f"out_features the next one's in_features): {shapes}. Hint: pass the model too, "
        "draw_network(model, params), so the order is the model's.",
    )


def _shown(size: int, max_neurons: int) -> list[int | None]:
    """The neurons of a column drawn, top to bottom; ``None`` marks the ellipsis."""
    if size <= max_neurons:
        return list(range(size))
    head = (max_neurons + 1) // 2
    tail = max_neurons - head
    return [*range(head), None, *range(size - tail, size)]


def _labels(what: str, labels: Sequence[str] | None, size: int, symbol: str) -> list[str]:
    if labels is None:
        return [f"${symbol}_{{{i + 1}}}$" for i in range(size)]
    if isinstance(labels, str) or not isinstance(labels, Sequence):
        raise TypeError(f"{_NAME}: expected {what} as a list of strings, got {labels!r}.")
    if len(labels) != size:
        raise ValueError(f"{_NAME}: expected {size} {what} (one per neuron), got {len(labels)}.")
    return [str(label) for label in labels]


def draw_network(
    model_or_params: Module | Params,
    params: Params | None = None,
    *,
    max_neurons: int = 10,
    input_labels: Sequence[str] | None = None,
    output_labels: Sequence[str] | None = None,
    path: str | os.PathLike | None = None,
    title: str | None = None,
) -> Any:
    """Draw a stack of Dense layers as textbooks do: neurons in columns, weights as lines.

    Every column is a layer of neurons (circles): the inputs on the left, then each
    layer's outputs. A line joins every pair of neurons of neighbouring columns; its
    width grows with the weight's magnitude and its colour gives its sign (red positive,
    blue negative, on one colour scale for the whole network, shown by the colour bar).
    A neuron's fill is its bias on the same scale (white: no bias; the inputs are
    white). A column wider than ``max_neurons`` shows its first and last neurons around
    a vertical ellipsis, with only their weights. Needs matplotlib; the figure is built
    without ``pyplot``, so no window opens and no global state changes.

    Args:
      model_or_params: A ``jnn.MLP``, ``jnn.Dense`` or ``jnn.Sequential`` of Dense layers
        and activations (``Dropout`` and ``Identity`` are skipped), with its params as
        the second argument; or the params alone, ``{"weight": ..., "bias": ...}`` for
        one layer or a dict of those (their order is the dict's, or the names' with
        numbers compared as numbers, whichever chains). With the model, each column is
        labelled with its activation.
      params: The params of the model, when a model comes first.
      max_neurons: The most neurons drawn per column (at least 2).
      input_labels: A name per input (``in_features`` of them), e.g. feature names;
        ``x_1``, ``x_2``, ... by default.
      output_labels: A name per output, e.g. class names; ``y_1``, ... by default.
      path: Where to save the figure; the format follows the extension (PNG by default).
      title: A title over the drawing.

    Returns:
      The ``matplotlib.figure.Figure``: its first axes hold the drawing, one
      ``matplotlib.patches.Circle`` per neuron drawn and one ``LineCollection`` of
      weights per layer; the second holds the colour bar.

    Raises:
      TypeError: If the model holds a layer other than Dense, activations, Dropout and
        Identity (a ``Conv``, say), or the arguments are of the wrong kind.
      ParamsError: If the params lack a layer of the model, or a layer's params are not
        a Dense layer's.
      ShapeError: If a weight is not ``[in_features, out_features]``, or the weights do
        not chain into one stack.
      ValueError: If ``max_neurons`` is below 2 or a list of labels has the wrong length.
      ImportError: If matplotlib is not installed.

    Examples:
      >>> import jax, jax.numpy as jnp, jnn
      >>> model = jnn.MLP([4, 2])
      >>> params = model.init(jax.random.key(0), jnp.zeros((1, 3)))
      >>> figure = jnn.draw_network(model, params)
      >>> drawing = figure.axes[0]
      >>> len(drawing.patches)  # 3 inputs, 4 hidden and 2 output neurons
      9
      >>> sum(len(lines.get_segments()) for lines in drawing.collections)  # 3 * 4 + 4 * 2
      20
    """
    if isinstance(model_or_params, TrainState) or isinstance(params, TrainState):
        raise TypeError(f"{_NAME}: expected params, got a jnn.TrainState. Hint: pass state.params.")
    if isinstance(model_or_params, type) and issubclass(model_or_params, Module):
        raise TypeError(
            f"{_NAME}: expected a model instance, got the class {model_or_params.__name__}."
        )
    if isinstance(model_or_params, Module):
        if params is None:
            raise TypeError(
                f"{_NAME}: a model needs its params to be drawn: draw_network(model, params)."
            )
        layers = _from_model(model_or_params, params)
        if not layers:
            raise TypeError(
                f"{_NAME}: {type(model_or_params).__name__} holds no Dense layer. {_DENSE_ONLY}"
            )
        if not _chains(layers):
            shapes = ", ".join(f"'{layer.path}': {layer.weight.shape}" for layer in layers)
            raise ShapeError(_NAME, f"the weights do not chain into one stack: {shapes}.")
    elif params is not None:
        raise TypeError(
            f"{_NAME}: expected a jnn.Module before the params, got "
            f"{type(model_or_params).__name__}. Hint: draw_network(model, params), or "
            "draw_network(params) alone."
        )
    else:
        layers = _from_params(model_or_params)
    if not isinstance(max_neurons, int) or isinstance(max_neurons, bool) or max_neurons < 2:
        raise ValueError(
            f"{_NAME}: expected max_neurons as an int of at least 2 (the first and last "
            f"neuron of a column), got {max_neurons!r}."
        )
    if path is not None:
        _check_path(_NAME, path)
    sizes = [layers[0].weight.shape[0]] + [layer.weight.shape[1] for layer in layers]
    inputs = _labels("input_labels", input_labels, sizes[0], "x")
    outputs = _labels("output_labels", output_labels, sizes[-1], "y")
    try:
        import matplotlib
        from matplotlib.cm import ScalarMappable
        from matplotlib.collections import LineCollection
        from matplotlib.colors import Normalize
        from matplotlib.figure import Figure
        from matplotlib.patches import Circle
    except ImportError as error:
        raise ImportError(
            f"{_NAME}: needs matplotlib, which jnn does not install by itself. "
            "Hint: pip install matplotlib (or jnn[examples])."
        ) from error

    columns = [_shown(size, max_neurons) for size in sizes]
    slots = max(len(column) for column in columns)
    gap, radius = 3.0, 0.3
    ys = [{i: (len(c) - 1) / 2 - s for s, i in enumerate(c) if i is not None} for c in columns]
    drawn = [
        (layer.weight[np.ix_(list(ys[k]), list(ys[k + 1]))], layer.bias)
        for k, layer in enumerate(layers)
    ]
    magnitudes = [np.abs(w).max() for w, _ in drawn]
    magnitudes += [
        np.abs(b[list(ys[k + 1])]).max() for k, (_, b) in enumerate(drawn) if b is not None
    ]
    scale = float(max(magnitudes)) or 1.0
    norm = Normalize(-scale, scale)
    cmap = matplotlib.colormaps["RdBu_r"]

    # Room for the labels beside the outer columns, from their length in characters
    # (a character of 8-point text is about 0.17 of the unit: the gap between neurons).
    def room(labels: list[str], shown: list[int | None]) -> float:
        longest = max(len(re.sub(r"[${}_]", "", labels[i])) for i in shown if i is not None)
        return radius + 0.35 + 0.17 * longest

    left, right = room(inputs, columns[0]), room(outputs, columns[-1])
    width = (len(sizes) - 1) * gap + left + right
    unit = 0.42  # inches per unit
    figure = Figure(figsize=(unit * width + 1.6, unit * (slots + 2.7) + 0.4), layout="constrained")
    ax = figure.add_subplot()
    for k, (weight, _) in enumerate(drawn):
        pairs = [(a, b) for a in ys[k] for b in ys[k + 1]]
        values = weight.reshape(-1)
        order = np.argsort(np.abs(values))  # the strongest weights on top
        segments = [
            (
                (k * gap + radius, ys[k][pairs[n][0]]),
                ((k + 1) * gap - radius, ys[k + 1][pairs[n][1]]),
            )
            for n in order
        ]
        ax.add_collection(
            LineCollection(
                segments,
                colors=cmap(norm(values[order])),
                linewidths=0.3 + 2.7 * np.abs(values[order]) / scale,
                zorder=1,
                label=layers[k].path or "weight",
            )
        )
    for k, column in enumerate(columns):
        bias = drawn[k - 1][1] if k > 0 else None
        for s, i in enumerate(column):
            y = (len(column) - 1) / 2 - s
            if i is None:
                ax.text(k * gap, y, "\u22ee", ha="center", va="center", fontsize=14)
                continue
            fill = "white" if bias is None else cmap(norm(bias[i]))
            ax.add_patch(Circle((k * gap, y), radius, facecolor=fill, edgecolor="0.2", zorder=2))
            if k == 0:
                ax.text(-radius - 0.15, y, inputs[i], ha="right", va="center", fontsize=8)
            elif k == len(columns) - 1:
                ax.text(k * gap + radius + 0.15, y, outputs[i], ha="left", va="center", fontsize=8)
        if k == 0:
            heading = "input"
        else:
            heading = "output" if k == len(columns) - 1 else "hidden"
            if layers[k - 1].activation is not None:
                heading += f": {layers[k - 1].activation}"
        ax.text(k * gap, -(slots - 1) / 2 - 0.9, f"{heading}\n{sizes[k]}", ha="center", va="top")
    ax.set_xlim(-left, (len(sizes) - 1) * gap + right)
    ax.set_ylim(-(slots - 1) / 2 - 2.0, (slots - 1) / 2 + 0.7)
    ax.set_aspect("equal")
    ax.axis("off")
    figure.colorbar(
        ScalarMappable(norm, cmap), ax=ax, shrink=0.7, label="weight (lines), bias (fill)"
    )
    if title is not None:
        ax.set_title(str(title))
    if path is not None:
        figure.savefig(os.fspath(path), dpi=100)
    return figure
