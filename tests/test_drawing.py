"""draw_network: circles and weight lines of a tiny net, capped columns, colours, messages."""

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest

import jnn

matplotlib.use("Agg")

from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.patches import Circle  # noqa: E402


def circles(figure):
    return [p for p in figure.axes[0].patches if isinstance(p, Circle)]


def lines(figure):
    return [c for c in figure.axes[0].collections if isinstance(c, LineCollection)]


def texts(figure):
    return [t.get_text() for t in figure.axes[0].texts]


@pytest.fixture(scope="module")
def tiny():
    model = jnn.MLP([4, 2], activation=jnn.tanh)
    return model, model.init(jax.random.key(0), jnp.zeros((1, 3)))


def test_a_tiny_net_has_a_circle_per_neuron_and_a_line_per_weight(tiny):
    model, params = tiny
    figure = jnn.draw_network(model, params)
    assert len(circles(figure)) == 3 + 4 + 2
    assert [len(c.get_segments()) for c in lines(figure)] == [3 * 4, 4 * 2]
    assert "input\n3" in texts(figure) and "hidden: tanh\n4" in texts(figure)
    assert "output\n2" in texts(figure)
    assert "\u22ee" not in texts(figure)  # nothing capped
    assert len(figure.axes) == 2  # the drawing and its colour bar


def test_line_width_shows_the_magnitude_and_colour_the_sign():
    params = {"weight": np.array([[2.0, -1.0]], np.float32), "bias": np.zeros(2, np.float32)}
    figure = jnn.draw_network(params)
    (weights,) = lines(figure)
    # Drawn weakest first, so the strongest lies on top: -1 then 2.
    widths = weights.get_linewidths()
    assert widths[1] > widths[0]
    np.testing.assert_allclose(widths, [0.3 + 2.7 * 0.5, 3.0])
    red, blue = weights.get_colors()[1], weights.get_colors()[0]  # RdBu_r: + red, - blue
    assert red[0] > red[2] and blue[2] > blue[0]


def test_params_alone_and_a_sequential_draw_the_same_network(tiny):
    model, params = tiny
    sequential = jnn.Sequential([jnn.Dense(4), jnn.tanh, jnn.Dropout(0.5), jnn.Dense(2)])
    for figure in (jnn.draw_network(params), jnn.draw_network(sequential, params)):
        assert len(circles(figure)) == 9
        assert [len(c.get_segments()) for c in lines(figure)] == [12, 8]
    assert "hidden: tanh\n4" in texts(jnn.draw_network(sequential, params))
    assert "hidden\n4" in texts(jnn.draw_network(params))  # no model: no activation names


def test_params_are_ordered_by_their_numbers_when_the_dict_order_does_not_chain():
    model = jnn.MLP([5] * 11 + [2])
    params = model.init(jax.random.key(0), jnp.zeros((1, 3)))
    shuffled = dict(sorted(params.items()))  # dense_0, dense_1, dense_10, dense_11, dense_2...
    figure = jnn.draw_network(shuffled)
    assert len(lines(figure)) == 12 and len(circles(figure)) == 3 + 5 * 11 + 2


def test_wide_layers_show_their_first_and_last_neurons_around_an_ellipsis():
    model = jnn.MLP([30, 2])
    params = model.init(jax.random.key(0), jnp.zeros((1, 64)))
    figure = jnn.draw_network(model, params, max_neurons=6)
    assert len(circles(figure)) == 6 + 6 + 2
    assert [len(c.get_segments()) for c in lines(figure)] == [6 * 6, 6 * 2]
    assert texts(figure).count("\u22ee") == 2  # the inputs and the hidden layer
    shown = [t for t in texts(figure) if t.startswith("$x_")]
    assert shown == [f"$x_{{{i}}}$" for i in (1, 2, 3, 62, 63, 64)]
    odd = jnn.draw_network(model, params, max_neurons=5)
    assert [len(c.get_segments()) for c in lines(odd)] == [5 * 5, 5 * 2]


def test_labels_name_the_inputs_and_outputs(tiny):
    model, params = tiny
    figure = jnn.draw_network(
        model, params, input_labels=["a", "b", "c"], output_labels=["no", "yes"], title="t"
    )
    assert {"a", "b", "c", "no", "yes"} <= set(texts(figure))
    assert figure.axes[0].get_title() == "t"


def test_saving_writes_a_png(tiny, tmp_path):
    model, params = tiny
    path = tmp_path / "net.png"
    jnn.draw_network(model, params, path=path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    jnn.draw_network(model, params).savefig(tmp_path / "again.png")
    assert (tmp_path / "again.png").stat().st_size > 1000


def test_messages(tiny):
    model, params = tiny
    conv = jnn.Sequential([jnn.Conv(4, (3, 3)), jnn.Flatten(), jnn.Dense(2)])
    conv_params = conv.init(jax.random.key(0), jnp.zeros((1, 5, 5, 1)))
    with pytest.raises(
        TypeError,
        match=r"^draw_network: cannot draw Conv at 'conv_0'\. Hint: draw_network draws a stack of Dense layers",
    ):
        jnn.draw_network(conv, conv_params)
    with pytest.raises(
        jnn.ShapeError,
        match=r"^draw_network: expected a Dense weight of shape \[in_features, out_features\] at 'conv_0', got shape \(3, 3, 1, 4\)",
    ):
        jnn.draw_network({"conv_0": conv_params["conv_0"]})
    with pytest.raises(
        jnn.ParamsError,
        match=r"^draw_network: the params have no entry 'dense_1' for the layer at 'dense_1'",
    ):
        jnn.draw_network(model, {"dense_0": params["dense_0"]})
    with pytest.raises(
        jnn.ShapeError,
        match=r"^draw_network: the weights do not chain into one stack of Dense layers .*'a': \(3, 4\), 'b': \(3, 2\)",
    ):
        jnn.draw_network({"a": params["dense_0"], "b": {"weight": np.zeros((3, 2))}})
    with pytest.raises(TypeError, match=r"^draw_network: a model needs its params"):
        jnn.draw_network(model)
    with pytest.raises(
        TypeError, match=r"^draw_network: expected a jnn.Module before the params, got dict"
    ):
        jnn.draw_network(params, model)
    with pytest.raises(TypeError, match=r"^draw_network: expected params, got a jnn.TrainState"):
        import optax

        jnn.draw_network(
            model, jnn.TrainState.create(params, optax.sgd(0.1), key=jax.random.key(0))
        )
    with pytest.raises(
        ValueError, match=r"^draw_network: expected max_neurons as an int of at least 2 .*got 1\.$"
    ):
        jnn.draw_network(model, params, max_neurons=1)
    with pytest.raises(
        ValueError, match=r"^draw_network: expected 2 output_labels \(one per neuron\), got 3\.$"
    ):
        jnn.draw_network(model, params, output_labels=["a", "b", "c"])
    with pytest.raises(
        TypeError, match=r"^draw_network: expected input_labels as a list of strings, got 'abc'\.$"
    ):
        jnn.draw_network(model, params, input_labels="abc")
    with pytest.raises(
        TypeError, match=r"^draw_network: expected path to be a str or os.PathLike, got int\.$"
    ):
        jnn.draw_network(model, params, path=3)


def test_a_missing_matplotlib_is_named_with_the_fix(tiny, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def refuse_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", refuse_matplotlib)
    with pytest.raises(
        ImportError, match=r"^draw_network: needs matplotlib.*Hint: pip install matplotlib"
    ):
        jnn.draw_network(*tiny)
